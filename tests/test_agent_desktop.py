"""Desktop sessions with real parts: Xvfb on a free display, x11vnc started by
a real enrolled agent, a real HQ opening the `fieldlink-desktop` channel over
the real reverse SSH link (server.links.desktop.open_desktop), pixels read
with the RFB viewer in shared/rfbclient.py, the X pointer read with xdotool,
consent and control given with `fieldlink-agent consent` (its own process).

Sessions are HQ's word as the agent hears it: either crafted `SessionInfo`
frames sent on HQ's link (as a buggy or compromised HQ might send them), or
made by HQ's own session engine and answered at the machine."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pwd
import secrets
import socket
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.policy import Policy, write_default
from agent.screen import x11vnc_argv
from server.links.desktop import DesktopChannel, DesktopRefused, open_desktop
from shared import protocol as p
from shared import rfb
from shared.rfbclient import RfbClient
from tests.desktop_support import (
    Display,
    children_running,
    cmdline,
    inet_sockets,
    need_x_programs,
    xvfb,
)
from tests.support import AgentHandle, HQHandle, wait_until

ME = pwd.getpwuid(os.geteuid()).pw_name
TICKET = "FL-7"
ENGINEER = "eve"
RED = (255, 0, 0)

pytestmark = pytest.mark.slow


@pytest.fixture
async def display(tmp_path: Path) -> AsyncIterator[Display]:
    async with xvfb(tmp_path) as found:
        yield found


async def linked(
    hq: HQHandle, agent_factory: Any, display: Display | None, **policy: Any
) -> tuple[AgentHandle, Any]:
    """An agent whose policy shares `display` (unless told otherwise), linked
    to HQ, its hello in."""
    agent: AgentHandle = await agent_factory(hq, run=False)
    policy.setdefault("allow_desktop", True)
    policy.setdefault("shell_user", ME)
    if display is not None:
        policy.setdefault("desktop_display", display.name)
        policy.setdefault("desktop_xauthority", display.xauthority)
    write_default(agent.dir.policy_file, Policy(**policy))
    await agent.start()
    registry = hq.hq.parts.links

    def ready() -> Any:
        link = registry.get(agent.agent_id)
        return link if link is not None and "hello_at" in link.info else None

    return agent, await wait_until(ready, what="the agent's hello")


def session_id() -> str:
    return f"se_{secrets.token_hex(8)}"


async def tell(agent: AgentHandle, link: Any, sid: str, state: str = "active", **kw: Any) -> None:
    """HQ's word on a session, sent on the telemetry channel; wait until heard."""
    kw.setdefault("kind", "desktop")
    kw.setdefault("expires_at", datetime.now(UTC) + timedelta(minutes=10))
    kw.setdefault("consent_by", "root@till-3")
    frame = p.SessionInfo(session_id=sid, state=state, engineer=ENGINEER, ticket=TICKET, **kw)
    assert link.send(frame)
    assert agent.daemon is not None
    book = agent.daemon.sessions

    def heard() -> bool:
        known = book.get(sid)
        return known is not None and known.info == frame

    await wait_until(heard, what=f"{sid} {state} heard")


async def agent_cli(agent: AgentHandle, *args: str) -> tuple[int, str, str]:
    """`fieldlink-agent ARGS --config-dir DIR`, as its own process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent.cli",
        *args,
        "--config-dir",
        str(agent.dir.path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def screen(link: Any, sid: str) -> AsyncIterator[tuple[DesktopChannel, RfbClient]]:
    """HQ opens the machine's screen for `sid` and a viewer shakes hands."""
    channel = await open_desktop(link.conn, session_id=sid, ticket=TICKET, engineer=ENGINEER)
    try:
        viewer = RfbClient(channel.reader, channel.writer)
        await viewer.handshake()
        yield channel, viewer
    finally:
        channel.close()


async def settled(viewer: RfbClient) -> None:
    """Everything sent before has been read by the VNC server: RFB messages are
    handled in order, so once an update asked for after them has come back,
    they were handled (or never arrived)."""
    await viewer.screenshot()


async def status(channel: DesktopChannel, **expected: Any) -> p.DesktopStatus:
    """The agent's next status line, which must say `expected`."""
    async with asyncio.timeout(15):
        notice = await channel.next_notice()
    assert isinstance(notice, p.DesktopStatus), notice
    for key, value in expected.items():
        assert getattr(notice, key) == value, (key, notice)
    return notice


async def refused(link: Any, sid: str | None, **env: str) -> str:
    with pytest.raises(DesktopRefused) as caught:
        await open_desktop(
            link.conn,
            session_id=sid or "",
            ticket=env.get("ticket", TICKET),
            engineer=env.get("engineer", ENGINEER),
        )
    assert caught.value.failure
    return caught.value.reason


# --- seeing the screen --------------------------------------------------------------------


async def test_hq_sees_the_screen_through_the_agent(sqlite_hq, agent_factory, display):
    """A consented desktop session: HQ opens the channel over the agent's own
    connection and reads the screen's pixels (red); x11vnc holds no TCP or UDP
    socket at all; a notice shows on the screen while the stream is open, and
    x11vnc and the notice are gone once HQ closes it."""
    agent, link = await linked(sqlite_hq, agent_factory, display)
    sid = session_id()
    await tell(agent, link, sid)
    before = await display.windows()
    async with screen(link, sid) as (channel, viewer):
        assert channel.status.control is False and channel.status.notice is True
        assert viewer.init is not None
        assert (viewer.init.width, viewer.init.height) == (1280, 800)
        shot = await viewer.screenshot()
        assert shot.pixel(10, 10) == RED and shot.pixel(1279, 799) == RED
        [pid] = children_running("x11vnc")
        assert inet_sockets(pid) == []
        assert "-viewonly" in cmdline(pid)  # this session may never get control
        notices = await wait_until(lambda: new_windows(display, before), what="the notice")
        assert len(notices) == 1 and notices[0]["Absolute upper-left Y"] == 0
        assert notices[0]["Absolute upper-left X"] + notices[0]["Width"] >= 1278  # top right
        assert agent.daemon is not None and agent.daemon.sessions.channels(sid) == 1
    await wait_until(lambda: not children_running("x11vnc"), what="x11vnc gone")
    await wait_until(lambda: not children_running("xmessage"), what="the notice gone")
    assert agent.daemon.sessions.channels(sid) == 0


# --- view only, control -------------------------------------------------------------------


async def test_view_only_holds_at_the_agent_and_control_is_granted_at_the_machine(
    sqlite_hq, agent_factory, display
):
    """With `desktop_control = "ask"`, pointer events sent down the channel
    (by the viewer, and as raw bytes bypassing anything HQ might filter) do
    not move the X pointer; `consent --control` at the machine grants control
    (HQ is told on the channel) and the pointer moves; `--view-only` takes it
    back and it stays put again."""
    agent, link = await linked(sqlite_hq, agent_factory, display, desktop_control="ask")
    heard = spy_consent(sqlite_hq)
    sid = session_id()
    await tell(agent, link, sid, control=True)
    await display.run("xdotool", "mousemove", "5", "5")
    async with screen(link, sid) as (channel, viewer):
        assert channel.status.control is False and channel.status.by == ""
        [pid] = children_running("x11vnc")
        assert "-viewonly" not in cmdline(pid)  # control may come: the agent's filter holds
        viewer.pointer(600, 400)
        channel.writer.write(rfb.pointer_event(700, 300, 1) + rfb.key_event(0x61, True))
        await settled(viewer)
        assert await display.pointer() == (5, 5)

        code, out, err = await agent_cli(agent, "consent")
        assert code == 0, err
        assert "keyboard and mouse: yours until you grant them" in out
        assert "--control ID" in out

        code, out, err = await agent_cli(agent, "consent", "--control", sid)
        assert code == 0, err
        assert f"control granted: {ENGINEER} may use the keyboard and mouse" in out
        await status(channel, control=True, by=f"{ME} at this machine")
        await wait_until(lambda: ("control", sid) in heard, what="HQ told of the grant")
        viewer.pointer(600, 400)
        await wait_until(lambda: _at(display, (600, 400)), what="the pointer moved by the engineer")

        code, out, err = await agent_cli(agent, "consent", "--view-only", sid[:10])
        assert code == 0, err
        assert f"view only: {ENGINEER} can no longer use the keyboard and mouse" in out
        await status(channel, control=False, by=f"{ME} at this machine")
        await wait_until(lambda: ("view_only", sid) in heard, what="HQ told of the take-back")
        viewer.pointer(100, 100)
        channel.writer.write(rfb.pointer_event(150, 150))
        await settled(viewer)
        assert await display.pointer() == (600, 400)


def spy_consent(hq: HQHandle) -> list[tuple[str, str]]:
    """(action, session id) of every consent frame HQ's gateway hands on."""
    heard: list[tuple[str, str]] = []
    telemetry = hq.hq.parts.gateway.telemetry
    hooks = telemetry._hooks
    handler = hooks.on_consent

    async def spy(agent_id: str, frame: p.Consent) -> None:
        heard.append((frame.action, frame.session_id))
        await handler(agent_id, frame)

    telemetry._hooks = dataclasses.replace(hooks, on_consent=spy)
    return heard


async def new_windows(display: Display, before: list[Any]) -> list[Any]:
    return [w for w in await display.windows() if w not in before]


async def _at(display: Display, where: tuple[int, int]) -> bool:
    return await display.pointer() == where


async def test_policy_allow_gives_control_and_never_refuses_it(
    sqlite_hq, agent_factory, display, tmp_path
):
    """`allow`: a session that asked for control has it from the start. `never`
    (after a reload): the open stream loses it at once, HQ is told, and the
    machine refuses to grant it."""
    agent, link = await linked(sqlite_hq, agent_factory, display, desktop_control="allow")
    sid = session_id()
    await tell(agent, link, sid, control=True)
    async with screen(link, sid) as (channel, viewer):
        assert channel.status.control is True and channel.status.by == "policy"
        viewer.pointer(321, 123)
        await wait_until(lambda: _at(display, (321, 123)), what="the pointer moved")

        assert agent.daemon is not None
        policy = Policy(
            allow_desktop=True,
            shell_user=ME,
            desktop_display=display.name,
            desktop_xauthority=display.xauthority,
            desktop_control="never",
        )
        write_default(agent.dir.policy_file, policy)
        assert agent.daemon.reload_policy()
        await status(channel, control=False, by="policy")
        viewer.pointer(10, 10)
        await settled(viewer)
        assert await display.pointer() == (321, 123)
        code, _, err = await agent_cli(agent, "consent", "--control", sid)
        assert code == 1 and 'never gives control (desktop_control = "never")' in err


async def test_a_view_only_session_gets_viewonly_x11vnc_as_a_second_wall(display):
    """x11vnc started as the agent starts it for a session that may never get
    control (`-viewonly`) ignores pointer events sent straight to it, with no
    filter in between; without `-viewonly` the same bytes move the pointer."""
    await display.run("xdotool", "mousemove", "7", "7")
    for view_only, expected in ((True, (7, 7)), (False, (444, 222))):
        ours, theirs = socket.socketpair()
        argv = x11vnc_argv(display.name, display.xauthority, view_only=view_only, clipboard=False)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=theirs, stdout=theirs, stderr=asyncio.subprocess.DEVNULL
        )
        theirs.close()
        try:
            reader, writer = await asyncio.open_connection(sock=ours)
            viewer = RfbClient(reader, writer)
            await viewer.handshake()
            writer.write(rfb.pointer_event(444, 222))
            if view_only:
                await settled(viewer)
                assert await display.pointer() == expected
            else:
                await wait_until(lambda: _at(display, (444, 222)), what="the pointer moved")
            writer.close()
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


# --- refusals --------------------------------------------------------------------------------


async def test_the_agent_refuses_screens_outside_a_consented_desktop_session(
    sqlite_hq, agent_factory, display
):
    """Whatever HQ asks, the screen opens only inside an active desktop session
    named on the channel, for its ticket and engineer, that the site consented
    to (with `require_consent`), while the policy allows desktops; the reason
    comes back on the channel and nothing is started."""
    agent, link = await linked(sqlite_hq, agent_factory, display, require_consent=True)
    awaiting, denied, shell, unconsented, good = (session_id() for _ in range(5))
    await tell(agent, link, awaiting, "awaiting_consent")
    await tell(agent, link, denied, "denied", end_reason="denied by root@till-3 (machine)")
    await tell(agent, link, shell, kind="shell")
    await tell(agent, link, unconsented, consent_by=None)
    await tell(agent, link, good)
    cases = [
        (None, {}, "no session named"),
        (session_id(), {}, "HQ has not told this machine about session"),
        (awaiting, {}, "is awaiting consent, not active"),
        (denied, {}, "is denied, not active: denied by root@till-3 (machine)"),
        (shell, {}, "is a shell session, not a desktop one"),
        (unconsented, {}, "requires consent (require_consent = true) and nobody at the site"),
        (good, {"engineer": "mallory"}, "is eve's, not mallory's"),
        (good, {"ticket": "FL-8"}, "belongs to FL-7, not FL-8"),
    ]
    for sid, env, reason in cases:
        assert reason in await refused(link, sid, **env), reason
    assert not children_running("x11vnc") and not children_running("xmessage")

    # the policy turned off: refused, and an open stream stops at once
    async with screen(link, good) as (channel, _viewer):
        assert agent.daemon is not None
        write_default(agent.dir.policy_file, Policy(shell_user=ME))
        assert agent.daemon.reload_policy()
        async with asyncio.timeout(10):
            closed = await channel.next_notice()
        assert isinstance(closed, p.DesktopClosed) and closed.failure
        assert "no longer allows desktop sessions (allow_desktop = false)" in closed.reason
    assert "does not allow desktop sessions (allow_desktop = false)" in await refused(link, good)


async def test_x11vnc_that_cannot_open_the_display_says_why(sqlite_hq, agent_factory, tmp_path):
    """A display that is not there: the stream ends as a failure naming it."""
    need_x_programs()
    agent, link = await linked(sqlite_hq, agent_factory, None, desktop_display=":189")
    sid = session_id()
    await tell(agent, link, sid)
    try:
        channel = await open_desktop(link.conn, session_id=sid, ticket=TICKET, engineer=ENGINEER)
    except DesktopRefused as exc:
        reason = exc.reason
    else:
        async with asyncio.timeout(15):
            closed = await channel.next_notice()
        assert isinstance(closed, p.DesktopClosed) and closed.failure
        reason = closed.reason
    assert ":189" in reason, reason
    await wait_until(lambda: not children_running("x11vnc"), what="x11vnc gone")


# --- the site ends it ------------------------------------------------------------------------


async def test_ending_at_the_machine_drops_the_stream_at_once(sqlite_hq, agent_factory, display):
    """`consent --end`: the stream drops before HQ has said anything (the
    command is still waiting for HQ), x11vnc and the notice go, and no new
    stream opens for the session."""
    agent, link = await linked(sqlite_hq, agent_factory, display)
    sid = session_id()
    await tell(agent, link, sid)
    async with screen(link, sid) as (channel, viewer):
        await viewer.screenshot()
        ending = asyncio.create_task(agent_cli(agent, "consent", "--end", sid, "--wait", "20"))
        async with asyncio.timeout(15):
            closed = await channel.next_notice()
        assert isinstance(closed, p.DesktopClosed) and not closed.failure
        assert closed.reason == f"ended at this machine (by {ME})"
        assert not ending.done()  # HQ (which never heard of this session) has not answered
        assert await asyncio.wait_for(channel.reader.read(), 10) == b""  # dropped
        await wait_until(lambda: not children_running("x11vnc"), what="x11vnc gone")
        await wait_until(lambda: not children_running("xmessage"), what="the notice gone")
    code, _, err = await ending
    assert code == 0, err
    assert "ended at this machine" in await refused(link, sid)


async def test_the_notice_on_the_screen_ends_the_session(sqlite_hq, agent_factory, display):
    """The person at the screen presses the notice's button: the stream drops,
    the session is ended here and HQ is sent the end."""
    agent, link = await linked(sqlite_hq, agent_factory, display)
    sid = session_id()
    await tell(agent, link, sid)
    before = await display.windows()
    async with screen(link, sid) as (channel, _viewer):
        [notice] = await wait_until(lambda: new_windows(display, before), what="the notice")
        x = int(notice["Absolute upper-left X"]) + 20
        y = int(notice["Absolute upper-left Y"]) + int(notice["Height"]) - 12
        await display.run("xdotool", "mousemove", str(x), str(y), "click", "1")
        async with asyncio.timeout(15):
            closed = await channel.next_notice()
        assert isinstance(closed, p.DesktopClosed)
        assert closed.reason == "ended by the person at the screen" and not closed.failure
    assert agent.daemon is not None
    known = agent.daemon.sessions.get(sid)
    assert known is not None and known.ended_here == "at the screen"
    assert "ended at this machine (at the screen)" in await refused(link, sid)


# --- HQ's own session engine, consent at the machine -------------------------------------------


async def hq_desktop_session(hq: HQHandle, agent: AgentHandle) -> tuple[str, str]:
    """A desktop session requested through HQ's session engine (the API's
    `kind: desktop` is HQ's part, still to come): waiting for the site's
    consent, announced to the machine. Its id and ticket number."""
    from sqlalchemy import select

    from server.control import admin
    from server.store.models import Agent, Ticket

    async with hq.client(hq.admin_token) as api:
        ticket = await api.ok(
            "POST",
            "/api/v1/tickets",
            json={"title": "till frozen", "site": "shop-1", "agent_ids": [agent.agent_id]},
        )
    remote = hq.hq.parts.remote
    async with hq.sessions.begin() as session:
        row = await session.get(Agent, agent.agent_id)
        number = int(ticket["number"].split("-")[1])
        found = await session.scalar(select(Ticket).where(Ticket.number == number))
        assert row is not None and found is not None
        rs = await remote.request(
            session,
            agent=row,
            ticket=found,
            kind="desktop",
            reason="the till shows an error",
            max_minutes=30,
            requested_by=None,
            requested_by_name=ENGINEER,
            actor=admin.local_actor(),
        )
    await remote.push(rs)
    return rs.id, ticket["number"]


async def test_hq_session_denied_or_approved_at_the_machine(sqlite_hq, agent_factory, display):
    """The desktop kind joins HQ's consent machinery: a request denied with
    `consent --deny` is refused; one approved with `--approve` opens (red
    pixels, view only); `--end` ends it at HQ too."""
    agent, link = await linked(sqlite_hq, agent_factory, display, require_consent=True)
    assert agent.daemon is not None
    book = agent.daemon.sessions

    async def heard(sid: str, state: str) -> None:
        def check() -> bool:
            known = book.get(sid)
            return known is not None and known.info.state == state

        await wait_until(check, what=f"the machine hears {sid} is {state}")

    denied, ticket = await hq_desktop_session(sqlite_hq, agent)
    await heard(denied, "awaiting_consent")
    code, out, err = await agent_cli(agent, "consent")
    assert code == 0 and f"{ENGINEER} wants to see this screen for {ticket}" in out
    code, out, err = await agent_cli(agent, "consent", "--deny", denied)
    assert code == 0 and f"denied: {ENGINEER} may not see this screen" in out, (out, err)
    await heard(denied, "denied")
    with pytest.raises(DesktopRefused, match="is denied, not active"):
        await open_desktop(link.conn, session_id=denied, ticket=ticket, engineer=ENGINEER)

    approved, ticket = await hq_desktop_session(sqlite_hq, agent)
    await heard(approved, "awaiting_consent")
    code, out, err = await agent_cli(agent, "consent", "--approve", approved)
    assert code == 0 and f"approved: {ENGINEER} may see this screen" in out, (out, err)
    channel = await open_desktop(link.conn, session_id=approved, ticket=ticket, engineer=ENGINEER)
    try:
        viewer = RfbClient(channel.reader, channel.writer)
        await viewer.handshake()
        assert (await viewer.screenshot()).pixel(640, 400) == RED
        assert channel.status.control is False and channel.status.by == "view-only session"
        code, out, err = await agent_cli(agent, "consent", "--end", approved)
        assert code == 0 and f"ended: {ENGINEER}'s desktop session for {ticket} is over" in out
        async with asyncio.timeout(10):
            closed = await channel.next_notice()
        assert isinstance(closed, p.DesktopClosed)
    finally:
        channel.close()
    await heard(approved, "ended")


# --- the site's own VNC server ----------------------------------------------------------------


async def test_the_sites_own_vnc_server_on_a_loopback_address(sqlite_hq, agent_factory, display):
    """With `desktop_vnc_address` (and no display of ours: headless, no notice)
    the agent connects to the VNC server the site runs on this machine."""
    from tests.support import free_port

    port = free_port()
    server = await asyncio.create_subprocess_exec(
        "x11vnc", "-display", display.name, "-auth", display.xauthority,
        "-rfbport", str(port), "-localhost", "-nopw", "-forever", "-shared",
        "-noncache", "-norc", "-quiet", "-noipv6",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:

        async def listening() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            writer.close()
            return True

        await wait_until(listening, what="the site's VNC server listening")
        agent, link = await linked(
            sqlite_hq, agent_factory, None, desktop_vnc_address=f"127.0.0.1:{port}"
        )
        sid = session_id()
        await tell(agent, link, sid)
        async with screen(link, sid) as (channel, viewer):
            assert channel.status.notice is False
            assert (await viewer.screenshot()).pixel(100, 100) == RED
            viewer.pointer(50, 60)
            await settled(viewer)
            assert await display.pointer() != (50, 60)
    finally:
        server.kill()
        await server.wait()
