"""HQ-machine commands that work on the data directory and database directly:
`fieldlink init` and `fieldlink admin ...`. Whoever can run them already owns
HQ (they read its keys), so they need no login; every change they make is in
the audit trail with the local user's name.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from server.auth.secrets import new_password
from server.base.audit import Actor, Event
from server.config.datadir import DataDir, DataDirError
from server.config.settings import Settings
from server.control.socket import notify
from server.ops import accounts, enrollment
from server.store import auditlog, people
from server.store.db import make_engine, migrate, sessionmaker
from shared.durations import parse_duration
from shared.errors import FieldlinkError, Invalid


def local_actor() -> Actor:
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    return Actor("system", None, f"cli:{who}", "local")


@dataclass
class Db:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]


@asynccontextmanager
async def open_db(settings: Settings) -> AsyncIterator[Db]:
    engine = make_engine(settings.db_url())
    try:
        await migrate(engine)
        sessions = sessionmaker(engine)
        async with sessions.begin() as session:
            await people.ensure_builtin_roles(session)
        yield Db(engine, sessions)
    finally:
        await engine.dispose()


@dataclass(frozen=True)
class InitResult:
    fingerprint: str
    admin_password: str


async def init(settings: Settings, *, admin_password: str | None = None) -> InitResult:
    datadir = DataDir(settings.data_dir)
    if datadir.is_initialized():
        raise DataDirError(f"{datadir.path} is already initialised; nothing was changed")
    datadir.create_keys()
    datadir.write_config(
        {
            "db": settings.db.get_secret_value() if settings.db is not None else None,
            "public_url": settings.public_url,
        }
    )
    password = admin_password or new_password()
    actor = local_actor()
    async with open_db(settings) as db, db.sessions.begin() as session:
        await auditlog.append(
            session, actor, Event("hq.init", details={"data_dir": str(datadir.path)})
        )
        user = await accounts.create_user(
            session, username="admin", password=password, actor=actor, display_name="Administrator"
        )
        await accounts.bind_role(session, user=user, role="admin", site_name=None, actor=actor)
    return InitResult(datadir.fingerprint(), password)


def token_url(settings: Settings, datadir: DataDir) -> str:
    """The HQ URL for enrollment tokens: the setting, else the running server's."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    info = datadir.read_serve_info()
    if info and isinstance(info.get("url"), str):
        return str(info["url"])
    host, port = settings.http_addr
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - reading our own bind address
        import socket

        host = socket.getfqdn()
    return f"https://{host}:{port}"


async def enroll_token(settings: Settings, *, site: str, uses: int, ttl: str) -> str:
    datadir = DataDir(settings.data_dir)
    datadir.require()
    try:
        delta = parse_duration(ttl)
    except ValueError as exc:
        raise Invalid(str(exc), fields={"ttl": str(exc)}) from None
    async with open_db(settings) as db, db.sessions.begin() as session:
        made = await enrollment.make_enroll_token(
            session,
            site_name=site,
            uses=uses,
            ttl=delta,
            url=token_url(settings, datadir),
            fingerprint=datadir.fingerprint(),
            actor=local_actor(),
        )
    return made.token


async def api_token(settings: Settings, *, user: str, ttl: str) -> str:
    DataDir(settings.data_dir).require()
    try:
        delta = parse_duration(ttl)
    except ValueError as exc:
        raise Invalid(str(exc), fields={"ttl": str(exc)}) from None
    async with open_db(settings) as db, db.sessions.begin() as session:
        made = await accounts.make_api_token(
            session,
            username=user,
            name="break-glass (fieldlink admin api-token)",
            ttl=delta,
            origin="break-glass",
            actor=local_actor(),
        )
    return made.token


async def revoke_agent(settings: Settings, agent_id: str) -> bool:
    """Revoke in the database, then tell a running server to cut the link now.
    Returns whether a running server was told."""
    datadir = DataDir(settings.data_dir)
    datadir.require()
    async with open_db(settings) as db, db.sessions.begin() as session:
        await enrollment.revoke_agent(session, agent_id, local_actor())
    return await notify(datadir.control_socket, {"op": "agent_revoked", "agent_id": agent_id})


async def add_user(
    settings: Settings, *, username: str, role: str, site: str | None, password: str | None
) -> str | None:
    """Create a user with one binding. Returns the generated password, if any."""
    DataDir(settings.data_dir).require()
    generated = None
    if password is None:
        generated = password = new_password()
    actor = local_actor()
    async with open_db(settings) as db, db.sessions.begin() as session:
        user = await accounts.create_user(
            session, username=username, password=password, actor=actor
        )
        # like `enroll-token --site`, a site named here is created if new
        await accounts.bind_role(
            session, user=user, role=role, site_name=site, actor=actor, create_site=True
        )
    return generated


async def audit_verify(settings: Settings) -> tuple[int, str | None]:
    DataDir(settings.data_dir).require()
    async with open_db(settings) as db, db.sessions() as session:
        count, broken = await auditlog.verify_chain(session)
    if broken is None:
        return count, None
    return count, f"entry {broken.seq}: {broken.reason}"


def fail(exc: Exception) -> int:
    if isinstance(exc, FieldlinkError):
        print(f"fieldlink: {exc.message}", file=sys.stderr)
        for field, why in (exc.fields or {}).items():
            print(f"  {field}: {why}", file=sys.stderr)
    else:
        print(f"fieldlink: {exc}", file=sys.stderr)
    return 1
