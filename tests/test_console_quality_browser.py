"""The console's quality bar in the browser: TOTP enrollment from the QR page
and administration, the Korean UI, a 390 px phone viewport, and axe-core on
the main pages.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests import support
from tests.browser import SITE, World, axe_violations, console_world, log_in, new_page, screenshot

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with console_world(tmp_path_factory.mktemp("console")) as w:
        yield w


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
    page = await world.engineer_page(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    for path, name in (
        ("/", "phone-dashboard"),
        ("/machines", "phone-machines"),
        (f"/machines/{world.agent.agent_id}", "phone-machine"),
        ("/tickets", "phone-tickets"),
        ("/kb/new", "phone-kb-new"),
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
    "/reports",
    "/profile",
    "/kb",
    "/kb/new",
]


async def test_main_pages_have_no_serious_accessibility_violations(world: World) -> None:
    """axe-core finds no serious or critical violation on the main pages (and
    the login page). The axe script is injected, so this context bypasses the CSP."""
    number = await world.ticket_with_agent("axe")
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


async def test_alert_rules_are_created_edited_and_switched_off_in_the_page(world: World) -> None:
    """An engineer creates a rule from the form, edits its threshold, turns it
    off and deletes it; the API sees each change."""
    page = await world.engineer_page()
    await page.goto(f"{world.hq.url}/alert-rules")
    await page.fill("#r-name", "hot-cpu")
    await page.fill("#r-metric", "cpu.percent")
    await page.fill("#r-threshold", "95")
    await page.select_option("#r-site", SITE)
    async with page.expect_navigation():
        await page.click("text=Create rule")
    row = page.locator("tr[data-rule='hot-cpu']")
    await row.locator("summary").click()
    await row.locator("input[name=threshold]").fill("90")
    async with page.expect_navigation():
        await row.locator("form[data-method=PATCH] button:text('Save')").click()
    rules = await world.api("GET", "/api/v1/alert-rules")
    rule = next(r for r in rules["items"] if r["name"] == "hot-cpu")
    assert rule["threshold"] == 90 and rule["site"] == SITE and rule["enabled"]
    async with page.expect_navigation():
        await page.locator("tr[data-rule='hot-cpu'] input[name=enabled] ~ button").click()
    assert not (await world.api("GET", f"/api/v1/alert-rules/{rule['id']}"))["enabled"]
    page.on("dialog", lambda d: d.accept())
    async with page.expect_navigation():
        await page.locator("tr[data-rule='hot-cpu'] button.danger").click()
    assert await page.locator("tr[data-rule='hot-cpu']").count() == 0
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()
