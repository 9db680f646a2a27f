"""Remote sessions in the browser: requested from a ticket with a step-up
code, consent arriving live (from the site's technician, or at the machine
with `fieldlink-agent consent`), typing in the xterm.js terminal, watching it
live and replaying the recording.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.browser import SITE, World, console_world, fresh_code, screenshot
from tests.support import make_user, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with console_world(tmp_path_factory.mktemp("console")) as w:
        yield w


async def test_request_a_session_and_see_consent_arrive_live(world: World) -> None:
    """From a ticket the engineer requests a session (step-up code); the site's
    technician approves it on the consents page; the engineer's session page
    turns active without a reload."""
    number = await world.ticket_with_agent("needs a look")
    page = await world.engineer_page()
    await page.goto(f"{world.hq.url}/tickets/{number}")
    await page.select_option("#s-kind", "exec")
    await page.fill("#s-reason", "check the spooler")
    await page.fill("#s-code", await fresh_code(world.engineer.totp_secret or ""))
    await page.click("#session-request button[type=submit]")
    await page.wait_for_url("**/sessions/*")
    await page.locator("#session-state", has_text="awaiting consent").wait_for()
    await page.evaluate("window.__noReload = true")

    tech = await make_user(world.hq, "site_tech", SITE, totp=True)
    other = await world.page_as(tech)
    await other.goto(world.hq.url + "/")  # the technician's dashboard lists it
    await other.locator("#dashboard-consents li", has_text=number).wait_for()
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
        lambda: "hello_at" in world.hq.hq.parts.links.get(agent.agent_id).info,
        what="hello",
    )
    made = await world.api(
        "POST",
        "/api/v1/tickets",
        json={"title": "till frozen", "site": "shop-shell", "agent_ids": [agent.agent_id]},
    )
    page = await world.engineer_page()
    await page.goto(f"{world.hq.url}/tickets/{made['number']}")
    await page.select_option("#s-kind", "shell")
    await page.fill("#s-reason", "look at the till")
    # No code this time: the login's TOTP is recent enough for the step-up.
    await page.click("#session-request button[type=submit]")
    await page.wait_for_url("**/sessions/*")
    session_id = page.url.rsplit("/", 1)[1]
    await page.locator("#session-state", has_text="awaiting consent").wait_for()

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


async def test_take_over_a_session_the_site_asked_for(world: World) -> None:
    """`fieldlink-agent help --assist` puts an offer in the sites' queue; the
    engineer takes it from the sessions page, types in its terminal, and sees
    it end live when the site ends it from the machine."""
    from tests.test_e2e_sessions import ME, AssistCLI

    agent = await world.agent_online(
        "shop-assist", allow_shell=True, shell_user=ME, require_consent=True
    )
    await wait_until(
        lambda: "hello_at" in world.hq.hq.parts.links.get(agent.agent_id).info,
        what="hello",
    )
    cli = await AssistCLI.start(agent, "printer jammed, please take over")
    number = (await cli.line(r"Your request is ticket (FL-\d+)\.")).group(1)
    page = await world.engineer_page()
    await page.goto(f"{world.hq.url}/sessions?state=requested&origin=site")
    await page.locator(f"tr:has(a:text-is('{number}')) a[href^='/sessions/']").click()
    await page.wait_for_url("**/sessions/*")
    async with page.expect_navigation():  # taking it reloads the page
        await page.click("text=Take this session")
    await page.locator("#session-state", has_text="active").wait_for()
    await cli.line(r"from HQ joined at")
    await page.click("#open-terminal")
    await page.locator("#term-note", has_text="Connected").wait_for()
    await page.locator("#terminal").click()
    await page.keyboard.type("echo assisted-$((40+2))\n")
    shows = f"() => ({TERMINAL_TEXT % 'terminal'})().includes('assisted-42')"
    await page.wait_for_function(shows, timeout=20000)
    await cli.type("end\n")
    assert await cli.exit_code() == 0
    await page.locator("#session-state", has_text="ended").wait_for()
    await page.locator("#term-note", has_text="Closed").wait_for()
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()
