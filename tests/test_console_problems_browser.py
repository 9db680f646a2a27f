"""Problem records in the console, in a real browser against a real HQ: open a
problem from the list with an incident, move it to a known error (its
workaround then shows on the incident's page), link and unlink incidents,
resolve it; accept and dismiss HQ's proposals; the same pages in Korean.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.browser import SITE, World, axe_violations, console_world, screenshot

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with console_world(tmp_path_factory.mktemp("console")) as w:
        yield w


async def _ticket(world: World, title: str) -> str:
    made = await world.api("POST", "/api/v1/tickets", json={"title": title, "site": SITE})
    return str(made["number"])


async def _reopened_twice(world: World, title: str) -> str:
    number = await _ticket(world, title)
    for _ in range(2):
        for action in ("resolve", "reopen"):
            await world.api("POST", f"/api/v1/tickets/{number}/transition", json={"action": action})
    return number


async def test_work_a_problem_from_new_to_resolved(world: World) -> None:
    """New problem with an incident; investigate; known error with a workaround that
    the incident's page then shows; link and unlink; resolve with its root cause."""
    first = await _ticket(world, "Till 1 freezes at noon")
    second = await _ticket(world, "Till 2 freezes at noon")
    page = await world.engineer_page()
    await page.goto(f"{world.hq.url}/problems")
    await page.fill("#np-title", "Tills freeze at noon")
    await page.select_option("#np-site", SITE)
    await page.fill("#np-tickets", first)
    await page.click("text=Open problem")
    await page.wait_for_url("**/problems/PRB-*")
    number = page.url.rsplit("/", 1)[-1]
    status = page.locator("#problem-status")
    assert await status.get_attribute("data-status") == "new"
    await page.locator("#incidents tr[data-ticket]", has_text=first).wait_for()

    await page.click("button[data-move=investigating]")
    await page.locator("#problem-status[data-status=investigating]").wait_for()
    await page.click("button[data-move=known_error]")  # the browser asks for the workaround
    assert await status.get_attribute("data-status") == "investigating"
    await page.fill("#ke-workaround", "Restart the till service after the noon sync")
    await page.click("button[data-move=known_error]")
    await page.locator("#problem-status[data-status=known_error]").wait_for()
    await page.locator("#workaround", has_text="Restart the till service").wait_for()

    await page.fill("#link-t", second)
    await page.click("#link-ticket button")
    await page.locator("#incidents tr[data-ticket]", has_text=second).wait_for()
    await page.goto(f"{world.hq.url}/tickets/{second}")
    box = page.locator(f"[data-workaround='{number}']")
    await box.wait_for()
    assert "Restart the till service after the noon sync" in await box.inner_text()
    assert "Known error" in await box.inner_text()
    await page.locator("#ticket-problems a", has_text=number).click()
    await page.wait_for_url(f"**/problems/{number}")
    await page.locator(f"#incidents tr[data-ticket='{second}'] button").click()
    await page.locator(f"#incidents tr[data-ticket='{second}']").wait_for(state="detached")

    await page.fill("#note-body", "Happens right after the 12:00 price sync")
    await page.click("#add-note button")
    await page.locator("#history li[data-kind=note]", has_text="12:00 price sync").wait_for()
    await page.fill("#rs-cause", "The noon price sync locks the printer queue")
    await page.fill("#rs-resolution", "Sync moved to 03:00")
    await page.check("#rs-incidents")
    await page.click("button[data-move=resolved]")
    await page.locator("#problem-status[data-status=resolved]").wait_for()
    solved = await world.api("GET", f"/api/v1/tickets/{first}")
    assert solved["status"] == "resolved" and solved["resolution_code"] == "problem_resolved"
    untouched = await world.api("GET", f"/api/v1/tickets/{second}")  # unlinked before
    assert untouched["status"] == "new"
    await page.locator("#root-cause", has_text="printer queue").wait_for()
    kinds = await page.locator("#history li").evaluate_all("els => els.map(e => e.dataset.kind)")
    assert kinds.count("state") == 3 and kinds.count("ticket_linked") == 2
    assert "incidents_resolved" in kinds
    assert "ticket_unlinked" in kinds
    await screenshot(page, "problem")
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()

    # axe-core is injected, so this context bypasses the CSP
    checker = await world.page_as(world.engineer, bypass_csp=True)
    found = {}
    for path in (f"/problems/{number}", "/problems", f"/tickets/{second}"):
        await checker.goto(world.hq.url + path)
        if violations := await axe_violations(checker):
            found[path] = violations
    assert not found, found
    await checker.context.close()


async def test_accept_and_dismiss_proposals(world: World) -> None:
    """Incidents reopened twice appear as proposals; one is accepted (a new
    problem), the other dismissed with a reason; both leave the queue."""
    keep = await _reopened_twice(world, "Scanner drops the link")
    drop = await _reopened_twice(world, "Receipt paper runs out")
    found = await world.api("GET", "/api/v1/problems", params={"status": "proposed"})
    numbers = {p["origin_label"]: p["number"] for p in found["items"]}
    page = await world.engineer_page()
    await page.goto(f"{world.hq.url}/problems")
    await page.click("#proposals-link")
    await page.wait_for_url("**/problems?status=proposed")
    await page.locator(f"tr[data-problem='{numbers[keep]}']").wait_for()
    await screenshot(page, "proposals")
    await page.click(f"button[data-accept='{numbers[keep]}']")
    await page.locator(f"tr[data-problem='{numbers[keep]}']").wait_for(state="detached")
    await page.fill(f"#dismiss-{numbers[drop]}", "paper was simply out")
    await page.click(f"button[data-dismiss='{numbers[drop]}']")
    await page.locator(f"tr[data-problem='{numbers[drop]}']").wait_for(state="detached")
    accepted = await world.api("GET", f"/api/v1/problems/{numbers[keep]}")
    dismissed = await world.api("GET", f"/api/v1/problems/{numbers[drop]}")
    assert accepted["status"] == "new" and dismissed["status"] == "dismissed"
    assert dismissed["history"][-1]["body"] == "paper was simply out"
    await page.goto(f"{world.hq.url}/problems")
    await page.locator(f"tr[data-problem='{numbers[keep]}']").wait_for()
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()


async def test_problem_pages_in_korean(world: World) -> None:
    """A Korean browser gets the problem list, the problem page and the incident's
    workaround box in Korean."""
    incident = await _ticket(world, "Till 5 freezes")
    made = await world.api(
        "POST",
        "/api/v1/problems",
        json={"title": "Till freezes", "site": SITE, "tickets": [incident]},
    )
    number = made["number"]
    await world.api(
        "POST",
        f"/api/v1/problems/{number}/transition",
        json={"status": "known_error", "workaround": "계산대 서비스를 다시 시작하세요"},
    )
    page = await world.page_as(
        world.engineer,
        locale="ko-KR",
        extra_http_headers={"Accept-Language": "ko-KR,ko;q=0.9"},
    )
    await page.goto(f"{world.hq.url}/problems")
    assert await page.locator("h1").inner_text() == "문제"
    assert await page.locator("#proposals-link").inner_text() == "제안"
    row = page.locator(f"tr[data-problem='{number}']")
    assert "알려진 오류" in await row.inner_text()
    await screenshot(page, "problems-ko")
    await page.goto(f"{world.hq.url}/problems/{number}")
    assert await page.locator("#inc-h").inner_text() == "연결된 장애 (1)"
    assert await page.locator("#wa-h").inner_text() == "임시 해결책"
    assert await page.locator("#hist-h").inner_text() == "이력"
    await page.goto(f"{world.hq.url}/tickets/{incident}")
    heading = page.locator(f"[data-workaround='{number}'] h2")
    assert await heading.inner_text() == f"알려진 오류 {number}: 임시 해결책"
    await screenshot(page, "ticket-workaround-ko")
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()


async def test_link_an_incident_to_a_problem_from_its_page(world: World) -> None:
    """The ticket page offers the active problems of its site and HQ-wide ones;
    picking one links the incident (the problem then shows on the page)."""
    incident = await _ticket(world, "Till 6 freezes")
    made = await world.api("POST", "/api/v1/problems", json={"title": "Noon freezes (HQ)"})
    done = await world.api("POST", "/api/v1/problems", json={"title": "Old one", "site": SITE})
    await world.api(
        "POST",
        f"/api/v1/problems/{done['number']}/transition",
        json={"status": "resolved", "root_cause": "r", "resolution": "s"},
    )
    page = await world.engineer_page()
    await page.goto(f"{world.hq.url}/tickets/{incident}")
    offered = await page.locator("#link-prb option").evaluate_all("els => els.map(e => e.value)")
    assert made["number"] in offered and done["number"] not in offered
    await page.select_option("#link-prb", made["number"])
    await page.click("#link-problem button")
    await page.locator("#ticket-problems a", has_text=made["number"]).wait_for()
    linked = await world.api("GET", f"/api/v1/problems/{made['number']}")
    assert [t["number"] for t in linked["tickets"]] == [incident]
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()
