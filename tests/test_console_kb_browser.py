"""The knowledge base in a real browser (Debian's Chromium through
Playwright) against a real HQ on loopback, in English and Korean: write an
article, submit and publish it, find it, vote; site staff get it suggested on
"Get help" and "This solved it" records a self-served request; a resolved
ticket becomes a draft in one click. One HQ and one browser for the module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.browser import SITE, World, axe_violations, console_world, new_page, screenshot
from tests.browser import log_in as browser_log_in
from tests.support import make_user

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with console_world(tmp_path_factory.mktemp("kb")) as w:
        yield w


async def test_write_publish_find_and_vote(world: World) -> None:
    """An engineer writes a draft and submits it; an admin publishes it; it
    is found by its words with the words marked; a vote counts; an edit makes
    version 2 and version 1 can still be read."""
    page = await world.engineer_page()
    await page.goto(f"{world.hq.url}/kb")
    await page.click("text=New article")
    await page.wait_for_url("**/kb/new")
    await page.fill("#kb-title", "Receipt printer prints blank paper")
    await page.fill("#kb-symptom-in", "The receipt comes out empty.")
    await page.fill("#kb-cause-in", "Thermal paper upside down.")
    await page.fill("#kb-resolution-in", "Open the cover and turn the paper roll over.")
    await page.fill("#kb-tags", "printer, till")
    await page.select_option("#kb-visibility", "public")
    await page.click("#kb-form button[type=submit]")
    await page.wait_for_url("**/kb/KB-*")
    number = page.url.rsplit("/", 1)[1]
    assert await page.locator("#kb-state").get_attribute("data-state") == "draft"
    assert await page.locator("button[data-action=publish]").count() == 0  # no kb:publish
    await page.click("button[data-action=submit]")
    await page.locator("#kb-state[data-state=review]").wait_for()
    await page.context.close()

    admin = await make_user(world.hq, "admin", None, totp=True)
    page = await world.page_as(admin, bypass_csp=True)  # axe runs in the page below
    await page.goto(f"{world.hq.url}/kb/{number}")
    await page.click("button[data-action=publish]")
    await page.locator("#kb-state[data-state=published]").wait_for()
    await page.click("text=It helped")
    await page.locator("#kb-votes", has_text="helped 1").wait_for()

    await page.goto(f"{world.hq.url}/kb")
    await page.fill("#kb-q", "printing blank")
    await page.click("form[role=search] button[type=submit]")
    await page.wait_for_url("**/kb?q=*")
    hit = page.locator(f"#kb-results li[data-article='{number}']")
    await hit.wait_for()
    assert await hit.locator("mark").count() >= 1
    await screenshot(page, "kb-search")

    await page.goto(f"{world.hq.url}/kb/{number}/edit")
    await page.fill("#kb-resolution-in", "Turn the roll: shiny side to the print head.")
    await page.fill("#kb-note", "clearer")
    await page.click("#kb-form button[type=submit]")
    await page.wait_for_url(f"**/kb/{number}")
    await page.locator("#kb-resolution", has_text="shiny side").wait_for()
    assert await page.locator("#kb-versions li").count() == 2
    await page.click("#kb-versions a")
    await page.locator("#old-version").wait_for()
    assert "turn the paper roll over" in await page.locator("#kb-resolution").inner_text()
    await screenshot(page, "kb-article")
    assert not await axe_violations(page)
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()


async def test_get_help_suggests_and_solved_is_self_served(world: World) -> None:
    """Site staff asking for help first see matching published articles;
    "This solved it" records a closed self-served request, no open ticket;
    "none of these" sends the request as before."""
    made = await world.api(
        "POST",
        "/api/v1/kb",
        json={
            "title": "Scanner beeps but the item does not appear",
            "resolution": "Scan the 'USB keyboard US' barcode in the scanner manual.",
            "visibility": "site",
            "site": SITE,
        },
    )
    await world.api("POST", f"/api/v1/kb/{made['number']}/transition", json={"action": "publish"})
    staff = await make_user(world.hq, "site_staff", SITE)
    page = await world.page_as(staff)
    await page.goto(f"{world.hq.url}/help")
    await page.fill("#h-title", "scanner beeps, item missing")
    await page.click("text=Ask for help")
    suggestion = page.locator(f"#kb-suggestion-list li[data-article='{made['number']}']")
    await suggestion.wait_for()
    assert "USB keyboard US" in await suggestion.inner_text()
    await screenshot(page, "help-suggestions")
    await suggestion.locator("button").click()
    await page.wait_for_url("**/help?done=solved")
    await page.locator("#solved-notice").wait_for()
    tickets = await world.api("GET", "/api/v1/tickets", params={"site": SITE, "status": "closed"})
    mine = [t for t in tickets["items"] if t["requester"] == staff.username]
    assert len(mine) == 1 and mine[0]["resolution_code"] == "self_served"
    assert await page.locator("#my-requests a", has_text=mine[0]["number"]).count() == 1

    # not solved: the request goes as a ticket
    await page.fill("#h-title", "scanner beeps and smokes")
    await page.click("text=Ask for help")
    await page.locator("#kb-suggestions:not([hidden])").wait_for()
    await page.click("#kb-not-solved")
    await page.wait_for_url("**/tickets/FL-*")
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()


async def test_a_resolved_ticket_becomes_an_article_in_one_click(world: World) -> None:
    number = await world.ticket_with_agent("Cash drawer will not open")
    await world.api(
        "POST",
        f"/api/v1/tickets/{number}/transition",
        json={"action": "resolve", "resolution_text": "Cleaned the latch."},
    )
    page = await world.engineer_page()
    await page.goto(f"{world.hq.url}/tickets/{number}")
    await page.click("#ticket-to-kb button")
    await page.wait_for_url("**/kb/KB-*/edit")
    assert await page.locator("#kb-title").input_value() == "Cash drawer will not open"
    assert await page.locator("#kb-resolution-in").input_value() == "Cleaned the latch."
    await page.goto(f"{world.hq.url}/tickets/{number}")
    await page.locator("#ticket-articles a").wait_for()
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()


async def test_knowledge_base_in_korean(world: World) -> None:
    """A Korean browser gets the knowledge base's pages in Korean."""
    made = await world.api(
        "POST",
        "/api/v1/kb",
        json={
            "title": "영수증 프린터 용지 걸림",
            "symptom": "용지가 걸립니다",
            "visibility": "public",
        },
    )
    page = await new_page(
        world.browser,
        locale="ko-KR",
        extra_http_headers={"Accept-Language": "ko-KR,ko;q=0.9"},
        bypass_csp=True,  # for axe
    )
    await browser_log_in(page, world.hq.url, world.engineer, next_path="/kb")
    await page.goto(f"{world.hq.url}/kb")
    assert await page.locator("h1").inner_text() == "지식 베이스"
    assert await page.locator("#site-nav a[href='/kb']").inner_text() == "지식 베이스"
    await page.goto(f"{world.hq.url}/kb/{made['number']}")
    assert await page.locator("#kb-state").inner_text() == "초안"
    assert await page.locator("#content-h ~ h3").first.inner_text() == "증상"
    await page.locator("button[data-action=submit]", has_text="검토 요청").wait_for()
    await screenshot(page, "kb-article-ko")
    await page.goto(f"{world.hq.url}/kb/new")
    assert await page.locator("h1").inner_text() == "새 문서"
    assert not await axe_violations(page)
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()
