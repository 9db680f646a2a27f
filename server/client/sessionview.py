"""How remote sessions look in the engineer CLI: the session table, the line
shown while a request waits for the site's consent, and what an ended
session says.

Pure: the API's JSON (and `now`) in, text or a rich table out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.table import Table
from rich.text import Text

from server.client.cells import one_line, when
from server.client.render import parse_time
from server.client.ticketview import short_span, span

STATE_STYLE = {
    "requested": "yellow",
    "awaiting_consent": "yellow",
    "active": "bold green",
    "ended": "dim",
    "denied": "red",
    "expired": "red",
    "failed": "red",
}
WAITING = frozenset({"requested", "awaiting_consent"})
FINAL = frozenset({"ended", "denied", "expired", "failed"})


def machine(s: dict[str, Any]) -> str:
    return str(s.get("hostname") or s.get("agent_id") or "?")


def engineer(s: dict[str, Any]) -> str:
    if s.get("requested_by"):
        return str(s["requested_by"])
    return "(site request)" if s.get("origin") == "site" else "-"


def consent(s: dict[str, Any]) -> str:
    """Who consented and how, or whether it is still needed. Pure."""
    if s.get("consent_by"):
        via = s.get("consent_via")
        return f"{s['consent_by']} ({via})" if via else str(s["consent_by"])
    if s.get("state") == "awaiting_consent":
        return "waiting"
    return "needed" if s.get("consent_required") else "not needed"


def clock(value: Any, now: datetime | None = None) -> str:
    """A time compactly, in the local zone: `14:05` today, else `11-27 14:05`. Pure."""
    at = parse_time(value)
    if at is None:
        return "-"
    local = at.astimezone()
    today = (now or datetime.now(UTC)).astimezone().date()
    return local.strftime("%H:%M") if local.date() == today else local.strftime("%m-%d %H:%M")


def ends(s: dict[str, Any], now: datetime | None = None) -> str:
    """When it ends (active), must be answered by (waiting), or ended. Pure."""
    now = now or datetime.now(UTC)
    state = s.get("state")
    if state == "active":
        at = parse_time(s.get("ends_at"))
        left = short_span((at - now).total_seconds()) if at else ""
        return f"{clock(at.isoformat(), now)} (in {left})" if at else "-"
    if state in WAITING:
        if parse_time(s.get("expires_at")) is None:
            return "-"
        return f"answer by {clock(s.get('expires_at'), now)}"
    return f"ended {clock(s.get('ended_at'), now)}" if s.get("ended_at") else "-"


def sessions_table(items: list[dict[str, Any]], now: datetime | None = None) -> Table:
    table = Table(header_style="bold")
    for name in ("id", "state", "kind", "machine", "ticket", "engineer", "consent", "started"):
        table.add_column(name, no_wrap=True)
    table.add_column("ends", no_wrap=True)
    table.add_column("reason")  # the one that gives way on a narrow terminal
    for s in items:
        state = str(s.get("state", ""))
        reason = s.get("end_reason") if state in FINAL else s.get("reason")
        table.add_row(
            Text(str(s.get("id", ""))),
            Text(state, style=STATE_STYLE.get(state, "")),
            Text(str(s.get("kind", ""))),
            Text(machine(s)),
            Text(str(s.get("ticket", ""))),
            Text(engineer(s)),
            Text(consent(s)),
            clock(s.get("started_at"), now),
            Text(ends(s, now)),
            one_line(reason),
        )
    return table


def waiting_line(s: dict[str, Any], site: str | None, now: datetime | None = None) -> str:
    """The status shown while a request waits: who must approve, and by when. Pure."""
    now = now or datetime.now(UTC)
    sid = s.get("id", "?")
    where = f"{machine(s)} (site {site})" if site else machine(s)
    if s.get("state") == "requested" and s.get("origin") == "site":
        text = f"session {sid}: {where} asked for help and waits for an engineer to accept it"
    else:
        tech = f"a site technician of {site}" if site else "a site technician"
        text = (
            f"session {sid}: waiting for consent: someone at {where} "
            f"(`fieldlink-agent consent --approve {sid}`) or {tech} must approve"
        )
    deadline = parse_time(s.get("expires_at"))
    if deadline is not None:
        left = max(0.0, (deadline - now).total_seconds())
        text += f"; {span(left)} left (until {deadline.astimezone().strftime('%H:%M:%S')})"
    return text


def outcome_line(s: dict[str, Any]) -> str:
    """Why a session is over, for the person who asked for it. Pure."""
    sid = s.get("id", "?")
    state = s.get("state")
    why = s.get("end_reason") or "no reason given"
    if state == "denied":
        return f"session {sid} was denied: {why}"
    if state == "expired":
        return f"session {sid} expired: {why}"
    if state == "failed":
        return f"session {sid} failed: {why}"
    by = f" (by {s['ended_by']})" if s.get("ended_by") else ""
    return f"session {sid} ended: {why}{by}"


def active_line(s: dict[str, Any]) -> str:
    consent_text = f"; consent: {consent(s)}" if s.get("consent_by") else ""
    ends_text = f", ends by {when(s.get('ends_at'))}" if s.get("ends_at") else ""
    return (
        f"session {s.get('id')}: active on {machine(s)} for {s.get('ticket')}"
        f"{ends_text}{consent_text}"
    )
