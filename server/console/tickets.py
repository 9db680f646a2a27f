"""Tickets: the list with filters and SLA badges, the ticket page (timeline,
comments, transitions, assignment, escalation, attached results, sessions,
rating) and the plain "Get help" page for people who ask for help.

The pages read through the API's scoped queries; every change is a call to
the API from the page (the same checks answer there).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.principal import Principal
from server.console import i18n, labels
from server.console.changes import labels as change_labels
from server.console.changes import upcoming_for
from server.console.lists import parsed, site_names, words
from server.console.render import page
from server.engine.remote import KIND_PERMISSION
from server.itsm.kb import number_text
from server.itsm.tickets import OPEN
from server.store import fleet
from server.store import kb as kb_store
from server.views.kb import viewer as kb_viewer
from server.views.problems import ListQuery as ProblemListQuery
from server.views.problems import ProblemOut, find_problems, may_write, problem_out
from server.views.sessions import ListQuery as SessionQuery
from server.views.sessions import find_sessions
from server.views.tickets import (
    ListQuery,
    TicketDetail,
    detail,
    find_tickets,
    readable_ticket,
    ticket_out,
)
from server.web.act import act, unit
from server.web.routing import ApiRouter

routes = ApiRouter("console", console=True)

FILTERS = ("site", "status", "priority", "assignee", "q", "type", "tier", "source", "mine", "after")
PAGE = 100


async def writable_sites(request: web.Request, who: Principal) -> list[str]:
    return await site_names(request, who, "tickets:write")


@routes.route("GET", "/tickets", permission="tickets:read", summary="Tickets, filtered")
async def tickets(request: web.Request) -> web.StreamResponse:
    f = words(request, FILTERS)
    q = parsed(ListQuery, {**f, "limit": PAGE})
    async with unit(request) as (session, who):
        rows = [await ticket_out(session, t, who) for t in await find_tickets(session, who, q)]
    older = rows[-1].number.removeprefix("FL-") if len(rows) == PAGE else None
    ctx = {"rows": rows, "f": f, "older": older, "sites": await writable_sites(request, who)}
    return page(request, "tickets.html", ctx, title=i18n.gettext("Tickets"))


@routes.route("GET", "/help", permission="tickets:write", summary="Ask for help; your own requests")
async def help_page(request: web.Request) -> web.StreamResponse:
    """Asking first shows the best published knowledge-base articles (help.js);
    "This solved it" records a self-served request instead of a ticket."""
    async with unit(request) as (session, who):
        mine = await find_tickets(session, who, ListQuery(mine=True, limit=100))
        rows = [await ticket_out(session, t, who) for t in mine]
        upcoming = await upcoming_for(session, who)
    ctx = {
        "rows": rows,
        "sites": await writable_sites(request, who),
        "upcoming": upcoming,
        **change_labels(),
        "suggest": who.holds("kb:read"),
        "solved": request.query.get("done") == "solved",
    }
    return page(request, "help.html", ctx, title=i18n.gettext("Get help"))


async def problems_to_link(
    session: AsyncSession, who: Principal, site_id: str, t: TicketDetail
) -> list[ProblemOut]:
    """Active problems this incident could join: of its site or HQ-wide, that the
    caller may work, not linked yet."""
    if not who.holds("problems:write"):
        return []
    q = ProblemListQuery(status="proposed,new,investigating,known_error", limit=100)
    linked = {p.id for p in t.problems}
    return [
        await problem_out(session, p, who)
        for p in await find_problems(session, who, q)
        if p.id not in linked and p.site_id in (None, site_id) and may_write(who, p)
    ]


@routes.route("GET", "/tickets/{ticket_id}", permission="tickets:read", summary="One ticket's page")
async def ticket(request: web.Request) -> web.StreamResponse:
    async with act(request, readable_ticket) as (session, row, who):
        t = await detail(session, row, who)
        sessions = await find_sessions(session, who, SessionQuery(ticket=row.id, limit=50))
        site_agents: list[dict[str, Any]] = []
        if who.allowed("agents:read", row.site_id):
            may_kind = [
                k
                for k, perms in KIND_PERMISSION.items()
                if all(who.allowed(p, row.site_id) for p in perms)
            ]
            site_agents = [
                {
                    "id": a.id,
                    "hostname": a.hostname,
                    "linked": a.id in t.agents,
                    # the session kinds this machine's policy and the caller's rights allow
                    "kinds": [k for k in labels.kinds_allowed(a.policy) if k in may_kind],
                }
                for a, _ in await fleet.list_agents(session, frozenset({row.site_id}))
            ]
        linkable = await problems_to_link(session, who, row.site_id, t)
        articles = [
            a
            for a in await kb_store.articles_linked_to(session, "ticket", row.id)
            if kb_store.can_read(kb_viewer(who), a)
        ]
    works = who.works_tickets(row.site_id)
    # the machine picked first in the session form: a linked one that allows a session
    session_agent = next(
        (a for a in site_agents if a["linked"] and a["kinds"]),
        next((a for a in site_agents if a["kinds"]), site_agents[0] if site_agents else None),
    )
    ctx = {
        "articles": [{"number": number_text(a.number), "title": a.title} for a in articles],
        "may_kb": works
        and who.allowed("kb:write", row.site_id)
        and row.status in ("resolved", "closed"),
        "t": t,
        "sessions": sessions,
        "site_agents": site_agents,
        "unlinked": [a for a in site_agents if not a["linked"]],
        "session_agent": session_agent,
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
        "may_problems": who.holds("problems:read"),
        "linkable": linkable if works else [],
    }
    return page(request, "ticket.html", ctx, title=f"{t.number} {t.title}")
