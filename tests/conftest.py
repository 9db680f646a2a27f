"""Fixtures: real HQs and real agents on 127.0.0.1, databases on SQLite and
PostgreSQL. No mocks of our own components."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    AgentHandle,
    ApiClient,
    HQHandle,
    start_agent,
    start_hq,
)

# A module with a fixture (or event loop) of module scope or wider shares it
# across its tests: such a module runs on one xdist worker, whole, so that its
# world starts once; every other test goes to whichever worker is free.
_SHARED_SCOPE = re.compile(r"""scope=["'](module|package|session)["']""")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "load":  # another --dist asked for: xdist's own
        return None
    from xdist.scheduler import LoadScopeScheduling

    shared: dict[str, bool] = {}

    def shares_a_world(module: str) -> bool:
        if module not in shared:
            path = config.rootpath / module
            shared[module] = path.is_file() and bool(_SHARED_SCOPE.search(path.read_text()))
        return shared[module]

    class ModuleWorlds(LoadScopeScheduling):
        """xdist's load scheduling, but a module that shares a world is one
        unit of work (those go first, the largest first: LoadScopeScheduling
        orders units by their number of tests)."""

        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if shares_a_world(module) else nodeid

    return ModuleWorlds(config, log)


PG_URL = os.environ.get("FIELDLINK_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"


async def _pg_admin() -> Any:
    import asyncpg

    dsn = PG_URL.replace("postgresql+asyncpg://", "postgresql://")
    return await asyncpg.connect(dsn, timeout=5)


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'hq.db'}"
        return
    try:
        admin = await _pg_admin()
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL at {PG_URL} is required under CI=true: {exc}")
        pytest.skip(f"no PostgreSQL at {PG_URL} ({exc}); set FIELDLINK_TEST_PG")
    name = f"fltest_{secrets.token_hex(6)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'hq.db'}"


@pytest.fixture
async def hq_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start real HQs (in this process, ports chosen by the OS)."""
    started: list[HQHandle] = []

    async def make(db: str, name: str = "hq", **settings: Any) -> HQHandle:
        handle = await start_hq(tmp_path / name, db, **settings)
        started.append(handle)
        return handle

    yield make
    for handle in reversed(started):
        await handle.stop()


@pytest.fixture
async def hq(hq_factory: Callable[..., Any], db_url: str) -> AsyncIterator[HQHandle]:
    """One running HQ on each database (stopped before its database goes)."""
    handle: HQHandle = await hq_factory(db_url)
    yield handle
    await handle.stop()


@pytest.fixture
async def sqlite_hq(hq_factory: Callable[..., Any], sqlite_url: str) -> HQHandle:
    """One running HQ on SQLite, for tests whose subject is not storage."""
    handle: HQHandle = await hq_factory(sqlite_url)
    return handle


@pytest.fixture
async def agent_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Enroll and run real agents (in this process) against an HQ."""
    started: list[AgentHandle] = []
    count = 0

    async def make(hq: HQHandle, site: str = "shop-1", **kw: Any) -> AgentHandle:
        nonlocal count
        count += 1
        handle = await start_agent(hq, tmp_path / f"agent{count}", site=site, **kw)
        started.append(handle)
        return handle

    yield make
    for handle in reversed(started):
        await handle.stop()


@pytest.fixture
async def admin_api(hq: HQHandle) -> AsyncIterator[ApiClient]:
    async with hq.client(hq.admin_token) as client:
        yield client
