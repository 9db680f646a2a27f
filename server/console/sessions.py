"""Remote sessions: the list, one session's page (state followed live,
consent, end, the in-browser terminal on the API's WebSocket, live watch,
recording replay) and the site technician's pending consents."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.auth.principal import Principal
from server.console import i18n, live
from server.console.render import page
from server.itsm.consent import LIVE
from server.views.sessions import ListQuery, find_sessions, readable_session, session_out
from server.web.act import act, unit
from server.web.authn import principal
from server.web.keys import DB
from server.web.routing import ApiRouter

routes = ApiRouter("console", console=True)
STATES = ("requested", "awaiting_consent", "active", "ended", "denied", "expired", "failed")


@routes.route("GET", "/sessions", permission="tickets:read", summary="Remote sessions")
async def sessions(request: web.Request) -> web.StreamResponse:
    state = request.query.get("state", "")
    origin = request.query.get("origin", "")
    q = ListQuery(
        state=state if state in STATES else None,
        origin=origin if origin in ("hq", "site") else None,
        limit=200,
    )
    async with unit(request) as (session, who):
        rows = await find_sessions(session, who, q)
    ctx = {"rows": rows, "state": q.state or "", "origin": q.origin or "", "states": STATES}
    return page(request, "sessions.html", ctx, title=i18n.gettext("Sessions"))


@routes.route(
    "GET", "/sessions/{session_id}", permission="tickets:read", summary="One remote session"
)
async def session_page(request: web.Request) -> web.StreamResponse:
    async with act(request, readable_session) as (session, rs, who):
        out = await session_out(session, rs)
    site = rs.site_id
    mine = rs.requested_by == who.user_id
    ctx: dict[str, Any] = {
        "s": out,
        "mine": mine,
        "live_states": sorted(LIVE),
        "may_consent": who.allowed("sessions:consent", site) and not mine,
        "may_end": mine
        or who.allowed("sessions:consent", site)
        or who.allowed("users:admin", site),
        "may_accept": rs.origin == "site" and who.allowed("sessions:request", site),
        "may_type": mine and rs.kind == "shell",
        "may_watch": not mine
        and rs.kind == "shell"
        and any(who.allowed(p, site) for p in ("sessions:consent", "shell:open", "audit:read")),
        "may_replay": who.allowed("audit:read", site) and who.allowed("tickets:read", site),
    }
    return page(request, "session.html", ctx, title=f"{i18n.gettext('Session')} {out.ticket}")


async def pending(app: web.Application, who: Principal) -> list[Any]:
    async with app[DB]() as session:
        rows = await find_sessions(session, who, ListQuery(state="awaiting_consent", limit=200))
    return [s for s in rows if who.allowed("sessions:consent", s.site_id)]


@routes.route(
    "GET", "/consents", permission="sessions:consent", summary="Sessions waiting for your consent"
)
async def consents(request: web.Request) -> web.StreamResponse:
    rows = await pending(request.app, principal(request))
    return page(request, "consents.html", {"rows": rows}, title=i18n.gettext("Consents"))


@routes.route(
    "GET",
    "/events/consents",
    permission="sessions:consent",
    summary="Pending consents, live (server-sent events)",
)
async def consent_events(request: web.Request) -> web.StreamResponse:
    return await live.fragments(request, "consents_list.html", "rows", pending)
