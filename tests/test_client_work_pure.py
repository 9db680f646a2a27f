"""The pure parts of the engineer CLI's ticket, KPI, session and file commands:
SLA badges, times and rates for people, command-line values, the ssh-like
escape, asciicast replay timing, what a waiting or ended session says, where
a file lands; and the terminal's raw mode on a real pseudo-terminal."""

from __future__ import annotations

import json
import os
import termios
from datetime import UTC, datetime, timedelta

import pytest

from server.client import cast, files, sessions, sessionview, tickets, ticketview
from server.client.commands import describe
from server.client.errors import ApiError, UsageError
from server.client.terminal import EscapeScanner, RawMode

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def at(minutes: float) -> str:
    return (NOW + timedelta(minutes=minutes)).isoformat()


def clock(state: str, due: float | None = None) -> dict[str, object]:
    return {"state": state, "due": None if due is None else at(due)}


@pytest.mark.parametrize(
    ("clocks", "label", "style"),
    [
        ({"ack": clock("running", 14), "resolve": clock("running", 480)}, "ok 14m left", "green"),
        ({"ack": clock("met"), "resolve": clock("warning", 130)}, "warning 2h10m left", "yellow"),
        (
            {"ack": clock("breached", -25), "resolve": clock("warning", 5)},
            "breached 25m ago",
            "bold red",
        ),
        ({"ack": clock("met"), "response": clock("paused")}, "paused", "blue"),
        ({"ack": clock("missed"), "resolve": clock("running", 60)}, "missed", "red"),
        ({"ack": clock("met"), "resolve": clock("met")}, "met", "dim green"),
        ({}, "-", ""),
    ],
)
def test_the_sla_badge_is_the_worst_clock(clocks, label, style):
    """Breached before missed before warning before paused before ok before met."""
    assert ticketview.sla_badge(clocks, NOW) == (label, style)


def test_times_and_rates_for_people():
    """Spans as s/m/h/d, compact ones for cells, shares as percentages."""
    assert [ticketview.span(s) for s in (None, 45, 600, 630, 3900, 90000)] == [
        "-",
        "45s",
        "10m",
        "10m 30s",
        "1h 05m",
        "1d 01h",
    ]
    assert [ticketview.short_span(s) for s in (45, 600, 7800, 100000)] == [
        "45s",
        "10m",
        "2h10m",
        "1d3h",
    ]
    assert [ticketview.rate(v) for v in (None, 0.5, 2 / 3, 1, 0.0, True)] == [
        "-",
        "50%",
        "66.7%",
        "100%",
        "0%",
        "-",
    ]


def test_kpi_rows_name_each_measure():
    """Counts, times as mean / median / p90 with their n, rates as %, missing as -."""
    stats = {"count": 2, "mean": 5400.0, "median": 3600.0, "p90": 7200.0}
    empty = {"count": 0, "mean": None, "median": None, "p90": None}
    rows = dict(
        ticketview.kpi_rows(
            {
                "tickets": 3,
                "resolved": 2,
                "time_to_acknowledge": stats,
                "time_to_first_response": empty,
                "time_to_resolve": stats,
                "sla_compliance": {"ack": 1.0, "response": None, "resolve": 0.5},
                "csat": 0.75,
                "alerts_per_ticket": 2.0,
                "self_served": 1,
                "deflection_rate": 0.25,
            }
        )
    )
    assert rows["tickets"] == "3"
    assert rows["self-served by the knowledge base"] == "1"
    assert rows["deflection rate (self-served / asked)"] == "25%"
    assert rows["time to acknowledge, mean / median / p90"] == "1h 30m / 1h 00m / 2h 00m (n=2)"
    assert rows["time to first response, mean / median / p90"] == "-"
    assert rows["SLA met: resolve"] == "50%" and rows["SLA met: first response"] == "-"
    assert rows["CSAT (ratings of 4-5)"] == "75%" and rows["alerts per alert ticket"] == "2.0"
    heading = tickets.kpi_heading({"from": "a", "to": "b", "site": "s", "group_by": "week"})
    assert heading == "KPIs for tickets created from a to before b on site s per week"


def test_timeline_events_in_words():
    """Each kind of event reads as what happened."""
    run = {
        "kind": "run",
        "internal": True,
        "body": "x",
        "data": {"name": "disk.usage", "agent_id": "ag_1", "status": "ok", "run_id": "rn_9"},
    }
    assert ticketview.event_text(run) == "disk.usage on ag_1: ok (result rn_9)"
    assert ticketview.event_label(run) == "run (internal)"
    state = {
        "kind": "state",
        "body": "RMA 4411",
        "data": {"from": "in_progress", "to": "waiting", "reason": "on_vendor"},
    }
    assert ticketview.event_text(state) == "in_progress -> waiting (on_vendor): RMA 4411"
    note = {"kind": "comment", "internal": True, "body": "toner?", "data": {}}
    assert (ticketview.event_label(note), ticketview.event_text(note)) == (
        "internal note",
        "toner?",
    )
    session = {
        "kind": "session",
        "internal": True,
        "body": "session active",
        "data": {"session_id": "se_1"},
    }
    assert ticketview.event_text(session) == "session active (session se_1)"
    rating = {"kind": "rating", "body": "quick", "data": {"score": 5}}
    assert ticketview.event_text(rating) == "5/5: quick"


def test_ticket_command_line_values():
    """--status, --reason, --code and FL-N are read as HQ spells them, or refused."""
    assert tickets.status_filter("open") == "open"
    assert tickets.status_filter("New, in-progress,new") == "new,in_progress"
    for bad in ("opne", "", "open,new"):
        with pytest.raises(UsageError):
            tickets.status_filter(bad)
    assert tickets.transition_body("wait", "vendor", "RMA 1", None) == {
        "action": "wait",
        "reason": "on_vendor",
        "note": "RMA 1",
    }
    with pytest.raises(UsageError, match="--reason"):
        tickets.transition_body("wait", None, None, None)
    for spelled in ("on site", "On-Site", "on_site", "site", " on  site "):
        assert tickets.wait_reason(spelled) == "on_site"
    with pytest.raises(UsageError, match="--reason"):
        tickets.wait_reason("on holiday")
    assert tickets.transition_body("resolve", None, "new cable", "fixed") == {
        "action": "resolve",
        "note": "new cable",
        "resolution_code": "fixed",
    }
    assert tickets.transition_body("reopen", "froze again", "twice", None)["note"] == (
        "froze again\ntwice"
    )
    with pytest.raises(UsageError, match="--code"):
        tickets.transition_body("close", None, None, "fixed")
    assert [tickets.ticket_ref(r) for r in ("fl-12", "12", "FL-3", "ti_ab")] == [
        "FL-12",
        "FL-12",
        "FL-3",
        "ti_ab",
    ]


def test_kpi_periods():
    """Dates are whole UTC days (--to includes its day), RFC 3339 as written,
    durations count back from now; anything else is refused."""
    assert tickets.time_bound("2026-11-01", end=False) == "2026-11-01T00:00:00Z"
    assert tickets.time_bound("2026-11-30", end=True) == "2026-12-01T00:00:00Z"
    assert tickets.time_bound("2026-11-01T08:30:00+02:00", end=False) == "2026-11-01T06:30:00Z"
    assert tickets.time_bound("2026-11-01T08:30:00", end=True) == "2026-11-01T08:30:00Z"
    assert tickets.time_bound("30d", end=False, now=NOW) == "2026-10-28T12:00:00Z"
    with pytest.raises(UsageError, match="a date"):
        tickets.time_bound("last tuesday", end=False)


def test_the_escape_ends_a_session_only_at_a_line_start():
    """`~.` after a newline (or first) ends; `~~` sends one `~`; other tildes pass."""
    scan = EscapeScanner()
    assert scan.feed(b"ls ~/x\r") == (b"ls ~/x\r", False)
    assert scan.feed(b"~~home\r") == (b"~home\r", False)
    assert scan.feed(b"~x") == (b"~x", False)
    assert scan.feed(b"\r~") == (b"\r", False)  # held: the next byte decides
    assert scan.feed(b".rest") == (b"", True)
    assert EscapeScanner().feed(b"~.") == (b"", True)


def test_recordings_replay_with_capped_idle_gaps():
    """Output events only, gaps cut to max_idle and divided by the speed."""
    lines = [
        {"version": 2, "width": 90, "height": 25, "fieldlink": {"ticket": "FL-1"}},
        [0.5, "o", "$ "],
        [0.7, "i", "ls\r"],
        [1.0, "o", "ls\r\n"],
        [1.5, "r", "100x30"],
        [31.0, "o", "late"],
    ]
    raw = "\n".join(json.dumps(line) for line in lines).encode() + b"\n"
    played = cast.parse(raw)
    assert played.size == (90, 25) and played.output() == "$ ls\r\nlate"
    assert list(cast.schedule(played.events, speed=2, max_idle=2)) == [
        (0.25, "$ "),
        (0.25, "ls\r\n"),
        (1.0, "late"),
    ]
    assert cast.play_time(played.events, speed=1, max_idle=2) == pytest.approx(3.0)
    for broken in (b"", b"not json\n", b'{"version": 1}\n', b'{"version": 2}\n[1, "o"]\n'):
        with pytest.raises(cast.CastError):
            cast.parse(broken)


def test_what_sessions_say():
    """Who must approve and by when; why it is over; the list's query."""
    waiting = {
        "id": "se_1",
        "state": "awaiting_consent",
        "hostname": "till-3",
        "expires_at": at(4.5),
    }
    line = sessionview.waiting_line(waiting, "shop-12", NOW)
    assert "someone at till-3 (site shop-12)" in line
    assert "`fieldlink-agent consent --approve se_1`" in line
    assert "a site technician of shop-12 must approve; 4m 30s left" in line
    denied = {"id": "se_1", "state": "denied", "end_reason": "denied by ann (user)"}
    assert sessionview.outcome_line(denied) == "session se_1 was denied: denied by ann (user)"
    ended = {"id": "se_2", "state": "ended", "end_reason": "done", "ended_by": "bob"}
    assert sessionview.outcome_line(ended) == "session se_2 ended: done (by bob)"
    assert sessionview.consent({"consent_by": "ann", "consent_via": "machine"}) == "ann (machine)"
    assert sessionview.engineer({"origin": "site", "requested_by": ""}) == "(site request)"

    spec = sessions.ListSpec("12", False, True, None, 100, False)
    assert sessions.list_params(spec) == {
        "limit": "100",
        "ticket": "FL-12",
        "state": "requested",
        "origin": "site",
    }
    with pytest.raises(UsageError):
        sessions.list_params(sessions.ListSpec(None, True, True, None, 100, False))
    assert sessions.term_name({"TERM": "screen-256color"}) == "screen-256color"
    assert sessions.term_name({"TERM": "dumb"}) == sessions.term_name({}) == "xterm-256color"
    assert sessions.term_name({"TERM": "x;rm -rf"}) == "xterm-256color"


def test_where_files_land(tmp_path):
    """A local directory keeps the remote name, `-` is stdout; a remote `/` keeps ours."""
    assert files.local_target(str(tmp_path), "/var/log/app.log") == tmp_path / "app.log"
    assert files.local_target(str(tmp_path / "x.log"), "/var/log/app.log") == tmp_path / "x.log"
    assert files.local_target("-", "/var/log/app.log") is None
    assert files.remote_target("/etc/cups/", "./printers.conf") == "/etc/cups/printers.conf"
    assert files.remote_target("/etc/cups/p.conf", "a") == "/etc/cups/p.conf"
    with pytest.raises(UsageError, match="absolute"):
        files.remote_target("etc/cups", "a")


def test_conflicts_name_what_is_allowed():
    """A 409 on a ticket says what is allowed; a tampered recording says what that means."""
    err = ApiError(409, "conflict", "cannot close a ticket that is new", allowed=["ack", "start"])
    assert describe(err).splitlines()[1] == "  allowed now: ack, start"
    said = ApiError(409, "conflict", "cannot x; allowed: ack", allowed=["ack"])
    assert describe(said) == "fieldlink: cannot x; allowed: ack"
    tampered = describe(ApiError(409, "recording_tampered", "recording integrity check failed"))
    assert "does not verify" in tampered
    step_up = describe(ApiError(401, "step_up_required", "a TOTP code is needed"))
    assert "--totp CODE" in step_up and "fieldlink login" not in step_up


def test_raw_mode_is_undone_on_every_way_out():
    """On a real pseudo-terminal: raw inside the `with`, as before after it, also
    when the body raises; a descriptor that is no terminal is left alone."""
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        with RawMode(slave):
            assert not termios.tcgetattr(slave)[3] & (termios.ICANON | termios.ECHO)
        assert termios.tcgetattr(slave) == before
        with pytest.raises(RuntimeError), RawMode(slave):
            raise RuntimeError("boom")
        assert termios.tcgetattr(slave) == before
        read_end, write_end = os.pipe()
        with RawMode(read_end):
            pass
        os.close(read_end)
        os.close(write_end)
    finally:
        os.close(master)
        os.close(slave)
