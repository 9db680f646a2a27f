"""The commands people at the machine run: `fieldlink-agent help`, `tickets`,
`rate` (and `status` for an account that cannot read the config). Each asks
the running daemon over its local socket (agent.local) and prints the answer
for a person; the rendering functions are pure.

Exit status: 0 done (or saved to be sent when HQ is back), 1 refused (by HQ
or the agent), 2 a request the agent could not take, 3 no agent to ask.
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from agent.config import ConfigDir, ConfigError
from agent.local import (
    AgentUnavailable,
    Failure,
    HelpAnswer,
    HelpRequest,
    LocalError,
    RateAnswer,
    RateRequest,
    StatusAnswer,
    StatusRequest,
    TicketsAnswer,
    TicketsRequest,
    call,
)

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_BAD_REQUEST = 2
EXIT_UNAVAILABLE = 3

_ANSWER_MARGIN = 30.0  # beyond the wait: a fresh health sample, the spool write

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
        "requests waiting": str(answer.requests_waiting),
        "version": answer.version,
        "you are": answer.caller,
    }
    width = max(len(k) for k in info)
    return [f"{k:<{width}}  {v}" for k, v in info.items()]


# --- commands -----------------------------------------------------------------------


def _ask(
    path: Path, request: HelpRequest | RateRequest | TicketsRequest | StatusRequest, wait: float
) -> Failure | HelpAnswer | RateAnswer | TicketsAnswer | StatusAnswer | int:
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


def help_command(path: Path, text: str, *, assist: bool, wait: float, as_json: bool) -> int:
    try:
        request = HelpRequest(text=text, assist=assist, wait=wait)
    except ValidationError as exc:
        return _invalid(exc)
    answer = _ask(path, request, wait)
    if isinstance(answer, int):
        return answer
    assert isinstance(answer, HelpAnswer)
    lines, status = help_lines(answer, wait)
    _emit([answer.model_dump_json(indent=2)] if as_json else lines)
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


def status_command(path: Path, *, as_json: bool) -> int:
    answer = _ask(path, StatusRequest(), 0.0)
    if isinstance(answer, int):
        return answer
    assert isinstance(answer, StatusAnswer)
    _emit([answer.model_dump_json(indent=2)] if as_json else status_lines(answer))
    return EXIT_OK


def _now() -> datetime:
    return datetime.now(UTC)
