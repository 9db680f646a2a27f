"""Machines: the list (search, filters by site, status and tag, sortable,
live) and one machine's page (facts, health charts, the catalog as forms,
results, its tickets and sessions). Data comes through the API's own scoped
queries; runs go to the API from the page's script.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

from server.auth.principal import Principal
from server.console import i18n, live
from server.console.changes import labels as change_labels
from server.console.changes import upcoming_for
from server.console.forms import fields_of
from server.console.lists import site_names, words
from server.console.render import page
from server.itsm.runs import TIER_PERMISSION
from server.views.agents import AgentItem, AgentListQuery, agent_with, visible_agents
from server.views.sessions import ListQuery as SessionQuery
from server.views.sessions import find_sessions
from server.views.tickets import ListQuery as TicketQuery
from server.views.tickets import find_tickets, ticket_out
from server.web.act import act
from server.web.authn import principal
from server.web.keys import DB
from server.web.routing import ApiRouter
from shared.errors import Invalid

routes = ApiRouter("console", console=True)

SORTS = {
    "hostname": lambda a: a.hostname.lower(),
    "site": lambda a: (a.site, a.hostname.lower()),
    "status": lambda a: (a.status, a.hostname.lower()),
    "last_seen": lambda a: a.last_seen.timestamp() if a.last_seen else 0.0,
    "cpu": lambda a: a.health.cpu_percent or 0.0,
    "memory": lambda a: a.health.memory_percent or 0.0,
    "disk": lambda a: a.health.disk_percent or 0.0,
}


def _filters(request: web.Request) -> dict[str, str]:
    return words(request, ("q", "site", "status", "tag", "sort", "dir"))


async def machine_rows(app: web.Application, who: Principal, f: dict[str, str]) -> list[AgentItem]:
    try:
        q = AgentListQuery(site=f.get("site"), tag=f.get("tag"), status=f.get("status"))
    except ValidationError as exc:
        raise Invalid("invalid filter", fields={"status": str(exc.errors()[0]["msg"])}) from None
    async with app[DB]() as session:
        items = await visible_agents(session, who, q)
    if f.get("q"):
        needle = f["q"].lower()
        items = [
            a
            for a in items
            if needle in a.hostname.lower() or needle in a.id.lower() or needle in a.site.lower()
        ]
    key = SORTS.get(f.get("sort", "site"), SORTS["site"])
    return sorted(items, key=key, reverse=f.get("dir") == "desc")


@routes.route(
    "GET", "/machines", permission="agents:read", summary="Machines: search, filter, sort"
)
async def machines(request: web.Request) -> web.StreamResponse:
    app = request.app
    who = principal(request)
    f = _filters(request)
    rows = await machine_rows(app, who, f)
    sites = await site_names(request, who, "agents:read")
    tags = sorted({t for a in await machine_rows(app, who, {}) for t in a.tags})
    ctx = {"rows": rows, "f": f, "sites": sites, "tags": tags, "query": request.query_string}
    return page(request, "machines.html", ctx, title=i18n.gettext("Machines"))


@routes.route(
    "GET",
    "/events/machines",
    permission="agents:read",
    summary="The machines table, live (server-sent events)",
)
async def machines_events(request: web.Request) -> web.StreamResponse:
    f = _filters(request)
    await machine_rows(request.app, principal(request), f)  # a bad filter: 422 before streaming

    async def rows(app: web.Application, who: Principal) -> list[AgentItem]:
        return await machine_rows(app, who, f)

    return await live.fragments(request, "machines_rows.html", "rows", rows)


@routes.route("GET", "/machines/{agent_id}", permission="agents:read", summary="One machine's page")
async def machine(request: web.Request) -> web.StreamResponse:
    async with act(request, agent_with("agents:read")) as (session, (agent, site), who):
        tickets: list[Any] = []
        if who.holds("tickets:read"):
            rows = await find_tickets(session, who, TicketQuery(agent_id=agent.id, limit=20))
            tickets = [await ticket_out(session, t, who) for t in rows]
        sessions = await find_sessions(session, who, SessionQuery(agent_id=agent.id, limit=20))
        changes = await upcoming_for(session, who, agent.id)
    catalog = []
    for entry in [*(agent.catalog or [])]:
        tier = str(entry.get("tier", "diagnostic"))
        permission = TIER_PERMISSION.get(tier, "diag:run")
        catalog.append(
            {
                **entry,
                "fields": fields_of(entry.get("params_schema") or {}),
                "may_run": who.allowed(permission, agent.site_id),
                "permission": permission,
            }
        )
    ctx = {
        "agent": agent,
        "site": site,
        "status": "revoked" if agent.revoked_at else ("online" if agent.online else "offline"),
        "facts": agent.facts or {},
        "health": agent.latest_health if who.allowed("health:read", agent.site_id) else None,
        "charts": who.allowed("health:read", agent.site_id),
        "catalog": catalog,
        "policy": agent.policy or {},
        "tickets": tickets,
        "sessions": sessions,
        "changes": changes,
        "may_tag": who.allowed("agents:enroll", agent.site_id),
        "may_revoke": who.allowed("agents:revoke", agent.site_id) and agent.revoked_at is None,
    }
    return page(request, "machine.html", {**ctx, **change_labels()}, title=agent.hostname)
