"""The dashboard: machines online and offline per site, firing alerts, open
tickets by priority and SLA clocks at risk, all within the caller's scope,
kept live by server-sent events. People who only ask for help land on their
"Get help" page instead.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.principal import Principal
from server.console import i18n, live
from server.console.render import page
from server.console.sessions import pending
from server.itsm.tickets import number_text
from server.ops import ticketing
from server.store.models import Ticket
from server.views.agents import AgentListQuery, visible_agents
from server.views.alerts import AlertQuery, alert_items
from server.views.tickets import ListQuery, find_tickets
from server.web.authn import principal
from server.web.keys import DB
from server.web.middleware import see_other
from server.web.routing import SELF, ApiRouter

routes = ApiRouter("console", console=True)

PRIORITIES = ("P1", "P2", "P3", "P4")
AT_RISK = ("warning", "breached")
# SLA clocks of open tickets, kept briefly: every open dashboard asks every few
# seconds, and a clock only moves with time or with a change to its ticket.
CLOCK_TTL = 30.0
_clocks: dict[str, tuple[float, datetime, dict[str, Any]]] = {}


async def clocks_of(session: AsyncSession, ticket: Ticket) -> dict[str, Any]:
    now = time.monotonic()
    kept = _clocks.get(ticket.id)
    if kept is not None and kept[1] == ticket.updated_at and now - kept[0] < CLOCK_TTL:
        return kept[2]
    found = dict(await ticketing.clocks(session, ticket))
    if len(_clocks) > 10000:
        _clocks.clear()
    _clocks[ticket.id] = (now, ticket.updated_at, found)
    return found


async def summary(app: web.Application, who: Principal) -> dict[str, Any]:
    """What the dashboard shows, for this caller."""
    out: dict[str, Any] = {
        "sites": [],
        "alerts": [],
        "priorities": [],
        "at_risk": [],
        "consents": None,
    }
    async with app[DB]() as session:
        if who.holds("agents:read"):
            per_site: dict[str, Counter[str]] = {}
            for agent in await visible_agents(session, who, AgentListQuery()):
                if agent.status != "revoked":
                    per_site.setdefault(agent.site, Counter())[agent.status] += 1
            out["sites"] = [
                {"name": name, "online": c["online"], "offline": c["offline"]}
                for name, c in sorted(per_site.items())
            ]
            out["alerts"] = await alert_items(session, who, AlertQuery(status="firing"))
        if who.holds("tickets:read"):
            open_tickets = await find_tickets(session, who, ListQuery(status="open", limit=500))
            counts = Counter(t.priority for t in open_tickets)
            out["priorities"] = [{"priority": p, "count": counts[p]} for p in PRIORITIES]
            for t in open_tickets:
                clocks = await clocks_of(session, t)
                risky = [(kind, c) for kind, c in clocks.items() if c.state in AT_RISK]
                if risky:
                    kind, clock = risky[0]
                    out["at_risk"].append(
                        {
                            "number": number_text(t.number),
                            "title": t.title,
                            "priority": t.priority,
                            "clock": kind,
                            "state": clock.state,
                            "due": clock.due,
                        }
                    )
    if who.holds("sessions:consent"):
        out["consents"] = await pending(app, who)
    out["online"] = sum(s["online"] for s in out["sites"])
    out["offline"] = sum(s["offline"] for s in out["sites"])
    return out


def landing(who: Principal) -> str | None:
    """Where someone without a dashboard goes instead."""
    if who.holds("agents:read"):
        return None
    if who.holds("tickets:write") or who.holds("tickets:read"):
        return "/help"
    for perm, path in (("audit:read", "/audit"), ("kpi:read", "/kpis")):
        if who.holds(perm):
            return path
    return "/profile"


@routes.route("GET", "/", permission=SELF, summary="Dashboard (or your start page)")
async def dashboard(request: web.Request) -> web.StreamResponse:
    who = principal(request)
    elsewhere = landing(who)
    if elsewhere is not None:
        return see_other(elsewhere)
    data = await summary(request.app, who)
    return page(request, "dashboard.html", {"d": data}, title=i18n.gettext("Dashboard"))


@routes.route(
    "GET",
    "/events/dashboard",
    permission="agents:read",
    summary="The dashboard's panels, live (server-sent events)",
)
async def dashboard_events(request: web.Request) -> web.StreamResponse:
    return await live.fragments(request, "dashboard_panels.html", "d", summary)
