"""Browser-test support: Debian's Chromium driven by Playwright (from PyPI;
it never downloads a browser), a real HQ and real agents on loopback.

Without /usr/bin/chromium (or FIELDLINK_CHROMIUM) the browser tests skip
with the reason, except under CI=true, where they fail: CI installs it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.policy import write_default
from server.auth.totp import code_for
from tests import support
from tests.support import (
    AgentHandle,
    HQHandle,
    machine_policy,
    make_user,
    start_agent,
    start_hq,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "screenshots"
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
IN_CI = os.environ.get("CI", "").lower() == "true"


def chromium_path() -> str:
    """The system's Chromium, or skip (fail under CI) saying why."""
    path = os.environ.get("FIELDLINK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    problem = None
    if not Path(path).is_file():
        problem = f"no Chromium at {path} (apt-get install chromium)"
    elif not AXE.is_file():
        problem = f"no {AXE.relative_to(ROOT)} (run npm ci; make test does)"
    if problem:
        if IN_CI:
            pytest.fail(f"the console browser tests need it under CI=true: {problem}")
        pytest.skip(problem)
    return path


async def launch(playwright: Any) -> Any:
    return await playwright.chromium.launch(executable_path=chromium_path(), args=ARGS)


async def new_page(browser: Any, **context: Any) -> Any:
    """A fresh browser context (cookies of its own). HQ is a loopback test
    server with a self-signed certificate: this context trusts it."""
    ctx = await browser.new_context(ignore_https_errors=True, **context)
    ctx.set_default_timeout(15000)
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def on_console(msg: Any) -> None:
        # Error statuses of our own requests (a refused login) are not script errors.
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            errors.append(msg.text)

    page.on("console", on_console)
    page.fieldlink_errors = errors
    return page


_USED_STEPS: dict[str, int] = {}


async def fresh_code(secret: str) -> str:
    """A TOTP code HQ has not seen yet (each code works once): the current
    step's, else the next one's (HQ accepts one step of drift), else wait."""
    while True:
        current = int(time.time() // 30)
        step = max(current, _USED_STEPS.get(secret, -1) + 1)
        if step <= current + 1:
            _USED_STEPS[secret] = step
            return code_for(secret, step * 30 + 1)
        await asyncio.sleep(1)


async def log_in(page: Any, url: str, user: support.TestUser, *, next_path: str = "/") -> None:
    await page.goto(f"{url}/login?next={next_path}")
    await page.fill("input[name=username]", user.username)
    await page.fill("input[name=password]", user.password)
    if user.totp_secret:
        await page.fill("input[name=totp]", await fresh_code(user.totp_secret))
    await page.click("button[type=submit]")
    await page.wait_for_load_state()


async def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def axe_violations(
    page: Any, impacts: tuple[str, ...] = ("serious", "critical")
) -> list[str]:
    """Run axe-core in the page; the serious and critical violations, described."""
    await page.add_script_tag(path=str(AXE))
    result = await page.evaluate("async () => await axe.run(document)")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} -> "
        + ", ".join(str(n["target"]) for n in v["nodes"][:3])
        for v in result["violations"]
        if v.get("impact") in impacts
    ]


SITE, OTHER = "shop-1", "shop-2"


@dataclass
class World:
    """One HQ, its first agent (site shop-1), a global engineer with TOTP, a
    technician of another site, and one browser, shared by a test module."""

    hq: HQHandle
    tmp: Path
    browser: Any
    agent: AgentHandle
    engineer: support.TestUser
    tech_other: support.TestUser
    agents: list[AgentHandle] = field(default_factory=list)
    logins: dict[str, Any] = field(default_factory=dict)

    async def page_as(self, user: support.TestUser, **context: Any) -> Any:
        """A new browser context logged in as `user` (through the login form
        once; later contexts reuse its cookies, as another tab would)."""
        state = self.logins.get(user.username)
        if state is not None:
            return await new_page(self.browser, storage_state=state, **context)
        page = await new_page(self.browser, **context)
        await log_in(page, self.hq.url, user)
        self.logins[user.username] = await page.context.storage_state()
        return page

    async def engineer_page(self, **context: Any) -> Any:
        page = await self.page_as(self.engineer, **context)
        await page.goto(self.hq.url + "/")
        return page

    async def agent_online(self, site: str = SITE, **policy: Any) -> AgentHandle:
        handle = await start_agent(
            self.hq, self.tmp / f"ag-{secrets.token_hex(3)}", site=site, run=False
        )
        write_default(handle.dir.policy_file, machine_policy(**policy))
        self.agents.append(handle)
        await handle.start()
        await wait_until(lambda: self.hq.hq.parts.links.get(handle.agent_id), what="online")
        return handle

    async def api(self, method: str, path: str, **kw: Any) -> Any:
        async with self.hq.client(self.hq.admin_token) as api:
            return await api.ok(method, path, **kw)

    async def ticket_with_agent(self, title: str) -> str:
        made = await self.api(
            "POST",
            "/api/v1/tickets",
            json={"title": title, "site": SITE, "agent_ids": [self.agent.agent_id]},
        )
        return str(made["number"])


@asynccontextmanager
async def console_world(tmp: Path) -> AsyncIterator[World]:
    from playwright.async_api import async_playwright

    chromium_path()  # skip (or fail under CI) before starting anything
    hq = await start_hq(tmp / "hq", f"sqlite+aiosqlite:///{tmp / 'hq.db'}")
    playwright = await async_playwright().start()
    browser = await launch(playwright)
    w = World(
        hq=hq,
        tmp=tmp,
        browser=browser,
        agent=None,  # type: ignore[arg-type]  # set just below, once online
        engineer=await make_user(hq, "hq_engineer", None, totp=True),
        tech_other=await make_user(hq, "site_tech", OTHER, totp=True),
    )
    try:
        w.agent = await w.agent_online(SITE, allow_exec=True)
        yield w
    finally:
        await browser.close()
        await playwright.stop()
        for handle in reversed(w.agents):
            await handle.stop()
        await hq.stop()
