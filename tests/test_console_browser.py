"""The web console in a real browser (Debian's Chromium through Playwright)
against a real HQ and real agents on loopback: logging in with TOTP, live
updates without reloads, runs, jobs, alerts, tickets, scope, Korean, a phone
viewport and axe-core. One HQ and one browser for the whole module.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agent.policy import Policy, write_default
from tests import support
from tests.browser import axe_violations, fresh_code, launch, log_in, new_page, screenshot
from tests.support import (
    AgentHandle,
    HQHandle,
    make_user,
    start_agent,
    start_hq,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

SITE, OTHER = "shop-1", "shop-2"


@dataclass
class World:
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

    async def agent_online(self, site: str = SITE, **policy: Any) -> AgentHandle:
        handle = await start_agent(
            self.hq, self.tmp / f"ag-{secrets.token_hex(3)}", site=site, run=False
        )
        write_default(handle.dir.policy_file, Policy(**policy))
        self.agents.append(handle)
        await handle.start()
        await wait_until(
            lambda: self.hq.hq.svc.gateway.registry.get(handle.agent_id), what="online"
        )
        return handle

    async def api(self, method: str, path: str, **kw: Any) -> Any:
        async with self.hq.client(self.hq.admin_token) as api:
            return await api.ok(method, path, **kw)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    from playwright.async_api import async_playwright

    from tests.browser import chromium_path

    chromium_path()  # skip (or fail under CI) before starting anything
    tmp = tmp_path_factory.mktemp("console")
    hq = await start_hq(tmp / "hq", f"sqlite+aiosqlite:///{tmp / 'hq.db'}")
    playwright = await async_playwright().start()
    browser = await launch(playwright)
    w = World(
        hq=hq,
        tmp=tmp,
        browser=browser,
        agent=None,  # type: ignore[arg-type]
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


async def engineer_page(world: World, **context: Any) -> Any:
    page = await world.page_as(world.engineer, **context)
    await page.goto(world.hq.url + "/")
    return page


async def test_login_with_totp_lands_on_the_dashboard(world: World) -> None:
    """Password plus TOTP code logs in; a wrong code is refused with a message."""
    page = await new_page(world.browser)
    bad = support.TestUser(**{**world.engineer.__dict__, "totp_secret": None})
    await log_in(page, world.hq.url, bad)
    assert "/login" in page.url
    assert await page.locator("[role=alert]").inner_text()
    await log_in(page, world.hq.url, world.engineer)
    assert page.url.rstrip("/") == world.hq.url
    assert await page.locator("h1").inner_text() == "Dashboard"
    await screenshot(page, "dashboard")
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()


async def test_a_machine_coming_online_appears_without_a_reload(world: World) -> None:
    """The dashboard and the machines list update live when a new machine connects."""
    page = await engineer_page(world)
    await page.evaluate("window.__noReload = true")
    assert await page.locator("tr[data-site='shop-live']").count() == 0
    machines = await page.context.new_page()
    await machines.goto(f"{world.hq.url}/machines?site=shop-live")
    await machines.evaluate("window.__noReload = true")
    handle = await world.agent_online("shop-live")
    row = page.locator("tr[data-site='shop-live']")
    await row.wait_for()
    assert "1" in await row.locator("td").nth(1).inner_text()
    live_row = machines.locator(f"tr[data-agent='{handle.agent_id}'][data-status=online]")
    await live_row.wait_for()
    assert await page.evaluate("window.__noReload") and await machines.evaluate("window.__noReload")
    await screenshot(machines, "machines")
    await page.context.close()


async def test_run_disk_usage_from_the_machine_page_shows_a_table(world: World) -> None:
    """The catalog form runs disk.usage through the API and renders its data as a table."""
    page = await engineer_page(world)
    await page.goto(f"{world.hq.url}/machines/{world.agent.agent_id}")
    entry = page.locator("details[data-entry='disk.usage']")
    await entry.locator("summary").click()
    await entry.locator("button[type=submit]").click()
    table = entry.locator(".result table.result-table")
    await table.wait_for()
    headers = await table.locator("th").all_inner_texts()
    assert headers and await table.locator("tbody tr").count() >= 1
    assert "/" in await table.locator("tbody").inner_text()
    await screenshot(page, "machine")
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()


async def test_a_job_over_a_site_shows_each_machine_progress(world: World) -> None:
    """Starting a job over a site from the jobs page leads to its page, where
    every machine of the site reaches a final status live, with its result."""
    second = await world.agent_online(SITE)
    page = await engineer_page(world)
    await page.goto(f"{world.hq.url}/jobs")
    await page.select_option("#j-name", "system.summary")
    await page.select_option("#j-site", SITE)
    await page.click("#job-form button[type=submit]")
    await page.wait_for_url("**/jobs/jb_*")
    for agent_id in (world.agent.agent_id, second.agent_id):
        row = page.locator(f"tr[data-agent='{agent_id}']")
        await row.locator("[data-item-status]", has_text="ok").wait_for()
    await page.locator("#job-status[data-status=done]").wait_for()
    await page.locator("tr[data-agent] .result details").first.wait_for()
    await screenshot(page, "job")
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()


async def test_an_alert_ticket_appears_on_the_dashboard(world: World) -> None:
    """A rule that fires at once opens a ticket; the open dashboard shows the
    firing alert and the ticket without a reload."""
    page = await engineer_page(world)
    await page.evaluate("window.__noReload = true")
    rule = await world.api(
        "POST",
        "/api/v1/alert-rules",
        json={
            "name": "disk-any",
            "metric": "disk[*].percent",
            "op": ">",
            "threshold": 1,
            "priority": "P2",
            "site": SITE,
        },
    )
    alert = page.locator("#firing-alerts li", has_text="disk-any").first
    await alert.wait_for(timeout=30000)
    link = alert.locator("a[href^='/tickets/FL-']")
    await link.wait_for(timeout=30000)
    assert int(await page.locator("[data-priority=P2]").inner_text()) >= 1
    assert await page.evaluate("window.__noReload")
    await world.api("PATCH", f"/api/v1/alert-rules/{rule['id']}", json={"enabled": False})
    await page.context.close()


async def test_work_a_ticket_through_its_lifecycle(world: World) -> None:
    """Open a ticket from the tickets page; acknowledge, start, comment, wait,
    resume, resolve and close it in the UI; the timeline records each step."""
    page = await engineer_page(world)
    await page.goto(f"{world.hq.url}/tickets")
    await page.fill("#nt-title", "Till 3 is slow")
    await page.select_option("#nt-site", SITE)
    await page.click("text=Open ticket")
    await page.wait_for_url("**/tickets/FL-*")
    status = page.locator("#ticket-status")

    async def act(action: str, expect: str) -> None:
        await page.click(f"button[data-action={action}]")
        await page.locator(f"#ticket-status[data-status={expect}]").wait_for()

    await act("ack", "acknowledged")
    await act("start", "in_progress")
    await page.fill("#comment", "Looking at the disk now")
    await page.click("text=Add comment")
    await page.locator("#timeline li", has_text="Looking at the disk now").wait_for()
    await page.select_option("#wait-reason", "on_requester")
    await act("wait", "waiting")
    await act("start", "in_progress")
    await page.click("#assign-to ~ button")
    await page.locator("#assignee", has_text=world.engineer.username).wait_for()
    await page.fill("#res-text", "Cleared the temp directory")
    await act("resolve", "resolved")
    await act("close", "closed")
    assert await status.inner_text()
    kinds = await page.locator("#timeline li").evaluate_all("els => els.map(e => e.dataset.kind)")
    assert kinds.count("state") >= 6 and "comment" in kinds
    await screenshot(page, "ticket")
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()


async def _ticket_with_agent(world: World, title: str) -> str:
    made = await world.api(
        "POST",
        "/api/v1/tickets",
        json={"title": title, "site": SITE, "agent_ids": [world.agent.agent_id]},
    )
    return str(made["number"])


async def test_request_a_session_and_see_consent_arrive_live(world: World) -> None:
    """From a ticket the engineer requests a session (step-up code); the site's
    technician approves it on the consents page; the engineer's session page
    turns active without a reload."""
    number = await _ticket_with_agent(world, "needs a look")
    page = await engineer_page(world)
    await page.goto(f"{world.hq.url}/tickets/{number}")
    await page.select_option("#s-kind", "exec")
    await page.fill("#s-reason", "check the spooler")
    await page.fill("#s-code", await fresh_code(world.engineer.totp_secret or ""))
    await page.click("#session-request button[type=submit]")
    await page.wait_for_url("**/sessions/*")
    await page.locator("#session-state", has_text="awaiting_consent").wait_for()
    await page.evaluate("window.__noReload = true")

    tech = await make_user(world.hq, "site_tech", SITE, totp=True)
    other = await world.page_as(tech)
    await other.goto(f"{world.hq.url}/consents")
    item = other.locator("#pending-consents li", has_text="check the spooler")
    await item.wait_for()
    await screenshot(other, "consents")
    await item.locator("button", has_text="Approve").click()
    await other.locator("#pending-consents li", has_text="check the spooler").wait_for(
        state="detached"
    )
    await page.locator("#session-state", has_text="active").wait_for()
    assert await page.evaluate("window.__noReload")
    assert tech.username in await page.locator("#session-consent").inner_text()
    await screenshot(page, "session")
    await page.click("#end-session")
    await page.locator("#session-state", has_text="ended").wait_for()
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()
    await other.context.close()


async def test_a_site_technician_of_another_site_sees_none_of_it(world: World) -> None:
    """Another site's technician sees neither shop-1's machines, tickets nor
    sessions: lists leave them out and their pages answer 404."""
    number = await _ticket_with_agent(world, "private to shop-1")
    page = await world.page_as(world.tech_other)
    await page.goto(world.hq.url + "/")
    assert await page.locator(f"tr[data-site='{SITE}']").count() == 0
    await page.goto(f"{world.hq.url}/machines")
    assert await page.locator(f"tr[data-agent='{world.agent.agent_id}']").count() == 0
    await page.goto(f"{world.hq.url}/tickets")
    assert await page.locator(f"tr[data-ticket='{number}']").count() == 0
    for path in (f"/machines/{world.agent.agent_id}", f"/tickets/{number}"):
        resp = await page.goto(world.hq.url + path)
        assert resp.status == 404, path
        assert await page.locator("h1").inner_text() == "Not found"
    resp = await page.goto(f"{world.hq.url}/audit")
    assert resp.status == 403
    await page.goto(f"{world.hq.url}/consents")
    assert await page.locator("#pending-consents li.muted").count() == 1
    await page.context.close()


async def test_reports_audit_chain_and_kpis_render(world: World) -> None:
    """An auditor reads the audit trail, sees the chain verified, and the KPI report."""
    auditor = await make_user(world.hq, "auditor", None)
    page = await world.page_as(auditor)
    await page.goto(f"{world.hq.url}/audit?action=auth.*")
    await page.locator("#chain[data-ok=true]").wait_for()
    assert await page.locator("#audit tbody tr").count() >= 1
    await screenshot(page, "audit")
    await page.goto(f"{world.hq.url}/kpis")
    assert await page.locator("#kpis tbody tr").count() >= 1
    await screenshot(page, "kpis")
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()


async def test_admin_enrolls_totp_from_the_qr_page_then_administers(world: World) -> None:
    """The admin (2FA required, not yet set up) is sent to TOTP enrollment, sees
    a QR code and its key, confirms a code, and then creates a user (shown its
    password once), gives it a role, edits a site and makes an enrollment token."""
    from server.auth.totp import code_for

    page = await new_page(world.browser)
    admin = support.TestUser("", "admin", world.hq.admin_password, "", None)
    await log_in(page, world.hq.url, admin)
    await page.wait_for_url("**/totp")
    await page.click("text=Set up two-factor")
    await page.locator("figure.qr svg").wait_for()
    secret = (await page.locator("#totp-secret").inner_text()).strip()
    await screenshot(page, "totp")
    await page.fill("#code", code_for(secret))
    await page.click("text=Turn on two-factor")
    await page.wait_for_url(world.hq.url + "/?done=totp")
    assert await page.locator("h1").inner_text() == "Dashboard"

    await page.goto(f"{world.hq.url}/admin")
    name = f"clerk-{secrets.token_hex(2)}"
    await page.fill("#u-name", name)
    await page.click("text=Create user")
    await page.locator("#new-user .result code.secret").nth(1).wait_for()
    await page.reload()
    await page.select_option("#b-user", label=name)
    await page.select_option("#b-role", "site_staff")
    await page.select_option("#b-scope", f"site:{SITE}")
    await page.click("text=Give role")
    await page.locator(f"tr[data-user='{name}'] .tag", has_text="site_staff").wait_for()
    await screenshot(page, "admin")

    await page.click(f"a:text-is('{SITE}')")
    await page.fill("#st-tz", "Asia/Seoul")
    async with page.expect_navigation():  # the form reloads the page when saved
        await page.click("button:text('Save')")
    sites = await world.api("GET", "/api/v1/sites")
    shop = next(s for s in sites["items"] if s["name"] == SITE)
    assert shop["calendar"]["timezone"] == "Asia/Seoul"

    await page.goto(f"{world.hq.url}/enroll")
    await page.select_option("#e-site", SITE)
    await page.click("#enroll-form button[type=submit]")
    token = page.locator("#enroll-form code.secret").first
    await token.wait_for()
    assert len(await token.inner_text()) > 20
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()


async def test_korean_ui_from_the_browser_language_and_the_profile(world: World) -> None:
    """A Korean browser gets the Korean console; the profile's language choice
    overrides the browser's, back to English."""
    page = await new_page(
        world.browser, locale="ko-KR", extra_http_headers={"Accept-Language": "ko-KR,ko;q=0.9"}
    )
    await page.goto(f"{world.hq.url}/login")
    assert await page.locator("h1").inner_text() == "Fieldlink 로그인"
    assert await page.locator("html").get_attribute("lang") == "ko"
    await log_in(page, world.hq.url, world.tech_other)
    assert await page.locator("h1").inner_text() == "대시보드"
    await page.goto(f"{world.hq.url}/machines")
    assert await page.locator("h1").inner_text() == "기기"
    await screenshot(page, "machines-ko")
    await page.goto(f"{world.hq.url}/profile")
    await page.select_option("#lang", "en")
    await page.click("#lang ~ button")
    await page.wait_for_url("**/profile?done=language")
    assert await page.locator("h1").inner_text() == "Profile"
    await page.select_option("#lang", "ko")
    await page.click("#lang ~ button")
    await page.wait_for_url("**/profile?done=language")
    assert await page.locator("h1").inner_text() == "프로필"
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()


async def test_phone_sized_viewport_is_usable(world: World) -> None:
    """At 390 px wide pages fit without sideways scrolling and the menu opens
    from its button."""
    page = await engineer_page(
        world, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    for path, name in (
        ("/", "phone-dashboard"),
        ("/machines", "phone-machines"),
        (f"/machines/{world.agent.agent_id}", "phone-machine"),
        ("/tickets", "phone-tickets"),
    ):
        await page.goto(world.hq.url + path)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} is {width} px wide"
        await screenshot(page, name)
    nav = page.locator("#site-nav")
    assert not await nav.is_visible()
    await page.click(".menu-toggle")
    assert await nav.is_visible()
    await page.click("#site-nav a[href='/tickets']")
    await page.wait_for_url("**/tickets")
    await page.context.close()


MAIN_PAGES = [
    "/",
    "/machines",
    "/machines/{agent}",
    "/jobs",
    "/tickets",
    "/tickets/{ticket}",
    "/sessions",
    "/alert-rules",
    "/kpis",
    "/profile",
]


async def test_main_pages_have_no_serious_accessibility_violations(world: World) -> None:
    """axe-core finds no serious or critical violation on the main pages (and
    the login page). The axe script is injected, so this context bypasses the CSP."""
    number = await _ticket_with_agent(world, "axe")
    page = await world.page_as(world.engineer, bypass_csp=True)
    problems: dict[str, list[str]] = {}
    for path in MAIN_PAGES:
        await page.goto(world.hq.url + path.format(agent=world.agent.agent_id, ticket=number))
        await page.wait_for_load_state("networkidle") if path == "/machines/{agent}" else None
        found = await axe_violations(page)
        if found:
            problems[path] = found
    login = await new_page(world.browser, bypass_csp=True)
    await login.goto(world.hq.url + "/login")
    if found := await axe_violations(login):
        problems["/login"] = found
    await screenshot(login, "login")
    assert not problems, problems
    await page.context.close()
    await login.context.close()


TERMINAL_TEXT = """() => {
  const el = document.getElementById('%s');
  if (!el || !el.term) return '';
  const buf = el.term.buffer.active;
  const lines = [];
  for (let i = 0; i < buf.length; i++) lines.push(buf.getLine(i).translateToString(true));
  return lines.join('\\n');
}"""


async def test_shell_in_the_browser_approved_at_the_machine_then_replayed(world: World) -> None:
    """The engineer requests a shell from a ticket; `fieldlink-agent consent
    --approve` at the machine approves it; the engineer types a command in the
    browser terminal and sees its output, the site's technician watches it
    live, and an auditor replays the recording."""
    from tests.test_e2e_sessions import ME, agent_cli

    agent = await world.agent_online(
        "shop-shell", allow_shell=True, shell_user=ME, require_consent=True
    )
    await wait_until(
        lambda: "hello" in world.hq.hq.svc.gateway.registry.get(agent.agent_id).info,
        what="hello",
    )
    made = await world.api(
        "POST",
        "/api/v1/tickets",
        json={"title": "till frozen", "site": "shop-shell", "agent_ids": [agent.agent_id]},
    )
    page = await engineer_page(world)
    await page.goto(f"{world.hq.url}/tickets/{made['number']}")
    await page.select_option("#s-kind", "shell")
    await page.fill("#s-reason", "look at the till")
    await page.fill("#s-code", await fresh_code(world.engineer.totp_secret or ""))
    await page.click("#session-request button[type=submit]")
    await page.wait_for_url("**/sessions/*")
    session_id = page.url.rsplit("/", 1)[1]
    await page.locator("#session-state", has_text="awaiting_consent").wait_for()

    assert agent.daemon is not None
    book = agent.daemon.sessions
    await wait_until(lambda: book.get(session_id) is not None, what="the machine hears of it")
    code, _, err = await agent_cli(agent, "consent", "--approve", session_id)
    assert code == 0, err
    await page.locator("#session-state", has_text="active").wait_for()
    await page.click("#open-terminal")
    await page.locator("#terminal canvas, #terminal .xterm-screen").first.wait_for()
    await page.locator("#term-note", has_text="Connected").wait_for()
    await page.locator("#terminal").click()
    await page.keyboard.type("echo fieldlink-$((6*7))\n")
    shows_output = f"() => ({TERMINAL_TEXT % 'terminal'})().includes('fieldlink-42')"
    await page.wait_for_function(shows_output, timeout=20000)
    await screenshot(page, "terminal")

    tech = await make_user(world.hq, "site_tech", "shop-shell", totp=True)
    watcher = await world.page_as(tech)
    await watcher.goto(f"{world.hq.url}/sessions/{session_id}")
    await watcher.click("#open-watch")
    await page.keyboard.type("echo watched-$((7*6))\n")
    watched = f"() => ({TERMINAL_TEXT % 'terminal'})().includes('watched-42')"
    await watcher.wait_for_function(watched, timeout=20000)
    await watcher.context.close()
    await page.click("#end-session")
    await page.locator("#session-state", has_text="ended").wait_for()
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()

    auditor = await make_user(world.hq, "auditor", None)
    viewer = await world.page_as(auditor)
    await viewer.goto(f"{world.hq.url}/sessions/{session_id}")
    await viewer.select_option("#replay-speed", "8")
    await viewer.click("#replay")
    await viewer.locator("#replay-screen[data-done='1']").wait_for(timeout=30000)
    replayed = await viewer.evaluate(f"({TERMINAL_TEXT % 'replay-screen'})()")
    assert "fieldlink-42" in replayed
    await screenshot(viewer, "replay")
    assert not viewer.fieldlink_errors, viewer.fieldlink_errors
    await viewer.context.close()


async def test_site_staff_ask_for_help_and_see_only_their_own_requests(world: World) -> None:
    """Site staff land on "Get help", open a request there, read it and comment
    on it; someone else's ticket on their own site answers 404."""
    others = await _ticket_with_agent(world, "not yours")
    staff = await make_user(world.hq, "site_staff", SITE)
    page = await world.page_as(staff)
    await page.goto(world.hq.url + "/")
    await page.wait_for_url("**/help")
    assert await page.locator("#site-nav a[href='/machines']").count() == 0
    await page.fill("#h-title", "receipt printer prints blank")
    await page.click("text=Ask for help")
    await page.wait_for_url("**/tickets/FL-*")
    number = page.url.rsplit("/", 1)[1]
    await page.fill("#comment", "it started this morning")
    await page.click("text=Add comment")
    await page.locator("#timeline li", has_text="it started this morning").wait_for()
    assert await page.locator("#transitions").count() == 0  # staff do not work tickets
    await page.goto(world.hq.url + "/help")
    assert await page.locator("#my-requests a", has_text=number).count() == 1
    await screenshot(page, "help")
    resp = await page.goto(f"{world.hq.url}/tickets/{others}")
    assert resp.status == 404
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()


async def test_profile_tokens_shown_once_revoked_and_logout(world: World) -> None:
    """A token made on the profile page is shown once and works on the API;
    revoking it stops it; logging out ends the console session."""
    user = await make_user(world.hq, "auditor", None)
    page = await world.page_as(user)
    await page.goto(f"{world.hq.url}/profile")
    await page.fill("#tok-name", "script")
    await page.check("input[name='perm:audit:read']")
    await page.click("text=Make token")
    secret = (await page.locator("#new-token").inner_text()).strip()
    async with world.hq.client(secret) as api:
        status, _ = await api.get("/api/v1/audit/verify")
        assert status == 200
        status, _ = await api.get("/api/v1/agents")
        assert status == 403  # narrowed to audit:read
    await page.goto(f"{world.hq.url}/profile")
    assert await page.locator("#new-token").count() == 0  # never shown again
    await page.click("button:has-text('Revoke')")
    await page.wait_for_url("**/profile?done=revoked")
    async with world.hq.client(secret) as api:
        status, _ = await api.get("/api/v1/audit/verify")
        assert status == 401
    await page.click("text=Log out")
    await page.wait_for_url("**/login")
    await page.goto(f"{world.hq.url}/kpis")
    assert "/login?next=/kpis" in page.url
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()
