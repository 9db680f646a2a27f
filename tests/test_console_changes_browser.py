"""Changes in the browser, in English and Korean: an engineer requests one
from the changes page, an approver approves it on its page, the engineer
starts it and watches the stages reach review, then closes the review; an
approver working in Korean rejects another; site staff see the upcoming
change on their "Get help" page, engineers on the machine's page."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from agent.policy import write_default
from tests.browser import SITE, World, axe_violations, console_world, screenshot
from tests.support import machine_policy, make_user

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

KO = {"locale": "ko-KR", "extra_http_headers": {"Accept-Language": "ko-KR,ko;q=0.9"}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with console_world(tmp_path_factory.mktemp("console")) as w:
        yield w


async def test_request_approve_start_and_review_a_change(world: World) -> None:
    # two machines, a pilot and the rest, whose sites let HQ run commands outside a
    # consented session (a change is approved at HQ, not consented to at the machine)
    write_default(
        world.agent.dir.policy_file, machine_policy(allow_exec=True, require_consent=False)
    )
    assert world.agent.daemon.reload_policy() is True
    await world.agent_online(SITE, allow_exec=True, require_consent=False)
    page = await world.engineer_page()
    await page.goto(f"{world.hq.url}/changes")
    assert await page.locator("h1").inner_text() == "Changes"
    await page.fill("#c-title", "Say hello on every till")
    await page.select_option("#c-risk", "high")
    await page.fill("#c-plan", "echo on each machine")
    await page.fill("#c-backout-plan", "nothing to undo")
    await page.select_option("#c-action", "exec")
    await page.fill("#c-params", '{"argv": ["echo", "hello"]}')
    await page.check(f"input[name='target.sites'][value='{SITE}']")
    await page.fill("#c-gate", "0")
    await page.click("#change-form button[type=submit]")
    await page.wait_for_url("**/changes/CHG-*")
    number = page.url.rsplit("/", 1)[1]
    await page.locator("#change-state[data-state=requested]").wait_for()
    assert await page.locator("#change-plan").inner_text() == "echo on each machine"
    # the engineer holds no changes:approve: no decision buttons for it
    assert await page.locator("[data-action=approve]").count() == 0
    await screenshot(page, "change-requested")

    approver = await make_user(world.hq, "admin", None, totp=True)
    other = await world.page_as(approver)
    await other.goto(f"{world.hq.url}/changes/{number}")
    await other.fill("#approve-comment", "fine for today")
    await other.click("[data-action=approve]")
    await other.locator("#change-state[data-state=approved]").wait_for()
    assert "fine for today" in await other.locator("#approvals").inner_text()
    await other.context.close()

    await page.reload()
    await page.click("[data-action=start]")
    await page.locator("#change-state[data-state=in_progress]").wait_for()
    # the page follows the stages (it reloads while the change runs)
    await page.locator("#change-state[data-state=review]").wait_for(timeout=60_000)
    stages = await page.locator("#stages").inner_text()
    assert "pilot" in stages and "rest" in stages and "ok" in stages
    await screenshot(page, "change-review")
    await page.select_option("#r-outcome", "successful")
    await page.fill("#r-comment", "all good")
    await page.click("[data-action=review]")
    await page.locator("#change-state[data-state=successful]").wait_for()
    assert "review" in await page.locator("#history").inner_text()
    await page.goto(f"{world.hq.url}/changes?state=successful")
    await page.locator(f"#changes tr[data-change='{number}']").wait_for()
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()


async def test_korean_approver_rejects_and_the_site_sees_upcoming_changes(world: World) -> None:
    made = await world.api(
        "POST",
        "/api/v1/changes",
        json={
            "title": "Printer driver update",
            "risk": "medium",
            "action": {"name": "exec", "params": {"argv": ["true"]}},
            "target": {"agent_ids": [world.agent.agent_id]},
            "planned_start": "2030-05-01T20:00:00Z",
        },
    )
    upcoming = await world.api(
        "POST",
        "/api/v1/changes",
        json={
            "title": "Till firmware",
            "risk": "low",
            "action": {"name": "exec", "params": {"argv": ["true"]}},
            "target": {"sites": [SITE]},
        },
    )
    staff = await make_user(world.hq, "site_staff", SITE)
    page = await world.page_as(staff, **KO)
    await page.goto(f"{world.hq.url}/help")
    box = page.locator("#upcoming-changes")
    assert await box.locator("h2").inner_text() == "내 장비에 예정된 변경"
    text = await box.inner_text()
    assert made["number"] in text and upcoming["number"] in text and "요청됨" in text
    await page.context.close()
    outsider = await world.page_as(world.tech_other)
    await outsider.goto(f"{world.hq.url}/changes")
    assert made["number"] not in await outsider.locator("#changes").inner_text()
    await outsider.context.close()

    engineer = await world.engineer_page()
    await engineer.goto(f"{world.hq.url}/machines/{world.agent.agent_id}")
    assert made["number"] in await engineer.locator("#upcoming-changes").inner_text()
    await engineer.context.close()

    approver = await make_user(world.hq, "admin", None, totp=True)
    ko = await world.page_as(approver, **KO)
    await ko.goto(f"{world.hq.url}/changes")
    assert await ko.locator("h1").inner_text() == "변경"
    await ko.goto(f"{world.hq.url}/changes/{made['number']}")
    assert await ko.locator("#approvals-h").inner_text() == "승인 (0 / 1)"
    await ko.fill("#reject-comment", "다음 주에 다시")
    await ko.click("[data-action=reject]")
    await ko.locator("#change-state[data-state=rejected]").wait_for()
    assert await ko.locator("#change-state").inner_text() == "반려됨"
    await screenshot(ko, "change-rejected-ko")
    assert not ko.fieldlink_errors, ko.fieldlink_errors
    await ko.context.close()


async def test_change_pages_have_no_serious_accessibility_violations(world: World) -> None:
    """axe-core finds no serious or critical violation on the changes list (with its form)
    and a change's page."""

    made = await world.api(
        "POST",
        "/api/v1/changes",
        json={
            "title": "axe",
            "risk": "low",
            "action": {"name": "exec", "params": {"argv": ["true"]}},
            "target": {"sites": [SITE]},
        },
    )
    page = await world.page_as(world.engineer, bypass_csp=True)
    problems: dict[str, list[str]] = {}
    for path in ("/changes", f"/changes/{made['number']}"):
        await page.goto(world.hq.url + path)
        if found := await axe_violations(page):
            problems[path] = found
    assert not problems, problems
    await page.context.close()
