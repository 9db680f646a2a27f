"""Tickets and KPIs: `fieldlink tickets`, `fieldlink ticket show|new|ACTION|comment`,
`fieldlink kpi`.

Thin shells around `/api/v1/tickets` and `/api/v1/kpis`: build the request,
send it pinned, draw the answer (ticketview.py). An illegal transition
answers 409 with HQ's message naming the allowed actions; it reaches the
person through `commands.describe` with exit status 1.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from server.client import render, ticketview
from server.client.argparsing import numbered
from server.client.config import Login
from server.client.errors import UsageError
from server.client.http import Api
from server.client.remote import list_agents, pick_agent

STATUSES = ("new", "acknowledged", "in_progress", "waiting", "resolved", "closed", "cancelled")
WAIT_REASONS = ("on_site", "on_requester", "on_vendor")
ACTIONS = ("ack", "start", "wait", "resolve", "close", "reopen", "cancel")
PAGE = 200


def status_filter(text: str) -> str:
    """`--status`: a status, a comma list of them, or `open`; spelled as HQ does. Pure."""
    words = [w.strip().lower().replace("-", "_") for w in text.split(",") if w.strip()]
    if words == ["open"]:
        return "open"
    unknown = [w for w in words if w not in STATUSES]
    if not words or unknown:
        raise UsageError(
            f"--status {text!r}: not a status; use open or one or more of {', '.join(STATUSES)}"
        )
    return ",".join(dict.fromkeys(words))


def wait_reason(text: str | None) -> str:
    """`--reason` for `ticket wait`: on_site, on_requester or on_vendor (`site`,
    `on site` and `on-site` will do). Pure."""
    if not text:
        raise UsageError(f"ticket wait needs --reason: one of {', '.join(WAIT_REASONS)}")
    word = "_".join(text.lower().replace("-", " ").replace("_", " ").split())
    if word in ("site", "requester", "vendor"):
        word = "on_" + word
    if word not in WAIT_REASONS:
        raise UsageError(f"--reason {text!r}: a ticket waits {', '.join(WAIT_REASONS)}")
    return word


def transition_body(
    action: str, reason: str | None, note: str | None, code: str | None
) -> dict[str, Any]:
    """The transition request for a command line. `--reason` is why a ticket
    waits; for any other action it is a note, like `--note`. Pure."""
    if action not in ACTIONS:
        raise UsageError(f"unknown ticket action {action!r}")
    body: dict[str, Any] = {"action": action}
    notes = [n for n in (note,) if n]
    if action == "wait":
        body["reason"] = wait_reason(reason)
    elif reason:
        notes.insert(0, reason)
    if notes:
        body["note"] = "\n".join(notes)
    if code:
        if action != "resolve":
            raise UsageError("--code is the resolution code: only `ticket resolve` takes it")
        body["resolution_code"] = code
    return body


def _day_start(text: str) -> datetime | None:
    try:
        day = datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        return None
    return day.replace(tzinfo=UTC)


def time_bound(text: str, *, end: bool, now: datetime | None = None) -> str:
    """`--from`/`--to` as RFC 3339 UTC. A date (2026-11-01) is that day in UTC,
    and as `--to` it includes the whole day; an RFC 3339 time is taken as
    written (UTC if it names no zone); a duration (`30d`, `12h`) counts back
    from now. Pure."""
    from shared.durations import parse_duration

    value = text.strip()
    day = _day_start(value)
    if day is not None:
        at = day + timedelta(days=1) if end else day
    else:
        try:
            at = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            try:
                back = parse_duration(value)
            except ValueError:
                raise UsageError(
                    f"{value!r}: give a date (2026-11-01), an RFC 3339 time "
                    "(2026-11-01T08:00:00Z) or a duration back from now (30d)"
                ) from None
            at = (now or datetime.now(UTC)) - back
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- commands --------------------------------------------------------------------------


@dataclass(frozen=True)
class ListSpec:
    site: str | None
    status: str | None
    mine: bool
    limit: int
    as_json: bool


async def list_tickets(login: Login, spec: ListSpec) -> int:
    params: dict[str, str] = {"limit": str(min(spec.limit, PAGE))}
    if spec.site:
        params["site"] = spec.site
    if spec.status:
        params["status"] = status_filter(spec.status)
    if spec.mine:
        params["mine"] = "true"
    async with Api(login.url, login.fingerprint, login.token) as api:
        items: list[dict[str, Any]] = await api.pages("/api/v1/tickets", params, limit=spec.limit)
    if spec.as_json:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        render.console(stderr=True).print("no tickets match", markup=False, highlight=False)
        return 0
    render.console().print(ticketview.tickets_table(items))
    return 0


async def show(login: Login, ref: str, as_json: bool) -> int:
    async with Api(login.url, login.fingerprint, login.token) as api:
        ticket = await api.get(f"/api/v1/tickets/{quote(ticket_ref(ref), safe='')}")
    if as_json:
        print(json.dumps(ticket, indent=2))
        return 0
    render.console().print(ticketview.ticket_detail(ticket))
    return 0


@dataclass(frozen=True)
class NewSpec:
    site: str
    title: str
    description: str
    type: str
    priority: str | None
    impact: int | None
    urgency: int | None
    agents: list[str]
    as_json: bool


async def new(login: Login, spec: NewSpec) -> int:
    body: dict[str, Any] = {
        "site": spec.site,
        "title": spec.title,
        "type": spec.type,
        "description": spec.description,
    }
    for key in ("priority", "impact", "urgency"):
        if getattr(spec, key) is not None:
            body[key] = getattr(spec, key)
    async with Api(login.url, login.fingerprint, login.token) as api:
        if spec.agents:
            visible = await list_agents(api, spec.site)
            body["agent_ids"] = list(
                dict.fromkeys(str(pick_agent(visible, ref)["id"]) for ref in spec.agents)
            )
        ticket = await api.post("/api/v1/tickets", body)
    if spec.as_json:
        print(json.dumps(ticket, indent=2))
        return 0
    print(ticket["number"])
    print(
        f"opened {ticket['number']}: {ticket.get('priority')} {ticket.get('type')} "
        f"on {ticket.get('site')}",
        file=sys.stderr,
    )
    return 0


async def act(login: Login, ref: str, body: dict[str, Any]) -> int:
    async with Api(login.url, login.fingerprint, login.token) as api:
        ticket = await api.post(
            f"/api/v1/tickets/{quote(ticket_ref(ref), safe='')}/transition", body
        )
    change = next(
        (e for e in reversed(ticket.get("timeline") or []) if e.get("kind") == "state"), None
    )
    data = change.get("data") if change else None
    before = f"{data.get('from')} -> " if isinstance(data, dict) else ""
    print(f"{ticket['number']}: {before}{ticket['status']}")
    allowed = ticket.get("allowed_actions") or []
    if allowed:
        print(f"  next: {', '.join(allowed)}", file=sys.stderr)
    return 0


async def comment(login: Login, ref: str, text: str, internal: bool) -> int:
    if text == "-":
        text = sys.stdin.read()
    if not text.strip():
        raise UsageError("the comment is empty")
    async with Api(login.url, login.fingerprint, login.token) as api:
        ticket = await api.post(
            f"/api/v1/tickets/{quote(ticket_ref(ref), safe='')}/comments",
            {"body": text, "internal": internal},
        )
    print(f"{ticket['number']}: {'internal note' if internal else 'comment'} added")
    return 0


@dataclass(frozen=True)
class KpiSpec:
    site: str | None
    engineer: str | None
    start: str | None
    end: str | None
    group_by: str | None
    as_json: bool


async def kpis(login: Login, spec: KpiSpec) -> int:
    params: dict[str, str] = {}
    if spec.site:
        params["site"] = spec.site
    if spec.engineer:
        params["engineer"] = spec.engineer
    if spec.start:
        params["from"] = time_bound(spec.start, end=False)
    if spec.end:
        params["to"] = time_bound(spec.end, end=True)
    if spec.group_by:
        params["group_by"] = spec.group_by
    async with Api(login.url, login.fingerprint, login.token) as api:
        report = await api.get("/api/v1/kpis", params)
    if spec.as_json:
        print(json.dumps(report, indent=2))
        return 0
    out = render.console()
    out.print(kpi_heading(params), markup=False, highlight=False)
    if not report.get("groups"):
        out.print("no tickets", markup=False, highlight=False)
        return 0
    out.print(ticketview.kpi_table(report))
    return 0


def kpi_heading(params: dict[str, str]) -> str:
    """What the report covers, in one line. Pure."""
    parts = ["KPIs for tickets created"]
    if "from" in params and "to" in params:
        parts.append(f"from {params['from']} to before {params['to']}")
    elif "from" in params:
        parts.append(f"since {params['from']}")
    elif "to" in params:
        parts.append(f"before {params['to']}")
    else:
        parts.append("at any time")
    if "site" in params:
        parts.append(f"on site {params['site']}")
    if "engineer" in params:
        parts.append(f"assigned to {params['engineer']}")
    if "group_by" in params:
        parts.append(f"per {params['group_by']}")
    return " ".join(parts)


def ticket_ref(ref: str) -> str:
    """`fl-12`, `12` -> `FL-12`; ids pass through. Pure."""
    return numbered(ref, "FL", "a ticket number (FL-12)")
