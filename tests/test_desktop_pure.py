"""Desktop sessions, the pure parts: the policy's desktop keys, the wire
frames, who has control, the session book's grants, x11vnc's and the
notice's command lines, and what people at the machine read."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.desktop import control_now, input_possible
from agent.local import ConsentAnswer, SessionView
from agent.policy import Policy, PolicyError, parse_policy, template, vnc_target
from agent.screen import notice_argv, notice_text, x11vnc_argv, x11vnc_complaint
from agent.sessions import Grant, SessionBook
from agent.staff import consent_answer_lines, consent_list_lines, doing, session_line
from shared import protocol as p

NOW = datetime(2030, 5, 3, 12, 0, tzinfo=UTC)
SID = "se_0123456789abcdef"


def info(**kw: Any) -> p.SessionInfo:
    base: dict[str, Any] = {
        "session_id": SID,
        "kind": "desktop",
        "state": "active",
        "engineer": "alice",
        "ticket": "FL-12",
        "consent_by": "root@till-3",
        "expires_at": NOW + timedelta(minutes=30),
    }
    return p.SessionInfo(**{**base, **kw})


def desktop(**kw: Any) -> Policy:
    kw.setdefault("allow_desktop", True)
    kw.setdefault("desktop_display", ":0")
    return Policy(**kw)


# --- the policy ------------------------------------------------------------------------------


def test_desktop_defaults_are_off_and_ask():
    """By default no desktops; if allowed, control must be asked for, no clipboard."""
    pol = Policy()
    assert not pol.allow_desktop and pol.desktop_control == "ask" and not pol.desktop_clipboard
    assert (pol.desktop_display, pol.desktop_xauthority, pol.desktop_vnc_address) == ("", "", "")
    assert pol.summary().desktop is None
    assert "desktop" not in json.loads(pol.summary().model_dump_json())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("allow_desktop = true\n", "allow_desktop = true needs a screen"),
        ('desktop_display = "till:0"\n', "is not a local X display"),
        ('desktop_display = "0"\n', "is not a local X display"),
        ('desktop_display = ":0.a"\n', "is not a local X display"),
        ('desktop_xauthority = "home/x/.Xauthority"\n', "is not an absolute path"),
        ('desktop_vnc_address = "10.0.0.5:5900"\n', "is not on this machine"),
        ('desktop_vnc_address = "till-3:5900"\n', "is not on this machine"),
        ('desktop_vnc_address = "0.0.0.0:5900"\n', "is not on this machine"),
        ('desktop_vnc_address = "::1:5900"\n', "in brackets"),
        ('desktop_vnc_address = "127.0.0.1"\n', "is not HOST:PORT"),
        ('desktop_vnc_address = "127.0.0.1:70000"\n', "is not HOST:PORT"),
        ('desktop_vnc_address = "unix:run/vnc.sock"\n', "is not an absolute path"),
        ('desktop_control = "sometimes"\n', "desktop_control: Input should be 'never', 'ask'"),
        ('desktop_clipboard = "yes"\n', "desktop_clipboard: Input should be a valid boolean"),
    ],
)
def test_bad_desktop_keys_are_refused_at_load(text, message):
    """A screen elsewhere, a display on another host, a typo: refused with the key."""
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.toml")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:5900", "127.0.0.1:5900"),
        ("127.1.2.3:5901", "127.1.2.3:5901"),
        ("localhost:5900", "127.0.0.1:5900"),
        ("[::1]:5900", "[::1]:5900"),
        ("unix:/run/wayvnc.sock", "unix:/run/wayvnc.sock"),
    ],
)
def test_local_vnc_addresses(address, expected):
    assert str(vnc_target(address)) == expected
    assert desktop(desktop_vnc_address=address, desktop_display="").allow_desktop


def test_desktop_keys_round_trip_and_tell_hq():
    """The written file parses back with every desktop key; HQ's summary says
    what it needs (control mode, clipboard, where the screen comes from, notice)."""
    pol = desktop(
        desktop_control="allow",
        desktop_xauthority="/run/user/1000/gdm/Xauthority",
        desktop_vnc_address="[::1]:5901",
        desktop_clipboard=True,
    )
    assert parse_policy(template(pol)) == pol
    assert pol.summary().desktop == p.DesktopSummary(
        control="allow", clipboard=True, source="vnc", notice=True
    )
    headless = desktop(desktop_display="", desktop_vnc_address="127.0.0.1:5900")
    assert headless.summary().desktop == p.DesktopSummary(
        control="ask", clipboard=False, source="vnc", notice=False
    )
    assert desktop().summary().desktop == p.DesktopSummary(
        control="ask", clipboard=False, source="x11", notice=True
    )


# --- the wire ----------------------------------------------------------------------------------


def test_session_frames_stay_readable_by_agents_that_predate_desktops():
    """Control fields are left out of a frame unless set, so a shell session's
    frame is what older agents know; a desktop's carries them."""
    shell = json.loads(p.encode(info(kind="shell")))
    assert "control" not in shell and "control_by" not in shell
    frame = json.loads(p.encode(info(control=True, control_by="tech-ann")))
    assert frame["control"] is True and frame["control_by"] == "tech-ann"
    assert p.decode_hq_frame(p.encode(info(control=True))) == info(control=True)


def test_control_answers_are_consent_frames():
    for action in ("control", "view_only"):
        frame = p.Consent(seq=1, session_id=SID, action=action, user="maria")
        assert p.decode_agent_frame(p.encode(frame)) == frame


def test_desktop_notices_decode():
    """The channel's stderr lines: status and closed, nothing else."""
    status = p.DesktopStatus(session_id=SID, control=True, clipboard=False, by="maria")
    closed = p.DesktopClosed(session_id=SID, reason="ended", failure=False)
    assert p.decode_desktop_notice(p.encode(status)) == status
    assert p.decode_desktop_notice(p.encode(closed)) == closed
    with pytest.raises(p.FrameError):
        p.decode_desktop_notice(b'{"type": "desktop_status", "session_id": "x"}')
    with pytest.raises(p.FrameError):
        p.decode_desktop_notice(p.encode(p.Ack(kind="health", seqs=[1])))


# --- who has control ----------------------------------------------------------------------------

HERE = Grant(True, "maria at this machine", True)
TAKEN = Grant(False, "maria at this machine", True)
VIA_HQ = Grant(True, "tech-ann", False)


@pytest.mark.parametrize(
    ("mode", "asked", "grant", "expected"),
    [
        ("never", True, None, (False, "policy")),
        ("never", True, HERE, (False, "policy")),  # no grant beats the policy
        ("ask", False, HERE, (False, "view-only session")),
        ("allow", False, None, (False, "view-only session")),
        ("ask", True, None, (False, "")),  # nobody granted it yet
        ("ask", True, HERE, (True, "maria at this machine")),
        ("ask", True, VIA_HQ, (True, "tech-ann")),
        ("ask", True, TAKEN, (False, "maria at this machine")),
        ("allow", True, None, (True, "policy")),
        ("allow", True, TAKEN, (False, "maria at this machine")),
    ],
)
def test_control_now(mode, asked, grant, expected):
    """Policy `never` and view-only sessions never; otherwise the latest grant,
    and with none the policy (`allow` yes, `ask` no)."""
    pol = desktop(desktop_control=mode)
    assert control_now(pol, info(control=asked), grant) == expected
    assert input_possible(pol, info(control=asked)) == (mode != "never" and asked)


class FakeDesktop:
    kind = "desktop"

    def __init__(self) -> None:
        self.changes = 0
        self.stopped: list[str] = []

    def stop(self, reason: str, *, failure: bool = False) -> None:
        self.stopped.append(reason)

    def control_changed(self) -> None:
        self.changes += 1


async def test_the_latest_decision_on_control_wins():
    """A grant at the machine and HQ's word take turns by time; HQ's same word
    re-sent (after a reconnect) is no new decision and does not undo one
    taken here; open channels hear every change."""
    book = SessionBook()
    chan = FakeDesktop()
    book.update(info(control=True))
    book.attach(SID, chan)
    assert book.grant(SID) is None
    book.grant_here(SID, True, "maria at this machine")
    assert book.grant(SID) == HERE and chan.changes == 1
    book.update(info(control=True, control_by="tech-ann"))  # the site, through HQ
    assert book.grant(SID) == VIA_HQ and chan.changes == 2
    book.grant_here(SID, False, "maria at this machine")
    assert book.grant(SID) == TAKEN
    book.reset_live()  # a new telemetry channel: HQ re-sends what it said
    book.update(info(control=True, control_by="tech-ann"))
    assert book.grant(SID) == TAKEN  # not re-granted by the same old word
    book.update(info(control=True, control_by=None))  # HQ records the take-back
    assert book.grant(SID) == Grant(False, "HQ", False)
    # a shell session's frames never touch grants
    book.update(info(session_id="se_other", kind="shell"))
    assert book.grant("se_other") is None


async def test_stop_now_stops_only_that_kind():
    book = SessionBook()
    book.update(info())
    chan, other = FakeDesktop(), FakeDesktop()
    other.kind = "files"
    book.attach(SID, chan)
    book.attach(SID, other)
    assert book.stop_now(SID, "desktop", "ended here") == 1
    assert chan.stopped == ["ended here"] and other.stopped == []


# --- command lines -----------------------------------------------------------------------------


def test_x11vnc_listens_nowhere_and_takes_no_orders():
    """x11vnc serves the one socket it is given: no port, no rc file, no
    remote control or reverse connections from the display, no commands;
    -viewonly and -nosel where the session may not get them."""
    argv = x11vnc_argv(":0", "", view_only=True, clipboard=False)
    assert argv[:4] == ["x11vnc", "-inetd", "-display", ":0"]
    for flag in ("-nopw", "-once", "-norc", "-noremote", "-novncconnect", "-nocmds"):
        assert flag in argv
    assert argv[argv.index("-rfbport") + 1] == "0"
    assert "-viewonly" in argv and "-nosel" in argv and "-auth" not in argv
    for flag in ("-forever", "-shared", "-listen", "-http", "-connect", "-reflect"):
        assert flag not in argv
    argv = x11vnc_argv(":1", "/run/xauth", view_only=False, clipboard=True)
    assert argv[argv.index("-auth") + 1] == "/run/xauth"
    assert "-viewonly" not in argv and "-nosel" not in argv


def test_x11vnc_complaint_names_the_failure():
    text = (
        "\n07/12/2026 21:35:23 ***************************************\n"
        "07/12/2026 21:35:23 *** XOpenDisplay failed (:77)\n\n*** x11vnc was unable to open\n"
    )
    assert x11vnc_complaint(text) == "XOpenDisplay failed (:77)"
    assert x11vnc_complaint("just this\n") == "just this"
    assert x11vnc_complaint("") == ""


def test_the_notice_says_who_and_whether_they_may_touch():
    text = notice_text(info(), control=False)
    assert "alice from HQ is looking at this screen (FL-12)" in text
    assert "only watch" in text and text.isascii()
    assert "can use the keyboard and mouse" in notice_text(info(), control=True)
    argv = notice_argv(text)
    assert argv[0] == "xmessage" and argv[-1] == text
    assert "*overrideRedirect: true" in argv and "End the session now:10" in argv


# --- what people at the machine read ------------------------------------------------------------


def view(**kw: Any) -> SessionView:
    base: dict[str, Any] = {
        "id": SID,
        "kind": "desktop",
        "state": "active",
        "origin": "hq",
        "engineer": "alice",
        "ticket": "FL-12",
        "started_at": NOW,
        "expires_at": NOW + timedelta(minutes=30),
        "heard_at": NOW,
        "control_asked": True,
        "control": False,
        "control_by": "",
    }
    return SessionView(**{**base, **kw})


def test_desktop_sessions_in_the_consent_list():
    """Who wants to see the screen, who has keyboard and mouse, and how to grant them."""
    waiting = view(id="se_1", state="awaiting_consent", control_asked=False)
    answer = ConsentAnswer(
        action="list", connected=True, state="listed", sessions=[waiting, view()]
    )
    lines = consent_list_lines(answer, NOW)
    text = "\n".join(lines)
    assert "alice wants to see this screen for FL-12" in text
    assert "keyboard and mouse: yours until you grant them" in text
    assert "`fieldlink-agent consent --control ID`" in text and "--view-only ID" in text
    granted = session_line(view(control=True, control_by="maria at this machine"), NOW)
    assert "keyboard and mouse: theirs too (granted by maria at this machine)" in granted
    assert "view only" in session_line(view(control_asked=False), NOW)
    assert doing("desktop", control=True) == "see and control this screen"


def test_control_answers_read_plainly():
    granted = ConsentAnswer(
        action="control", connected=True, state="applied", session=view(control=True)
    )
    [line] = consent_answer_lines(granted, NOW)
    assert line.startswith("control granted: alice may use the keyboard and mouse")
    assert f"--view-only {SID}" in line
    taken = ConsentAnswer(action="view_only", connected=False, state="applied", session=view())
    lines = consent_answer_lines(taken, NOW)
    assert lines[0] == (
        "view only: alice can no longer use the keyboard and mouse on this screen (FL-12)"
    )
    assert "HQ is unreachable" in lines[1]
