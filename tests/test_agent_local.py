"""The agent's local side without HQ: what the spool remembers of requests and
ticket lists, the local socket's request format, the socket path in the
config, and how the commands word their answers."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta

import pytest

from agent import staff
from agent.config import AgentConfig, ConfigDir
from agent.local import (
    HelpAnswer,
    RateAnswer,
    Refusal,
    RequestInfo,
    TicketsAnswer,
    decode_request,
)
from agent.spool import Asked, Spool
from shared import protocol as p

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


def frame(seq: int, dropped: int) -> bytes:
    return f"{seq}:{dropped}\n".encode()


def test_requests_are_waiting_then_answered(tmp_path):
    """A spooled request waits until HQ's receipt is recorded; then it is answered."""
    spool = Spool(tmp_path / "s.db", 100)
    first = spool.append("help", frame, Asked("ana", "printer prints blank"))
    spool.append("health", frame)
    second = spool.append("rating", frame, Asked("ana", "rating FL-3 5/5"))
    assert (first.seq, second.seq) == (1, 1)  # each kind counts on its own
    rows = spool.requests()
    assert [(r.kind, r.state, r.user, r.summary) for r in rows] == [
        ("help", "waiting", "ana", "printer prints blank"),
        ("rating", "waiting", "ana", "rating FL-3 5/5"),
    ]
    assert spool.answer("help", 1, ok=True, ticket="FL-12", message="ticket FL-12 opened")
    assert not spool.answer("help", 99, ok=True, ticket="FL-13", message="")
    spool.ack("help", [1])
    [help_row, rating_row] = spool.requests()
    assert (help_row.state, help_row.ok, help_row.ticket) == ("answered", True, "FL-12")
    assert rating_row.state == "waiting"
    spool.close()
    assert [r.state for r in Spool(tmp_path / "s.db", 100).requests()] == ["answered", "waiting"]


def test_a_full_spool_drops_health_before_requests(tmp_path):
    """Past the bound, health reports go first; a request not answered and no
    longer spooled shows as lost."""
    spool = Spool(tmp_path / "s.db", 10)
    spool.append("help", frame, Asked("ana", "till frozen"))
    for _ in range(12):
        spool.append("health", frame)
    kinds = [f.kind for f in spool.pending()]
    assert kinds.count("help") == 1 and len(kinds) == 10
    assert spool.stats().dropped == 3
    assert [r.state for r in spool.requests()] == ["waiting"]
    for _ in range(10):  # nothing but requests left to drop
        spool.append("rating", frame, Asked("ana", "rating"))
    assert spool.requests()[0].state == "lost"


def test_the_ticket_list_survives_a_restart(tmp_path):
    """HQ's last ticket list and when it came are kept in the spool."""
    spool = Spool(tmp_path / "s.db", 100)
    assert spool.load_tickets() is None
    spool.save_tickets('{"type": "tickets", "items": []}', 1700000000.5)
    spool.close()
    assert Spool(tmp_path / "s.db", 100).load_tickets() == (
        '{"type": "tickets", "items": []}',
        1700000000.5,
    )


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        (b"{", "one JSON object per line"),
        (b'"help"', "a JSON object"),
        (b'{"op": "reboot"}', "does not match any of the expected tags"),
        (b'{"op": "status", "user": "root"}', "status.user: Extra inputs are not permitted"),
        (b'{"op": "help", "text": "\\n \\t"}', "say what the problem is"),
        (b'{"op": "help", "text": "x", "wait": 600}', "help.wait"),
        (b'{"op": "rate", "ticket": "12", "score": 3}', "rate.ticket"),
        (b'{"op": "rate", "ticket": "FL-1", "score": 0}', "rate.score"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(line, needle):
    """Each malformed request line is refused as bad_request, naming what is wrong."""
    with pytest.raises(Refusal) as caught:
        decode_request(line)
    assert caught.value.code == "bad_request" and needle in caught.value.message


def test_good_requests_decode():
    """Requests decode to their models with defaults filled in."""
    help_request = decode_request(b'{"op": "help", "text": "scanner dead", "assist": true}')
    assert help_request.model_dump() == {
        "op": "help",
        "text": "scanner dead",
        "assist": True,
        "wait": 10.0,
        "solved_by": None,
    }
    assert decode_request(b'{"op": "tickets"}').op == "tickets"


def _config(**kw: object) -> AgentConfig:
    return AgentConfig(
        agent_id="ag_1",
        site="shop-1",
        hq_url="https://hq:8443",
        hq_fingerprint="ab",
        ssh_host="hq",
        ssh_port=8022,
        hq_public_key="ssh-ed25519 AAAA",
        **kw,
    )


def test_socket_path_and_group_in_the_config(tmp_path):
    """The socket defaults to DIR/agent.sock; a relative local_socket is inside
    DIR; unset keys are left out of config.toml and read back unset."""
    cdir = ConfigDir(tmp_path / "agent")
    assert cdir.socket_path(_config()) == tmp_path / "agent" / "agent.sock"
    assert cdir.socket_path(_config(local_socket="run/a.sock")) == tmp_path / "agent/run/a.sock"
    assert cdir.socket_path(_config(local_socket="/run/fl.sock")).as_posix() == "/run/fl.sock"
    cdir.save(_config())
    assert "local_group" not in tomllib.loads(cdir.config_file.read_text())
    assert cdir.load().local_group is None
    cdir.save(_config(local_group="staff"))
    assert cdir.load().local_group == "staff"


@pytest.mark.parametrize(
    ("text", "number"),
    [("FL-12", "FL-12"), ("fl-7", "FL-7"), ("42", "FL-42"), ("FL-", None), ("FX-1", None)],
)
def test_ticket_numbers_are_normalised(text, number):
    """`rate` takes FL-N in any case, or the bare number."""
    assert staff.ticket_number(text) == number


def test_help_answers_are_worded_for_people():
    """Opened, refused, unreachable and slow: what the person reads and the exit status."""
    opened = HelpAnswer(seq=1, state="answered", connected=True, ok=True, ticket="FL-12")
    lines, code = staff.help_lines(opened, 10)
    assert code == 0 and lines[0].startswith("Your request is ticket FL-12.")
    refused = HelpAnswer(seq=1, state="answered", connected=True, ok=False, message="no")
    assert staff.help_lines(refused, 10) == (["HQ did not accept your request: no"], 1)
    lines, code = staff.help_lines(HelpAnswer(seq=1, state="queued", connected=False), 10)
    assert code == 0 and lines[0] == (
        "HQ is unreachable right now; your request is saved on this machine and will be "
        "sent when the connection returns."
    )
    lines, code = staff.help_lines(HelpAnswer(seq=1, state="queued", connected=True), 10)
    assert code == 0 and lines[0].startswith("HQ did not answer within 10 s;")
    rated = RateAnswer(seq=2, state="answered", connected=True, ok=True, message="thank you: x")
    assert staff.rate_lines(rated, 10) == (["Thank you: x"], 0)


def test_ticket_list_shows_hq_list_and_what_is_not_sent_yet():
    """The list names its age, invites a rating where due, and lists requests
    opened since, still waiting, or lost."""
    brief = p.TicketBrief(
        number="FL-3",
        title="printer prints blank",
        status="resolved",
        priority="P3",
        updated_at=NOW - timedelta(hours=1),
        assignee="lee",
        requested_here=True,
    )

    def req(state: str, **kw: object) -> RequestInfo:
        return RequestInfo(
            kind="help",
            seq=len(state),
            user="ana",
            summary=f"{state} one",
            asked_at=NOW - timedelta(minutes=5),
            state=state,
            **kw,
        )

    answer = TicketsAnswer(
        connected=False,
        received_at=NOW - timedelta(minutes=10),
        tickets=[brief],
        requests=[
            req("answered", ok=True, ticket="FL-3"),
            req("answered", ok=True, ticket="FL-4"),
            req("waiting"),
            req("lost"),
        ],
    )
    text = "\n".join(staff.tickets_lines(answer, NOW))
    assert "HQ is unreachable right now; its last list of tickets" in text
    assert "10 minutes ago" in text
    assert "(rate it: fieldlink-agent rate FL-3 1-5)" in text
    assert "Opened since that list:\n  FL-4" in text
    assert "Not yet sent to HQ" in text and "waiting one" in text
    assert "Lost before HQ answered" in text and "lost one" in text
    never = TicketsAnswer(connected=True, received_at=None, tickets=[], requests=[])
    assert staff.tickets_lines(never, NOW) == ["HQ has not sent this machine's tickets yet."]
