"""The commands people at the machine run: `fieldlink-agent help`, `tickets`,
`rate`, `consent` (and `status` for an account that cannot read the config).
Each asks the running daemon over its local socket (agent.local) and prints
the answer for a person; the rendering functions are pure.

`help` first asks HQ for knowledge-base articles matching the person's
words and shows the best ones; "Did this solve it?" answered yes records the
request as self-served (closed at once, counted as deflected) instead of
opening a ticket. `--no-suggest` skips the suggestions, `--solved KB-N` says
at once which article solved it (for scripts); `--assist` and `--json` do not
ask.

`help --assist` stays after printing the ticket number: it shows who from HQ
joined and when, lets the person end the session (`end` + Enter, or Ctrl-C)
and returns when the session ends or the offer runs out.

Exit status: 0 done (or saved to be sent when HQ is back), 1 refused (by HQ
or the agent), 2 a request the agent could not take, 3 no agent to ask.
"""

from __future__ import annotations

import os
import queue
import re
import select
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from agent.config import ConfigDir, ConfigError
from agent.local import (
    AgentUnavailable,
    AnyAnswer,
    AnyRequest,
    ConsentAnswer,
    ConsentRequest,
    Failure,
    HelpAnswer,
    HelpRequest,
    LocalError,
    OfferAnswer,
    OfferRequest,
    RateAnswer,
    RateRequest,
    SessionView,
    StatusAnswer,
    StatusRequest,
    SuggestAnswer,
    SuggestRequest,
    TicketsAnswer,
    TicketsRequest,
    call,
)
from shared import protocol as p
from shared.protocol import KbSuggestion

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_BAD_REQUEST = 2
EXIT_UNAVAILABLE = 3

_ANSWER_MARGIN = 30.0  # beyond the wait: a fresh health sample, the spool write
FOLLOW_WAIT = 20.0  # seconds one `offer` poll waits for a change
OFFER_APPEARS = 30.0  # seconds HQ has to announce the offer after its receipt
OFFER_SLACK = 60.0  # an offer past its deadline by this much is over, HQ or not
FINAL = frozenset({"ended", "denied", "expired", "failed"})

UNREACHABLE = (
    "HQ is unreachable right now; your {what} is saved on this machine and will be "
    "sent when the connection returns."
)


def socket_for(config_dir: ConfigDir, explicit: str | None) -> Path:
    """The daemon's socket: `--socket`, else `local_socket` from the config when
    this account can read it, else DIR/agent.sock."""
    if explicit:
        return Path(explicit)
    try:
        config = config_dir.load()
    except ConfigError:  # site staff cannot read config.toml (0600); use the default
        return config_dir.socket_file
    return config_dir.socket_path(config)


def ticket_number(text: str) -> str | None:
    """`FL-12`, `fl-12` or `12` as `FL-12`; None if it is none of those."""
    match = re.fullmatch(r"(?:FL-)?(\d{1,12})", text.strip(), flags=re.IGNORECASE)
    return f"FL-{int(match.group(1))}" if match else None


def local_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone().strftime("%Y-%m-%d %H:%M")


def clock(value: datetime | None, now: datetime | None = None) -> str:
    """`14:30` for a time today (local time), else `2024-05-03 14:30`."""
    if value is None:
        return "-"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    here = value.astimezone()
    today = (now or datetime.now(UTC)).astimezone().date()
    return here.strftime("%H:%M") if here.date() == today else here.strftime("%Y-%m-%d %H:%M")


def doing(kind: str, control: bool = False) -> str:
    """What a session of `kind` lets the engineer do, for a person (a desktop
    session asking for `control` wants keyboard and mouse too)."""
    if kind == "desktop":
        return "see and control this screen" if control else "see this screen"
    return {"shell": "open a shell", "files": "move files", "exec": "run commands"}.get(
        kind, f"open a {kind} session"
    )


def hands(s: SessionView) -> str:
    """Who has keyboard and mouse in a desktop session, for a person."""
    if not s.control_asked:
        return "view only"
    if s.control:
        return f"keyboard and mouse: theirs too (granted by {s.control_by})"
    if s.control_by == "policy":
        return "keyboard and mouse: yours; this machine never grants them"
    if s.control_by:
        return f"keyboard and mouse: yours (taken back by {s.control_by})"
    return "keyboard and mouse: yours until you grant them"


def _ago(value: datetime, now: datetime) -> str:
    seconds = max(0, int((now - value).total_seconds()))
    if seconds < 90:
        return "just now"
    if seconds < 90 * 60:
        return f"{seconds // 60} minutes ago"
    if seconds < 36 * 3600:
        return f"{seconds // 3600} hours ago"
    return f"{seconds // 86400} days ago"


# --- rendering (pure) ----------------------------------------------------------------


def help_lines(answer: HelpAnswer, wait: float) -> tuple[list[str], int]:
    if answer.state == "answered" and answer.ok and answer.message.startswith(p.HELP_REPEAT):
        return [
            f"You already have this request open as ticket {answer.ticket}: HQ added what "
            "you wrote to it instead of opening another. Follow it with "
            "`fieldlink-agent tickets`."
        ], EXIT_OK
    if answer.state == "answered" and answer.ok:
        return [
            f"Your request is ticket {answer.ticket}. HQ's IT team has it; "
            "follow it with `fieldlink-agent tickets`."
        ], EXIT_OK
    if answer.state == "answered":
        return [f"HQ did not accept your request: {answer.message}"], EXIT_REFUSED
    if not answer.connected:
        return [
            UNREACHABLE.format(what="request"),
            "`fieldlink-agent tickets` shows its ticket number once HQ has it.",
        ], EXIT_OK
    return [
        f"HQ did not answer within {wait:g} s; your request is saved on this machine "
        "and HQ will get it.",
        "`fieldlink-agent tickets` shows its ticket number once HQ has it.",
    ], EXIT_OK


def article_number(text: str) -> str | None:
    """`KB-7`, `kb-7` or `7` as `KB-7`; None if it is none of those."""
    match = re.fullmatch(r"(?:KB-)?(\d{1,12})", text.strip(), flags=re.IGNORECASE)
    return f"KB-{int(match.group(1))}" if match else None


def _excerpt(text: str, width: int = 74, lines: int = 4) -> list[str]:
    words = " ".join(text.split())
    out: list[str] = []
    while words and len(out) < lines:
        if len(words) <= width:
            out.append(words)
            words = ""
            break
        cut = words.rfind(" ", 0, width)
        cut = cut if cut > 0 else width
        out.append(words[:cut])
        words = words[cut:].lstrip()
    if words and out:
        out[-1] = out[-1].rstrip(".,;: ") + " ..."
    return out


def suggestion_lines(items: list[KbSuggestion]) -> list[str]:
    """The articles HQ suggests, numbered, with the start of each resolution."""
    lines = ["Before you ask: these articles may already answer it."]
    for index, item in enumerate(items, start=1):
        lines.append(f"  {index}. {item.number}  {item.title}")
        text = item.resolution or item.symptom
        if text:
            lines.extend(f"       {line}" for line in _excerpt(text))
    return lines


def suggestion_prompt(count: int) -> str:
    if count == 1:
        return "Did this solve it? [y/N] "
    return f"Did one of these solve it? Type its number (1-{count}), or press Enter to ask HQ: "


def chosen(items: list[KbSuggestion], reply: str) -> str | None:
    """Which article the person's reply names (y for a single one, its place
    in the list, or its number); None for no. Pure."""
    word = reply.strip().lower()
    if not word or word in ("n", "no"):
        return None
    if len(items) == 1 and word in ("y", "yes"):
        return items[0].number
    if word.isdigit() and 1 <= int(word) <= len(items):
        return items[int(word) - 1].number
    named = article_number(word)
    return named if named in {i.number for i in items} else None


def solved_lines(answer: HelpAnswer, wait: float) -> tuple[list[str], int]:
    if answer.state == "answered" and answer.ok:
        return [
            f"Glad it is solved. Your request is recorded as {answer.ticket} "
            "(closed, solved by the article): nobody needs to call you back."
        ], EXIT_OK
    if answer.state == "answered":
        return [f"HQ did not record it: {answer.message}"], EXIT_REFUSED
    if not answer.connected:
        return [UNREACHABLE.format(what="answer")], EXIT_OK
    return [
        f"HQ did not answer within {wait:g} s; your answer is saved on this machine and "
        "HQ will get it."
    ], EXIT_OK


def rate_lines(answer: RateAnswer, wait: float) -> tuple[list[str], int]:
    if answer.state == "answered" and answer.ok:
        message = answer.message or "thank you"
        return [message[0].upper() + message[1:]], EXIT_OK
    if answer.state == "answered":
        return [f"HQ did not take the rating: {answer.message}"], EXIT_REFUSED
    if not answer.connected:
        return [UNREACHABLE.format(what="rating")], EXIT_OK
    return [
        f"HQ did not answer within {wait:g} s; your rating is saved on this machine "
        "and HQ will get it."
    ], EXIT_OK


def tickets_lines(answer: TicketsAnswer, now: datetime) -> list[str]:
    lines: list[str] = []
    if answer.received_at is None:
        lines.append("HQ has not sent this machine's tickets yet.")
    else:
        when = f"{local_time(answer.received_at)}, {_ago(answer.received_at, now)}"
        if answer.connected:
            lines.append(f"This machine's tickets, as HQ last sent them ({when}):")
        else:
            lines.append(f"HQ is unreachable right now; its last list of tickets ({when}):")
        if not answer.tickets:
            lines.append("  no open or recently resolved tickets")
        else:
            rows = [("NUMBER", "STATUS", "PRIORITY", "UPDATED", "ASSIGNEE", "TITLE")]
            for t in answer.tickets:
                title = t.title
                if t.requested_here and t.status in ("resolved", "closed") and not t.rated:
                    title += f"  (rate it: fieldlink-agent rate {t.number} 1-5)"
                rows.append(
                    (
                        t.number,
                        t.status,
                        t.priority,
                        local_time(t.updated_at),
                        t.assignee or "-",
                        title,
                    )
                )
            widths = [max(len(r[i]) for r in rows) for i in range(5)]
            for r in rows:
                cells = [r[i].ljust(widths[i]) for i in range(5)]
                lines.append("  " + "  ".join([*cells, r[5]]))
    listed = {t.number for t in answer.tickets}
    opened = [
        r
        for r in answer.requests
        if r.kind == "help" and r.state == "answered" and r.ok and r.ticket not in listed
    ]
    if opened:
        lines.append("Opened since that list:")
        lines.extend(
            f"  {r.ticket}  asked {local_time(r.asked_at)} by {r.user}: {r.summary}" for r in opened
        )
    waiting = [r for r in answer.requests if r.state == "waiting"]
    if waiting:
        lines.append("Not yet sent to HQ (they go when the connection returns):")
        lines.extend(
            f"  {r.kind:<6}  asked {local_time(r.asked_at)} by {r.user}: {r.summary}"
            for r in waiting
        )
    lost = [r for r in answer.requests if r.state == "lost"]
    if lost:
        lines.append("Lost before HQ answered (the spool was full); please ask again:")
        lines.extend(
            f"  {r.kind:<6}  asked {local_time(r.asked_at)} by {r.user}: {r.summary}" for r in lost
        )
    return lines


def status_lines(answer: StatusAnswer) -> list[str]:
    info = {
        "agent id": answer.agent_id,
        "site": answer.site,
        "link": "connected" if answer.connected else "disconnected",
        "link since": local_time(answer.since),
        "spool pending": str(answer.spool_pending),
        "spool dropped": str(answer.spool_dropped),
        "spool error": spool_error_text(answer.spool_error, answer.spool_error_since),
        "requests waiting": str(answer.requests_waiting),
        "run containment": answer.run_containment or "unknown",
        "log dropped": str(answer.log_dropped)
        + (f" (failing now: {answer.log_error})" if answer.log_error else ""),
        "version": answer.version,
        "you are": answer.caller,
    }
    width = max(len(k) for k in info)
    return (
        [f"{k:<{width}}  {v}" for k, v in info.items()]
        + sessions_lines(answer.sessions, datetime.now(UTC))
        + [f"policy warning: {w}" for w in answer.policy_warnings]
    )


def session_line(s: SessionView, now: datetime) -> str:
    """One live session, for a person."""
    what = f"{s.kind} for {s.ticket}"
    if s.state == "awaiting_consent":
        text = (
            f"{s.engineer} wants to {doing(s.kind, s.control_asked)} for {s.ticket}: "
            "waiting for consent"
        )
        text += f" (answer by {clock(s.expires_at, now)})"
    elif s.state == "requested" and s.origin == "site":
        text = f"{what}, asked for here: waiting for someone at HQ"
        if s.expires_at:
            text += f" (until {clock(s.expires_at, now)})"
    elif s.state == "active":
        text = f"{s.engineer}: {what}, active since {clock(s.started_at, now)}"
        if s.expires_at:
            text += f" until {clock(s.expires_at, now)}"
        if s.kind == "desktop":
            text += f"; {hands(s)}"
    else:
        text = f"{s.engineer or '-'}: {what}, {s.state.replace('_', ' ')}"
    if s.ended_here:
        text += f"; ended at this machine {s.ended_here}, HQ not told yet"
    if s.channels:
        text += f" [{s.channels} open here]"
    return f"  {s.id}  {text}"


def sessions_lines(sessions: list[SessionView], now: datetime) -> list[str]:
    live = [s for s in sessions if s.state not in FINAL]
    if not live:
        return ["live sessions  none"]
    return ["live sessions:", *(session_line(s, now) for s in live)]


def consent_list_lines(answer: ConsentAnswer, now: datetime) -> list[str]:
    lines: list[str] = []
    if not answer.connected:
        lines.append("HQ is unreachable right now; sessions as HQ last described them.")
    pending = [s for s in answer.sessions if s.state == "awaiting_consent"]
    live = [s for s in answer.sessions if s.state in ("active", "requested")]
    if not pending and not live:
        lines.append("No session requests or live sessions on this machine.")
        return lines
    if pending:
        lines.append("Waiting for your answer:")
        for s in pending:
            lines.append(
                f"  {s.id}  {s.engineer} wants to {doing(s.kind, s.control_asked)} for "
                f"{s.ticket} (answer by {clock(s.expires_at, now)})"
            )
            if s.reason:
                lines.append(f"      reason: {s.reason}")
        lines.append(
            "  Answer with `fieldlink-agent consent --approve ID` or `--deny ID`; "
            "nobody answering means no."
        )
    if live:
        lines.append("Live sessions (end one with `fieldlink-agent consent --end ID`):")
        lines.extend(session_line(s, now) for s in live)
        if any(s.kind == "desktop" and s.control_asked and s.state == "active" for s in live):
            lines.append(
                "  Grant keyboard and mouse in a desktop session with "
                "`fieldlink-agent consent --control ID`, take them back with `--view-only ID`."
            )
    return lines


def control_lines(answer: ConsentAnswer) -> list[str]:
    """What a grant or take-back of control did (it holds here at once)."""
    s = answer.session
    assert s is not None
    if answer.action == "control":
        lines = [
            f"control granted: {s.engineer} may use the keyboard and mouse on this screen "
            f"for {s.ticket}; take it back with `fieldlink-agent consent --view-only {s.id}`"
        ]
    else:
        lines = [
            f"view only: {s.engineer} can no longer use the keyboard and mouse on this screen "
            f"({s.ticket})"
        ]
    if not answer.connected:
        lines.append("HQ is unreachable right now; it is told when the connection returns.")
    return lines


def consent_answer_lines(answer: ConsentAnswer, now: datetime) -> list[str]:
    """What became of a person's answer (approve, deny, end, control, view_only)."""
    s = answer.session
    if answer.state == "applied":
        return control_lines(answer)
    if answer.state == "queued":
        lines = (
            [
                "HQ is unreachable right now; your answer is saved on this machine and will "
                "be sent when the connection returns."
            ]
            if not answer.connected
            else ["HQ has not confirmed yet; your answer is saved and HQ will get it."]
        )
        if answer.action == "end":
            lines.append(
                "The session's shell, file transfer and screen sharing on this machine are "
                "stopped; nothing new opens for it."
            )
        return lines
    assert s is not None
    what = f"{s.kind} session for {s.ticket}"
    if s.state == "active":
        lines = [
            f"approved: {s.engineer} may {doing(s.kind)} for {s.ticket} "
            f"until {clock(s.expires_at, now)}"
        ]
        if s.kind == "desktop" and s.control_asked and not s.control:
            lines.append(
                f"Keyboard and mouse stay yours; grant them with "
                f"`fieldlink-agent consent --control {s.id}`."
            )
        elif s.kind == "desktop" and s.control:
            lines.append(
                f"They may use keyboard and mouse too (this machine's policy); take them "
                f"back with `fieldlink-agent consent --view-only {s.id}`."
            )
        return lines
    if s.state == "denied" and answer.action == "deny":
        return [f"denied: {s.engineer} may not {doing(s.kind, s.control_asked)} for {s.ticket}"]
    if answer.action == "end" and s.state in FINAL:
        if not s.engineer:  # nobody from HQ had taken the site's request yet
            return [f"withdrawn: nobody from HQ will take over for {s.ticket}"]
        closed = f"; {answer.stopped} open here closed" if answer.stopped else ""
        return [f"ended: {s.engineer}'s {what} is over{closed}"]
    why = f" ({s.end_reason})" if s.end_reason else ""
    return [f"{s.id} is {s.state.replace('_', ' ')}{why}"]


# --- commands -----------------------------------------------------------------------


def _ask(path: Path, request: AnyRequest, wait: float) -> AnyAnswer | int:
    """The daemon's answer, or an exit status after saying what went wrong."""
    try:
        answer = call(path, request, timeout=wait + _ANSWER_MARGIN)
    except AgentUnavailable as exc:
        print(f"fieldlink-agent: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except LocalError as exc:
        print(f"fieldlink-agent: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if isinstance(answer, Failure):
        print(f"fieldlink-agent: {answer.error.message}", file=sys.stderr)
        return EXIT_BAD_REQUEST if answer.error.code == "bad_request" else EXIT_REFUSED
    return answer


def _invalid(exc: ValidationError) -> int:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    print(f"fieldlink-agent: {where}: {first['msg']}", file=sys.stderr)
    return EXIT_BAD_REQUEST


def _emit(lines: list[str]) -> None:
    for line in lines:
        print(line)


SUGGEST_WAIT = 5.0  # seconds HQ has to suggest articles before the request goes as usual


def suggestions(path: Path, text: str) -> list[KbSuggestion]:
    """HQ's best articles for the words; none when HQ is away, slow or the
    agent does not answer (asking for help must never fail because of this)."""
    try:
        answer = call(path, SuggestRequest(text=text, wait=SUGGEST_WAIT), SUGGEST_WAIT + 5)
    except (LocalError, ValidationError):
        return []
    return list(answer.items) if isinstance(answer, SuggestAnswer) else []


def _read_reply(prompt: str) -> str:
    print(prompt, end="", flush=True)
    line = sys.stdin.readline()
    if not line:  # end of input: nobody to answer, treat as no
        print()
    return line


def help_command(
    path: Path,
    text: str,
    *,
    assist: bool,
    wait: float,
    as_json: bool,
    suggest: bool = True,
    solved: str | None = None,
) -> int:
    solved_by = None
    if solved is not None:
        solved_by = article_number(solved)
        if solved_by is None:
            print(f"fieldlink-agent: {solved!r} is not an article number (KB-7)", file=sys.stderr)
            return EXIT_BAD_REQUEST
        if assist:
            print("fieldlink-agent: --solved and --assist do not go together", file=sys.stderr)
            return EXIT_BAD_REQUEST
    try:
        request = HelpRequest(text=text, assist=assist, wait=wait, solved_by=solved_by)
    except ValidationError as exc:
        return _invalid(exc)
    if solved_by is None and suggest and not assist and not as_json:
        items = suggestions(path, request.text)
        if items:
            _emit(suggestion_lines(items))
            pick = chosen(items, _read_reply(suggestion_prompt(len(items))))
            if pick is not None:
                request = request.model_copy(update={"solved_by": pick})
            else:
                print("Then HQ's IT team gets your request.")
    answer = _ask(path, request, wait)
    if isinstance(answer, int):
        return answer
    assert isinstance(answer, HelpAnswer)
    lines, status = (solved_lines if request.solved_by else help_lines)(answer, wait)
    _emit([answer.model_dump_json(indent=2)] if as_json else lines)
    if assist and not as_json and answer.ok and answer.ticket:
        sys.stdout.flush()
        return follow_offer(path, answer.ticket)
    return status


def rate_command(
    path: Path, ticket: str, score: int, comment: str, *, wait: float, as_json: bool
) -> int:
    number = ticket_number(ticket)
    if number is None:
        print(f"fieldlink-agent: {ticket!r} is not a ticket number like FL-12", file=sys.stderr)
        return EXIT_BAD_REQUEST
    try:
        request = RateRequest(ticket=number, score=score, comment=comment, wait=wait)
    except ValidationError as exc:
        return _invalid(exc)
    answer = _ask(path, request, wait)
    if isinstance(answer, int):
        return answer
    assert isinstance(answer, RateAnswer)
    lines, status = rate_lines(answer, wait)
    _emit([answer.model_dump_json(indent=2)] if as_json else lines)
    return status


def tickets_command(path: Path, *, as_json: bool) -> int:
    answer = _ask(path, TicketsRequest(), 0.0)
    if isinstance(answer, int):
        return answer
    assert isinstance(answer, TicketsAnswer)
    _emit([answer.model_dump_json(indent=2)] if as_json else tickets_lines(answer, _now()))
    return EXIT_OK


def live_status(path: Path) -> StatusAnswer | None:
    """The running agent's own status (link, spool, sessions); None if no agent answers."""
    try:
        answer = call(path, StatusRequest(), timeout=5.0)
    except LocalError:
        return None
    return answer if isinstance(answer, StatusAnswer) else None


def spool_error_text(error: str | None, since: datetime | None) -> str:
    if error is None:
        return "none"
    return f"{error} (since {local_time(since)})" if since is not None else error


def status_command(path: Path, *, as_json: bool) -> int:
    answer = _ask(path, StatusRequest(), 0.0)
    if isinstance(answer, int):
        return answer
    assert isinstance(answer, StatusAnswer)
    _emit([answer.model_dump_json(indent=2)] if as_json else status_lines(answer))
    return EXIT_OK


def _now() -> datetime:
    return datetime.now(UTC)


def consent_command(
    path: Path, action: str, session: str | None, *, wait: float, as_json: bool
) -> int:
    try:
        request = ConsentRequest(action=action, session=session, wait=wait)
    except ValidationError as exc:
        return _invalid(exc)
    answer = _ask(path, request, wait)
    if isinstance(answer, int):
        return answer
    assert isinstance(answer, ConsentAnswer)
    if as_json:
        _emit([answer.model_dump_json(indent=2)])
    elif action == "list":
        _emit(consent_list_lines(answer, _now()))
    else:
        _emit(consent_answer_lines(answer, _now()))
    return EXIT_OK


# --- following an assisted session (`help --assist`) ---------------------------------


def _say(line: str) -> None:
    print(line, flush=True)


class _Follower:
    """Polls the daemon for the offer on one ticket in a thread, so the main
    thread can read the keyboard; changes arrive on `updates`."""

    def __init__(self, path: Path, ticket: str) -> None:
        self.path = path
        self.ticket = ticket
        self.updates: queue.Queue[OfferAnswer | str] = queue.Queue()
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="offer-poll", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _poll(self) -> None:
        seen: str | None = None
        while not self.done.is_set():
            request = OfferRequest(ticket=self.ticket, seen=seen, wait=FOLLOW_WAIT)
            try:
                answer = call(self.path, request, FOLLOW_WAIT + _ANSWER_MARGIN)
            except LocalError as exc:
                self.updates.put(str(exc))
                return
            if isinstance(answer, Failure):
                self.updates.put(answer.error.message)
                return
            assert isinstance(answer, OfferAnswer)
            self.updates.put(answer)
            if answer.session is not None:
                seen = answer.session.state
                if seen in FINAL:
                    return


def _lines_typed(fd: int, buf: bytearray) -> list[str] | None:
    """Complete lines typed so far (None once input has ended)."""
    data = os.read(fd, 1024)
    if not data:
        return None
    buf += data
    *lines, rest = bytes(buf).split(b"\n")
    buf[:] = rest
    return [line.decode(errors="replace").strip() for line in lines]


def follow_offer(path: Path, ticket: str) -> int:
    """Show who from HQ joins the session asked for on `ticket` and when, let
    the person end it, and return when it is over."""
    follower = _Follower(path, ticket)
    follower.start()
    session: SessionView | None = None
    shown: str | None = None
    started = time.monotonic()
    fd = _input_fd()
    typed = bytearray()
    try:
        while True:
            try:
                item = follower.updates.get(timeout=0 if fd is not None else 0.5)
            except queue.Empty:
                item = None
            if isinstance(item, str):
                _say(f"fieldlink-agent: {item}")
                return EXIT_UNAVAILABLE
            if item is not None:
                if not item.shells_allowed:
                    _say(
                        "This machine's policy does not allow remote shells (allow_shell = "
                        "false), so nobody at HQ can take over; HQ's IT team will help on "
                        f"{ticket}."
                    )
                    return EXIT_OK
                if item.session is not None:
                    session = item.session
            if session is not None and session.state != shown:
                shown = session.state
                for line in offer_lines(session, _now()):
                    _say(line)
                if session.state in FINAL:
                    return EXIT_OK
            if session is None and time.monotonic() - started > OFFER_APPEARS:
                _say(f"HQ has not offered a session on {ticket}; HQ's IT team has the ticket.")
                return EXIT_OK
            if session is not None and _offer_lapsed(session, _now()):
                _say(
                    "Nobody at HQ took the request before "
                    f"{clock(session.expires_at)}; {ticket} stays open."
                )
                return EXIT_OK
            if fd is None:
                continue
            ready, _, _ = select.select([fd], [], [], 0.25)
            if not ready:
                continue
            lines = _lines_typed(fd, typed)
            if lines is None:
                fd = None  # no more input (not a terminal): just follow
            elif any(line.lower() == "end" for line in lines):
                return _end_offer(path, session, ticket)
    except KeyboardInterrupt:
        return _end_offer(path, session, ticket)
    finally:
        follower.done.set()


def _input_fd() -> int | None:
    try:
        return sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        return None


def _offer_lapsed(session: SessionView, now: datetime) -> bool:
    if session.state != "requested" or session.expires_at is None:
        return False
    return (now - session.expires_at).total_seconds() > OFFER_SLACK


def offer_lines(session: SessionView, now: datetime) -> list[str]:
    """A change of the offered session, for the person who asked."""
    hint = "Type `end` and Enter, or press Ctrl-C, to"
    if session.state == "requested":
        until = f" (the offer stays open until {clock(session.expires_at, now)})"
        return [
            f"Waiting for someone at HQ to take over{until if session.expires_at else ''}.",
            f"{hint} withdraw the request.",
        ]
    if session.state == "active":
        until = f", until {clock(session.expires_at, now)}" if session.expires_at else ""
        return [
            f"{session.engineer} from HQ joined at {clock(session.started_at, now)} "
            f"({session.kind} session for {session.ticket}{until}).",
            f"{hint} end the session.",
        ]
    why = session.end_reason or session.state
    if session.state == "expired":
        return [f"Nobody at HQ took the request in time ({why}); {session.ticket} stays open."]
    return [f"The session is over: {why}."]


def _end_offer(path: Path, session: SessionView | None, ticket: str) -> int:
    if session is None or session.state in FINAL:
        _say(f"Stopped following; {ticket} stays with HQ's IT team.")
        return EXIT_OK
    answer = _ask(path, ConsentRequest(action="end", session=session.id, wait=10.0), 10.0)
    if isinstance(answer, int):
        return answer
    assert isinstance(answer, ConsentAnswer)
    for line in consent_answer_lines(answer, _now()):
        _say(line)
    return EXIT_OK
