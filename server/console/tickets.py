"""Tickets: the list with filters and SLA badges, the ticket page (timeline,
comments, transitions, assignment, escalation, attached results, sessions,
rating) and the plain "Get help" page for people who ask for help.

The pages read through the API's scoped queries; every change is a call to
the API from the page (the same checks answer there).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

from server.api.authn import Principal, principal
from server.api.kb import viewer as kb_viewer
from server.api.routing import ApiRouter
from server.api.sessions import ListQuery as SessionQuery
from server.api.sessions import find_sessions
from server.api.tickets import ListQuery, detail, find_tickets, readable_ticket, ticket_out
from server.console import i18n
from server.console.render import page
from server.context import services
from server.itsm.kb import number_text
from server.itsm.tickets import OPEN
from server.store import fleet, people
from server.store import kb as kb_store
from shared.errors import Invalid

routes = ApiRouter("console", console=True)

FILTERS = ("site", "status", "priority", "assignee", "q", "type", "tier", "source", "mine", "after")
PAGE = 100


def parse_filters(request: web.Request) -> tuple[ListQuery, dict[str, str]]:
    raw = {k: request.query[k].strip() for k in FILTERS if request.query.get(k, "").strip()}
    try:
        return ListQuery.model_validate({**raw, "limit": PAGE}), raw
    except ValidationError as exc:
        fields = {".".join(map(str, e["loc"])): e["msg"] for e in exc.errors()}
        raise Invalid("invalid filter", fields=fields) from None


async def writable_sites(request: web.Request, who: Principal) -> list[str]:
    async with services(request).sessions() as session:
        sites = await people.list_sites(session)
    return [s.name for s in sites if who.allowed("tickets:write", s.id)]


@routes.route("GET", "/tickets", permission="tickets:read", summary="Tickets, filtered")
async def tickets(request: web.Request) -> web.StreamResponse:
    who = principal(request)
    q, f = parse_filters(request)
    async with services(request).sessions() as session:
        rows = [await ticket_out(session, t, who) for t in await find_tickets(session, who, q)]
    older = rows[-1].number.removeprefix("FL-") if len(rows) == PAGE else None
    ctx = {"rows": rows, "f": f, "older": older, "sites": await writable_sites(request, who)}
    return page(request, "tickets.html", ctx, title=i18n.gettext("Tickets"))


@routes.route("GET", "/help", permission="tickets:write", summary="Ask for help; your own requests")
async def help_page(request: web.Request) -> web.StreamResponse:
    """Asking first shows the best published knowledge-base articles (help.js);
    "This solved it" records a self-served request instead of a ticket."""
    who = principal(request)
    async with services(request).sessions() as session:
        mine = await find_tickets(session, who, ListQuery(mine=True, limit=100))
        rows = [await ticket_out(session, t, who) for t in mine]
    ctx = {
        "rows": rows,
        "sites": await writable_sites(request, who),
        "suggest": who.holds("kb:read"),
        "solved": request.query.get("done") == "solved",
    }
    return page(request, "help.html", ctx, title=i18n.gettext("Get help"))


@routes.route("GET", "/tickets/{ticket_id}", permission="tickets:read", summary="One ticket's page")
async def ticket(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    who = principal(request)
    async with svc.sessions() as session:
        row = await readable_ticket(session, who, request.match_info["ticket_id"])
        t = await detail(session, row, who)
        sessions = await find_sessions(session, who, SessionQuery(ticket=row.id, limit=50))
        site_agents: list[dict[str, Any]] = []
        if who.allowed("agents:read", row.site_id):
            site_agents = [
                {"id": a.id, "hostname": a.hostname, "linked": a.id in t.agents}
                for a, _ in await fleet.list_agents(session, frozenset({row.site_id}))
            ]
        articles = [
            a
            for a in await kb_store.articles_linked_to(session, "ticket", row.id)
            if kb_store.can_read(kb_viewer(who), a)
        ]
    works = who.works_tickets(row.site_id)
    ctx = {
        "articles": [{"number": number_text(a.number), "title": a.title} for a in articles],
        "may_kb": works
        and who.allowed("kb:write", row.site_id)
        and row.status in ("resolved", "closed"),
        "t": t,
        "sessions": sessions,
        "site_agents": site_agents,
        "works": works,
        "staff": not who.sees_all_tickets(row.site_id),
        "may_comment": who.allowed("tickets:write", row.site_id),
        "may_assign": works and who.allowed("tickets:assign", row.site_id),
        "may_session": who.allowed("sessions:request", row.site_id) and row.status in OPEN,
        # the API also refuses anyone who worked the ticket
        "may_rate": row.requester_id == who.user_id
        and row.status in ("resolved", "closed")
        and row.rating is None
        and row.assignee_id != who.user_id
        and not works,
        "may_results": who.allowed("diag:run", row.site_id),
    }
    return page(request, "ticket.html", ctx, title=f"{t.number} {t.title}")
