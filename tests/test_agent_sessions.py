"""The agent's session book and the pure parts around it: the admission rule,
path confinement for file transfer, and what people at the machine read."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.files import Refused, confine, root_of
from agent.local import ConsentAnswer, SessionView
from agent.sessions import Known, SessionBook, refusal
from agent.staff import clock, consent_answer_lines, consent_list_lines, offer_lines
from shared import protocol as p

NOW = datetime(2030, 5, 3, 12, 0, tzinfo=UTC)
SID = "se_0123456789abcdef"
ENV = {p.SESSION_ENV: SID, p.TICKET_ENV: "FL-12", p.ENGINEER_ENV: "alice"}


def info(**kw: Any) -> p.SessionInfo:
    base: dict[str, Any] = {
        "session_id": SID,
        "kind": "shell",
        "state": "active",
        "engineer": "alice",
        "ticket": "FL-12",
        "expires_at": NOW + timedelta(minutes=30),
    }
    return p.SessionInfo(**{**base, **kw})


@pytest.mark.parametrize(
    ("known", "kind", "env", "expected"),
    [
        (Known(info(), 0), "shell", ENV, None),
        (Known(info(kind="files"), 0), "files", ENV, None),
        (Known(info(expires_at=None), 0), "shell", ENV, None),
        (Known(info(), 0), "shell", {p.SESSION_ENV: SID}, None),  # ticket, engineer optional
        (None, "shell", ENV, "HQ has not told this machine about session"),
        (Known(info(state="awaiting_consent"), 0), "shell", ENV, "is awaiting consent"),
        (Known(info(state="requested"), 0), "shell", ENV, "is requested, not active"),
        (
            Known(info(state="ended", end_reason="bye"), 0),
            "shell",
            ENV,
            "is ended, not active: bye",
        ),
        (Known(info(), 0, ended_here="by root"), "shell", ENV, "was ended at this machine"),
        (Known(info(kind="files"), 0), "shell", ENV, "is a files session, not a shell one"),
        (Known(info(expires_at=NOW), 0), "shell", ENV, "reached its end time"),
        (Known(info(), 0), "shell", {**ENV, p.TICKET_ENV: "FL-13"}, "belongs to FL-12"),
        (Known(info(), 0), "shell", {**ENV, p.ENGINEER_ENV: "bob"}, "is alice's, not bob's"),
    ],
)
def test_admission_rule(known, kind, env, expected):
    """A channel opens only for an active session of its kind, in time, named on
    the channel, for the same ticket and engineer, and not ended here."""
    found = refusal(SID, known, kind, env, NOW)
    if expected is None:
        assert found is None
    else:
        assert found is not None and expected in found


@pytest.mark.parametrize(
    ("consent_by", "origin", "refused"),
    [
        (None, "hq", True),  # HQ asked nobody
        ("nobody", "hq", True),  # a site that lets silence mean yes
        ("root@till-3", "hq", False),  # approved at the machine
        ("tech-ann", "hq", False),  # approved by the site's technician
        ("maria@till-3", "site", False),  # the site asked for it
    ],
)
def test_the_machines_consent_floor(consent_by, origin, refused):
    """With `require_consent` here, an active session nobody at the site
    consented to is refused, whatever HQ decided; without it, HQ's word does."""
    known = Known(info(consent_by=consent_by, origin=origin), 0)
    found = refusal(SID, known, "shell", ENV, NOW, require_consent=True)
    if refused:
        assert found is not None and "policy requires consent (require_consent = true)" in found
    else:
        assert found is None
    assert refusal(SID, known, "shell", ENV, NOW, require_consent=False) is None


def test_a_channel_must_name_its_session():
    assert refusal("", Known(info(), 0), "shell", {}, NOW) == (
        "no session named: the channel must carry FIELDLINK_SESSION"
    )


async def test_an_end_at_the_machine_survives_hq_resending_active():
    """After `consent --end`, HQ's re-sent `active` (it has not read the end yet)
    does not let channels in again, also across a new telemetry channel."""
    book = SessionBook()
    book.update(info(expires_at=datetime.now(UTC) + timedelta(minutes=5)))
    assert book.refusal(SID, "shell", ENV) is None
    book.end_here(SID, "by root")
    book.reset_live()
    book.update(info(expires_at=datetime.now(UTC) + timedelta(minutes=5)))
    assert "ended at this machine (by root)" in (book.refusal(SID, "shell", ENV) or "")
    book.stop_all("done")


async def test_find_by_prefix_and_ticket():
    book = SessionBook()
    book.update(info(session_id="se_aaaa1111", state="awaiting_consent"))
    book.update(info(session_id="se_aaaa2222", state="requested", origin="site", ticket="FL-3"))
    assert [k.info.session_id for k in book.find("se_aaaa1")] == ["se_aaaa1111"]
    assert [k.info.session_id for k in book.find("aaaa2")] == ["se_aaaa2222"]
    assert len(book.find("aaaa")) == 2 and book.find("zz") == []
    found = book.for_ticket("FL-3")
    assert found is not None and found.info.session_id == "se_aaaa2222"
    assert book.for_ticket("FL-12") is None  # HQ's own request, not the site's
    book.reset_live()
    assert book.all() == []


class _Channel:
    kind = "shell"

    def __init__(self) -> None:
        self.stopped: list[tuple[str, bool]] = []

    def stop(self, reason: str, *, failure: bool = False) -> None:
        self.stopped.append((reason, failure))


async def test_the_book_stops_channels_when_the_session_ends():
    """HQ's end, the site's end and a policy change each stop the open channels."""
    book = SessionBook()
    book.update(info(expires_at=datetime.now(UTC) + timedelta(minutes=5)))
    first = _Channel()
    book.attach(SID, first)
    book.update(info(state="ended", end_reason="ended by the engineer"))
    assert first.stopped == [("HQ ended the session (ended by the engineer)", False)]

    book.update(info(session_id="se_2", expires_at=datetime.now(UTC) + timedelta(minutes=5)))
    second = _Channel()
    book.attach("se_2", second)
    book.end_here("se_2", "by root")
    assert second.stopped == [("ended at this machine (by root)", False)]

    third = _Channel()
    book.update(info(session_id="se_3", expires_at=datetime.now(UTC) + timedelta(minutes=5)))
    book.attach("se_3", third)
    book.stop_kind("shell", "no shells any more")
    assert third.stopped == [("no shells any more", True)]
    book.stop_all("done")


# --- file roots -------------------------------------------------------------------------


def test_confine_follows_symlinks_and_dotdot(tmp_path):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "f").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "in").symlink_to(root / "f")
    (root / "out").symlink_to(outside)
    (root / "dangling").symlink_to(outside / "missing")
    roots = [str(root)]

    assert confine(str(root / "f"), roots) == str(root / "f")
    assert confine(str(root / "in"), roots) == str(root / "f")
    assert confine(str(root / "d" / ".." / "f"), roots) == str(root / "f")
    assert confine(str(root / "new.txt"), roots) == str(root / "new.txt")
    assert confine("f", roots) == str(root / "f")  # relative: from the first root
    assert confine(str(root / "out"), roots, follow=False) == str(root / "out")
    for path in (
        str(root / ".." / "outside"),
        str(root / "out"),
        str(root / "out" / "x"),
        str(root / "dangling"),
        "/etc/passwd",
        str(tmp_path / "root-sibling"),
        "bad\x00path",
    ):
        with pytest.raises(Refused):
            confine(path, roots)
    with pytest.raises(Refused):
        confine(str(root / "out" / "x"), roots, follow=False)
    with pytest.raises(Refused, match="no file roots"):
        confine(str(root / "f"), [])
    assert root_of(str(root / "f"), roots) == os.path.realpath(root)
    assert root_of(str(tmp_path / "rootx"), roots) is None


# --- what the person at the machine reads ------------------------------------------------------


def view(**kw: Any) -> SessionView:
    base: dict[str, Any] = {
        "id": SID,
        "kind": "shell",
        "state": "active",
        "origin": "hq",
        "engineer": "alice",
        "ticket": "FL-12",
        "expires_at": NOW + timedelta(minutes=30),
        "heard_at": NOW,
    }
    return SessionView(**{**base, **kw})


def test_consent_answers_read_as_sentences():
    until = clock(NOW + timedelta(minutes=30), NOW)
    approved = ConsentAnswer(action="approve", connected=True, state="answered", session=view())
    assert consent_answer_lines(approved, NOW) == [
        f"approved: alice may open a shell for FL-12 until {until}"
    ]
    denied = ConsentAnswer(
        action="deny", connected=True, state="answered", session=view(state="denied")
    )
    assert consent_answer_lines(denied, NOW) == ["denied: alice may not open a shell for FL-12"]
    ended = ConsentAnswer(
        action="end", connected=True, state="answered", session=view(state="ended"), stopped=1
    )
    assert consent_answer_lines(ended, NOW) == [
        "ended: alice's shell session for FL-12 is over; 1 open here closed"
    ]
    withdrawn = ConsentAnswer(
        action="end",
        connected=True,
        state="answered",
        session=view(state="ended", engineer="", origin="site"),
    )
    assert consent_answer_lines(withdrawn, NOW) == [
        "withdrawn: nobody from HQ will take over for FL-12"
    ]
    offline = ConsentAnswer(action="end", connected=False, state="queued", session=view())
    lines = consent_answer_lines(offline, NOW)
    assert "HQ is unreachable right now; your answer is saved" in lines[0]
    assert "stopped" in lines[1]
    late = ConsentAnswer(action="approve", connected=True, state="queued", session=view())
    assert consent_answer_lines(late, NOW) == [
        "HQ has not confirmed yet; your answer is saved and HQ will get it."
    ]


def test_the_consent_list():
    waiting = view(state="awaiting_consent", reason="printer queue stuck", kind="files")
    answer = ConsentAnswer(
        action="list",
        connected=False,
        state="listed",
        sessions=[waiting, view(id="se_2", channels=1), view(id="se_3", state="ended")],
    )
    lines = consent_list_lines(answer, NOW)
    assert lines[0].startswith("HQ is unreachable right now")
    assert lines[1] == "Waiting for your answer:"
    assert "alice wants to move files for FL-12 (answer by" in lines[2]
    assert lines[3] == "      reason: printer queue stuck"
    assert any("se_2" in x and "[1 open here]" in x for x in lines)
    assert not any("se_3" in x for x in lines)
    empty = ConsentAnswer(action="list", connected=True, state="listed")
    assert consent_list_lines(empty, NOW) == [
        "No session requests or live sessions on this machine."
    ]


def test_offer_lines():
    started = NOW - timedelta(minutes=1)
    joined = offer_lines(view(origin="site", started_at=started), NOW)
    assert joined[0] == (
        f"alice from HQ joined at {clock(started, NOW)} (shell session for FL-12, "
        f"until {clock(NOW + timedelta(minutes=30), NOW)})."
    )
    waiting = offer_lines(view(state="requested", origin="site", engineer=""), NOW)
    assert waiting[0].startswith("Waiting for someone at HQ to take over")
    over = offer_lines(view(state="ended", end_reason="ended by the engineer"), NOW)
    assert over == ["The session is over: ended by the engineer."]
