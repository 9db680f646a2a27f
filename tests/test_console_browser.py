"""The web console in a real browser (Debian's Chromium through Playwright)
against a real HQ and real agents on loopback: logging in with TOTP, live
updates without reloads, runs, jobs, alerts, a ticket's lifecycle, scope,
site staff, reports, tokens. One HQ and one browser for the module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from playwright.async_api import expect

from tests import support
from tests.browser import SITE, World, console_world, log_in, new_page, screenshot
from tests.support import make_user

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with console_world(tmp_path_factory.mktemp("console")) as w:
        yield w


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
    page = await world.engineer_page()
    await page.evaluate("window.__noReload = true")
    assert await page.locator("tr[data-site='shop-live']").count() == 0
    machines = await page.context.new_page()
    await machines.goto(f"{world.hq.url}/machines?site=shop-live")
    await machines.evaluate("window.__noReload = true")
    handle = await world.agent_online("shop-live")
    row = page.locator("tr[data-site='shop-live']")
    # the row can show before its count does: wait for the count, then assert it
    await expect(row.locator("td").nth(1)).to_contain_text("1", timeout=15000)
    assert "1" in await row.locator("td").nth(1).inner_text()
    live_row = machines.locator(f"tr[data-agent='{handle.agent_id}'][data-status=online]")
    await live_row.wait_for()
    assert await page.evaluate("window.__noReload") and await machines.evaluate("window.__noReload")
    await screenshot(machines, "machines")
    await page.context.close()


async def test_run_disk_usage_from_the_machine_page_shows_a_table(world: World) -> None:
    """The catalog form runs disk.usage through the API and renders its data as
    a table; tags set on the page filter the machines list."""
    page = await world.engineer_page()
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
    async with page.expect_navigation():  # the tags form reloads the page when saved
        await page.fill("#tags", "till, front")
        await page.click("#tags ~ button")
    await page.goto(f"{world.hq.url}/machines?tag=till")
    await page.locator(f"tr[data-agent='{world.agent.agent_id}']").wait_for()
    assert await page.locator("#machines tbody tr[data-agent]").count() == 1
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()


async def test_a_job_over_a_site_shows_each_machine_progress(world: World) -> None:
    """Starting a job over a site from the jobs page (parameters from the
    entry's schema) leads to its page, where every machine of the site reaches
    a final status live, with its result."""
    second = await world.agent_online(SITE)
    page = await world.engineer_page()
    await page.goto(f"{world.hq.url}/jobs")
    await page.select_option("#j-name", "process.top")
    await page.fill("#f-job-process-top-n", "3")
    await page.select_option("#j-site", SITE)
    await page.click("#job-form button[type=submit]")
    await page.wait_for_url("**/jobs/jb_*")
    job = await world.api("GET", "/api/v1/jobs/" + page.url.rsplit("/", 1)[1])
    assert job["name"] == "process.top" and job["params"]["n"] == 3
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
    firing alert and the ticket without a reload; on the ticket, the triage
    result (disk.usage, run when it fired) opens as a table."""
    page = await world.engineer_page()
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
            "diagnostics": ["disk.usage"],
        },
    )
    alert = page.locator("#firing-alerts li", has_text="disk-any").first
    await alert.wait_for(timeout=30000)
    link = alert.locator("a[href^='/tickets/FL-']")
    await link.wait_for(timeout=30000)
    assert int(await page.locator("[data-priority=P2]").inner_text()) >= 1
    assert await page.evaluate("window.__noReload")
    await world.api("PATCH", f"/api/v1/alert-rules/{rule['id']}", json={"enabled": False})
    number = await link.first.inner_text()
    shown = page.locator("[data-result]")
    for _ in range(40):  # the triage runs right after the ticket opens
        await page.goto(f"{world.hq.url}/tickets/{number}")
        if await shown.count():
            break
        await page.wait_for_timeout(500)
    await shown.first.click()
    await page.locator("#timeline .result table.result-table").first.wait_for()
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()


async def test_work_a_ticket_through_its_lifecycle(world: World) -> None:
    """Open a ticket from the tickets page; acknowledge, start, comment, wait,
    resume, resolve and close it in the UI; the timeline records each step."""
    page = await world.engineer_page()
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


async def test_a_site_technician_of_another_site_sees_none_of_it(world: World) -> None:
    """Another site's technician sees neither shop-1's machines, tickets nor
    sessions: lists leave them out and their pages answer 404."""
    number = await world.ticket_with_agent("private to shop-1")
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


async def test_site_staff_ask_for_help_and_see_only_their_own_requests(world: World) -> None:
    """Site staff land on "Get help", open a request there, read it and comment
    on it; someone else's ticket on their own site answers 404."""
    others = await world.ticket_with_agent("not yours")
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
