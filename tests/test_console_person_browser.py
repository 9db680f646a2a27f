"""The console as a person sees it (issue 11, items 2, 3, 4 and 10), walked in a
real browser in English and Korean, on a desktop and at phone width (390 px):
SLA badges with the time left and colours, a help request's health snapshot on
the ticket page, impact and urgency on the new-ticket form, the resolution
code apart from its text, the Work panel's rows aligned, what two-factor
set-up says when done, and the only admin not offered for disabling.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from tests import support
from tests.browser import ARTIFACTS, SITE, World, console_world, log_in, new_page, screenshot
from tests.test_e2e_help import cli as agent_cli
from tests.test_e2e_help import number_in

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

KO = {"locale": "ko-KR", "extra_http_headers": {"Accept-Language": "ko-KR,ko;q=0.9"}}
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
WORDS = {
    "en": {"left": "left", "overdue": "overdue", "ok": "on time", "warning": "at risk"},
    "ko": {"left": "남음", "overdue": "초과", "ok": "정상", "warning": "위험"},
}
# the console's colours (console.css): --bad and --warn
BAD, WARN = "rgb(179, 38, 30)", "rgb(138, 83, 0)"


@dataclass
class Tickets:
    breached: str
    warning: str
    ok: str
    help: str
    resolved: str


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with console_world(tmp_path_factory.mktemp("console-person")) as w:
        yield w


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tickets(world: World) -> Tickets:
    """Tickets in each SLA state: P1's acknowledge target is 1 s (breached at
    once), P2 warns from the start (warn_at tiny), P4 has half an hour; a help
    request from the agent (with its snapshot); a resolved ticket."""
    policies = {
        "P1": {"ack_seconds": 1, "response_seconds": 1, "resolve_seconds": 3600},
        "P2": {
            "ack_seconds": 3600,
            "response_seconds": 3600,
            "resolve_seconds": 7200,
            "warn_at": 0.0001,
        },
        "P4": {"ack_seconds": 1800, "response_seconds": 3600, "resolve_seconds": 7200},
    }
    for prio, targets in policies.items():
        await world.api(
            "PUT", f"/api/v1/sla-policies/{prio}", json={**targets, "business_hours": False}
        )
    numbers = {}
    for prio in policies:
        made = await world.api(
            "POST",
            "/api/v1/tickets",
            json={
                "title": f"Till {prio} is slow",
                "site": SITE,
                "priority": prio,
                "agent_ids": [world.agent.agent_id],
            },
        )
        numbers[prio] = str(made["number"])
    code, out, err = await agent_cli(world.agent, "help", "the receipt printer prints blank")
    assert code == 0, err
    resolved = await world.ticket_with_agent("Scanner lost its pairing")
    for action in ("ack", "start"):
        await world.api("POST", f"/api/v1/tickets/{resolved}/transition", json={"action": action})
    await world.api(
        "POST",
        f"/api/v1/tickets/{resolved}/transition",
        json={
            "action": "resolve",
            "resolution_code": "re-paired",
            "resolution_text": "Paired the scanner with the till again.",
        },
    )

    async def breached() -> bool:
        t = await world.api("GET", f"/api/v1/tickets/{numbers['P1']}")
        return bool(t["sla"]["ack"]["state"] == "breached")

    await support.wait_until(breached, what="P1 breached")
    return Tickets(numbers["P1"], numbers["P2"], numbers["P4"], number_in(out), resolved)


async def _page(world: World, lang: str, phone: bool) -> Any:
    context: dict[str, Any] = {}
    if lang == "ko":
        context.update(KO)
    if phone:
        context.update(PHONE)
    return await world.page_as(world.engineer, **context)


async def _fits(page: Any, phone: bool) -> None:
    if phone:
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{page.url} is {width} px wide"


async def _color(locator: Any) -> str:
    return str(await locator.evaluate("el => getComputedStyle(el).color"))


@pytest.mark.parametrize("phone", [False, True], ids=["desktop", "phone"])
@pytest.mark.parametrize("lang", ["en", "ko"])
async def test_tickets_as_a_person_sees_them(
    world: World, tickets: Tickets, lang: str, phone: bool
) -> None:
    words = WORDS[lang]
    tag = f"{lang}-{'phone' if phone else 'desktop'}"
    page = await _page(world, lang, phone)
    url = world.hq.url

    # 2. the list: one badge per ticket with the time left (or past due), coloured
    await page.goto(f"{url}/tickets")
    assert await page.locator("html").get_attribute("lang") == lang
    row = page.locator(f"tr[data-ticket='{tickets.breached}'] [data-sla]")
    assert await row.get_attribute("data-sla") == "breached"
    assert re.search(rf"\d+\S* {words['overdue']}", await row.inner_text())
    assert await _color(row) == BAD
    row = page.locator(f"tr[data-ticket='{tickets.warning}'] [data-sla]")
    assert await row.get_attribute("data-sla") == "warning"
    text = await row.inner_text()
    assert words["warning"] in text and words["left"] in text, text
    assert await _color(row) == WARN
    row = page.locator(f"tr[data-ticket='{tickets.ok}'] [data-sla]")
    text = await row.inner_text()
    assert words["ok"] in text and words["left"] in text, text
    assert "running" not in text
    # 4. the new-ticket form has impact and urgency; the priority follows them
    assert await page.locator("#nt-impact option").count() == 3
    assert await page.locator("#nt-urgency option").count() == 3
    await _fits(page, phone)
    await screenshot(page, f"person-tickets-{tag}")
    title = f"Card reader down ({tag})"
    await page.fill("#nt-title", title)
    await page.select_option("#nt-impact", "1")
    await page.select_option("#nt-urgency", "1")
    await page.click("form[data-api='/api/v1/tickets'] button[type=submit]")
    await page.wait_for_url(re.compile(r".*/tickets/FL-\d+$"))
    made = await world.api("GET", "/api/v1" + page.url.removeprefix(url))
    assert (made["title"], made["impact"], made["urgency"]) == (title, 1, 1)
    assert made["priority"] == "P1"

    # 2. the dashboard's SLAs at risk say the same words
    await page.goto(f"{url}/")
    risky = page.locator(f"a[href='/tickets/{tickets.breached}'] ~ [data-sla]")
    assert words["overdue"] in await risky.inner_text()
    risky = page.locator(f"a[href='/tickets/{tickets.warning}'] ~ [data-sla]")
    assert words["left"] in await risky.inner_text()
    await _fits(page, phone)
    await screenshot(page, f"person-dashboard-{tag}")

    # 2. the ticket page: the badge and every clock with its due time
    await page.goto(f"{url}/tickets/{tickets.ok}")
    clocks = page.locator("#sla-clocks li")
    assert await clocks.count() == 3
    ack = await page.locator("#sla-clocks li[data-clock='ack']").inner_text()
    assert words["left"] in ack and re.search(r"\d{4}|\d+:\d\d", ack), ack
    # 10. linked machines by host name
    machine = page.locator(f"dl.facts a[href='/machines/{world.agent.agent_id}']")
    assert await machine.inner_text() == os.uname().nodename
    # 10. the Work panel's rows: their fields start at one line, on a desktop (the only
    # machine is linked already, so "Link a machine" is a note, not a row with a field)
    boxes = [await page.locator(sel).bounding_box() for sel in ("#set-prio", "#assign-to")]
    if not phone:
        assert len({round(b["x"]) for b in boxes if b}) == 1, boxes
    await _fits(page, phone)
    await screenshot(page, f"person-ticket-{tag}")
    await page.goto(f"{url}/tickets/{tickets.breached}")
    ack = await page.locator("#sla-clocks li[data-clock='ack']").inner_text()
    assert words["overdue"] in ack, ack
    assert await _color(page.locator("#sla-clocks li[data-clock='ack'] span")) == BAD

    # 3. the help request's snapshot, shown like a result: CPU, load, disks, processes
    await page.goto(f"{url}/tickets/{tickets.help}")
    snap = page.locator("li[data-kind='snapshot'] [data-snapshot]")
    await snap.wait_for()
    facts = await snap.locator("dl.facts").inner_text()
    assert "CPU" in facts and "%" in facts and re.search(r"\d+\.\d\d · \d+\.\d\d", facts)
    assert await snap.locator("table.snapshot-disks tbody tr").count() >= 1
    assert "/" in await snap.locator("table.snapshot-disks tbody").inner_text()
    assert await snap.locator("table.snapshot-procs tbody tr").count() >= 1
    await _fits(page, phone)
    await screenshot(page, f"person-help-snapshot-{tag}")
    await snap.screenshot(path=str(ARTIFACTS / f"person-snapshot-only-{tag}.png"))

    # 10. the resolution code apart from its text
    await page.goto(f"{url}/tickets/{tickets.resolved}")
    assert await page.locator("#resolution .tag").inner_text() == "re-paired"
    assert (
        await page.locator("#resolution p").inner_text()
        == "Paired the scanner with the till again."
    )
    await screenshot(page, f"person-resolved-{tag}")
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()


@pytest.mark.parametrize("lang", ["en", "ko"])
async def test_two_factor_done_and_the_only_admin(world: World, lang: str) -> None:
    """Turning on two-factor says what happened (not "Done."); the only admin
    is not offered for disabling and its admin role cannot be removed (the API
    refuses with 409 `last_admin` naming the field)."""
    from server.auth.totp import code_for

    context: dict[str, Any] = dict(KO) if lang == "ko" else {}
    person = await support.make_user(world.hq, "hq_engineer", None)  # no 2FA yet
    page = await new_page(world.browser, **context, **PHONE)
    await log_in(page, world.hq.url, person)
    await page.wait_for_url("**/totp")
    await page.click("form[action='/totp'] button")
    secret = (await page.locator("#totp-secret").inner_text()).strip()
    await page.fill("#code", code_for(secret))
    await page.click("form[action='/totp/confirm'] button")
    await page.wait_for_url("**/?done=totp")
    done = await page.locator("[data-done=totp]").inner_text()
    assert done != "Done." and ("authenticator" in done if lang == "en" else "인증" in done)
    await _fits(page, True)
    await screenshot(page, f"person-2fa-done-{lang}-phone")
    await page.context.close()

    users = await world.api("GET", "/api/v1/users")
    root = next(u for u in users["items"] if u["username"] == "admin")
    async with world.hq.client(world.hq.admin_token) as api:
        status, err = await api.request(
            "PATCH", f"/api/v1/users/{root['id']}", json={"disabled": True}
        )
        assert status == 409 and err["error"]["code"] == "last_admin"
        assert "disabled" in err["error"]["fields"]
        status, err = await api.request("DELETE", f"/api/v1/users/{root['id']}")
        assert status == 409 and "user_id" in err["error"]["fields"]

    admin = support.TestUser(root["id"], "admin", world.hq.admin_password, "", None)
    if "admin" not in world.logins:  # the admin sets up two-factor once, then logs in again
        page = await new_page(world.browser)
        await log_in(page, world.hq.url, admin)
        await page.wait_for_url("**/totp")
        await page.click("form[action='/totp'] button")
        secret = (await page.locator("#totp-secret").inner_text()).strip()
        await page.fill("#code", code_for(secret))
        await page.click("form[action='/totp/confirm'] button")
        await page.wait_for_url("**/?done=totp")
        world.logins["admin"] = await page.context.storage_state()
        await page.context.close()
    page = await new_page(world.browser, storage_state=world.logins["admin"], **context)
    await page.goto(f"{world.hq.url}/admin")
    row = page.locator("tr[data-user='admin']")
    assert await row.locator("[data-only-admin]").count() == 1
    assert await row.locator("input[name=disabled]").count() == 0
    assert await row.locator("form[data-method=DELETE]").count() == 0
    other = page.locator(f"tr[data-user='{person.username}']")
    assert await other.locator("input[name=disabled]").count() == 1
    await screenshot(page, f"person-admin-only-{lang}")
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()
