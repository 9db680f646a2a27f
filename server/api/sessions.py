"""Remote sessions: request, consent, accept a site's request, end. The
terminal WebSocket and recordings are in `server.api.terminal`, file
transfer in `server.api.files`.

No ticket, no session: every session belongs to an open ticket on the
machine's site, needs `sessions:request` plus the kind's permission, and a
TOTP code verified within the last few minutes (step-up).
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from server.auth.principal import Principal
from server.engine.remote import KIND_PERMISSION, Sessions
from server.itsm.consent import FINAL
from server.itsm.tickets import OPEN, number_text
from server.store import fleet, tickets
from server.store.models import Agent
from server.views.sessions import (
    ListQuery,
    SessionOut,
    _asked_by,
    find_sessions,
    readable_session,
    session_out,
)
from server.web.act import act, answer, fetch, unit
from server.web.keys import CONFIG, REMOTE
from server.web.routing import ApiRouter, body, json_response, query
from shared.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from shared.numbers import FiniteFloat

routes = ApiRouter("sessions")

Kind = Literal["shell", "exec", "files"]


def sessions_of(request: web.Request) -> Sessions:
    return request.app[REMOTE]


class SessionRequest(BaseModel):
    agent_id: str
    ticket_id: str = Field(description="id or number (FL-N) of an open ticket on the agent's site")
    kind: Kind = "shell"
    reason: str = Field("", max_length=2000)
    max_minutes: int = Field(60, ge=1, le=480)


class SessionList(BaseModel):
    items: list[SessionOut]
    next: str | None = None


def require_step_up(app: web.Application, who: Principal) -> None:
    minutes = app[CONFIG].settings.step_up_minutes
    if not who.mfa_within(minutes):
        raise Unauthorized(
            f"a TOTP code verified within the last {minutes:g} minutes is "
            'needed: POST /api/v1/auth/step-up {"code"}',
            code="step_up_required",
        )


def require_kind(who: Principal, kind: str, site_id: str) -> None:
    needed = ("sessions:request", *KIND_PERMISSION[kind])
    missing = [perm for perm in needed if not who.allowed(perm, site_id)]
    if missing:
        raise Forbidden(f"a {kind} session needs {', '.join(missing)} on this site")


def check_agent_policy(agent: Agent, kind: str) -> None:
    """What the machine itself says it will refuse, refused early with its reason."""
    pol = agent.policy or {}
    if kind == "shell" and pol.get("allow_shell") is False:
        raise Conflict("this machine's policy does not allow shells (allow_shell = false)")
    if kind == "exec" and pol.get("allow_exec") is False:
        raise Conflict("this machine's policy does not allow plain commands (allow_exec = false)")
    if kind == "exec" and pol.get("allowed_programs") == []:
        raise Conflict(
            "this machine's policy lets plain commands run no program: allow_shell = false "
            "and its allowed_programs is empty (docs/agent-runs.md#plain-commands-the-allow-list)"
        )


@routes.route(
    "POST",
    "/api/v1/sessions",
    errors=(404, 409),
    permission="sessions:request",
    body=SessionRequest,
    response=SessionOut,
    status=201,
    summary="Request a remote session on a machine for an open ticket (step-up 2FA)",
)
async def create_session(request: web.Request) -> web.Response:
    app = request.app
    req = body(request, SessionRequest)
    async with unit(request) as (session, who):
        found = await fleet.get_agent(session, req.agent_id)
        if found is None or not who.allowed("agents:read", found[0].site_id):
            raise NotFound("not found")
        agent = found[0]
        require_kind(who, req.kind, agent.site_id)
        ticket = await tickets.find(session, req.ticket_id)
        if ticket is None or not who.allowed("tickets:read", ticket.site_id):
            raise Invalid("unknown ticket", fields={"ticket_id": "no such ticket"})
        if ticket.site_id != agent.site_id:
            raise Invalid(
                "the ticket belongs to another site",
                fields={"ticket_id": "not on the machine's site"},
            )
        if ticket.status not in OPEN:
            raise Invalid(
                f"ticket {number_text(ticket.number)} is {ticket.status}",
                fields={"ticket_id": "must be open"},
            )
        if agent.revoked_at is not None:
            raise Conflict("the agent is revoked")
        check_agent_policy(agent, req.kind)
        require_step_up(app, who)
        rs = await sessions_of(request).request(
            session,
            agent=agent,
            ticket=ticket,
            kind=req.kind,
            reason=req.reason,
            max_minutes=req.max_minutes,
            requested_by=who.user_id,
            requested_by_name=who.username,
            actor=who.actor(),
        )
        out = await session_out(session, rs)
    await sessions_of(request).push(rs)
    return answer(request, out)


@routes.route(
    "GET",
    "/api/v1/sessions",
    permission="tickets:read",
    query=ListQuery,
    response=SessionList,
    summary="Sessions you can see; `state=requested&origin=site` is the queue of "
    "sites asking for help",
)
async def list_sessions(request: web.Request) -> web.Response:
    async with unit(request) as (session, who):
        items = await find_sessions(session, who, query(request, ListQuery))
    return json_response(SessionList(items=items))


class GetQuery(BaseModel):
    wait: FiniteFloat = Field(
        0,
        ge=0,
        le=30,
        description="hold the answer until the state changes (or this many seconds pass)",
    )
    state: str | None = Field(None, description="with wait: the state the caller last saw")


@routes.route(
    "GET",
    "/api/v1/sessions/{session_id}",
    permission="tickets:read",
    query=GetQuery,
    response=SessionOut,
    summary="A session (optionally waiting for its next change)",
)
async def get_session(request: web.Request) -> web.Response:
    q = query(request, GetQuery)
    rs, _ = await fetch(request, readable_session)
    if q.wait and (q.state is None or q.state == rs.state) and rs.state not in FINAL:
        await sessions_of(request).wait_change(rs.id, q.wait)
    async with act(request, readable_session) as (session, rs, _):
        return answer(request, await session_out(session, rs))


class ConsentRequest(BaseModel):
    approve: bool


@routes.route(
    "POST",
    "/api/v1/sessions/{session_id}/consent",
    errors=(409,),
    permission="sessions:consent",
    body=ConsentRequest,
    response=SessionOut,
    summary="Approve or deny a session for your site",
)
async def consent(request: web.Request) -> web.Response:
    req = body(request, ConsentRequest)
    async with act(request, readable_session) as (session, rs, who):
        who.require("sessions:consent", rs.site_id)
        if rs.requested_by == who.user_id:
            raise Forbidden("you cannot consent to your own session")
        await sessions_of(request).answer(
            session, rs, req.approve, by=who.username, via="user", actor=who.actor()
        )
        out = await session_out(session, rs)
    await sessions_of(request).push(rs)
    return answer(request, out)


@routes.route(
    "POST",
    "/api/v1/sessions/{session_id}/accept",
    errors=(409,),
    permission="sessions:request",
    response=SessionOut,
    summary="Take a session a site asked for (same rights and step-up as a request)",
)
async def accept(request: web.Request) -> web.Response:
    async with act(request, readable_session) as (session, rs, who):
        require_kind(who, rs.kind, rs.site_id)
        agent = await session.get(Agent, rs.agent_id)
        if agent is not None:
            check_agent_policy(agent, rs.kind)
        require_step_up(request.app, who)
        await sessions_of(request).accept_offer(
            session, rs, user_id=who.user_id, username=who.username, actor=who.actor()
        )
        out = await session_out(session, rs)
    await sessions_of(request).push(rs)
    return answer(request, out)


class EndRequest(BaseModel):
    reason: str = Field("ended by the engineer", max_length=500)


@routes.route(
    "POST",
    "/api/v1/sessions/{session_id}/end",
    permission="tickets:read",
    body=EndRequest,
    response=SessionOut,
    summary="End a session: its engineer, whoever asked for it at the site, or an admin "
    "or site technician of its site",
)
async def end_session(request: web.Request) -> web.Response:
    req = body(request, EndRequest)
    async with act(request, readable_session, write=False) as (session, rs, who):
        asked = rs.origin == "site" and await _asked_by(session, who, rs)
    if (
        rs.requested_by != who.user_id
        and not asked
        and not (
            who.allowed("sessions:consent", rs.site_id) or who.allowed("users:admin", rs.site_id)
        )
    ):
        raise Forbidden(
            "only the session's engineer, whoever asked for it, an admin or the site's "
            "technician can end it"
        )
    await sessions_of(request).end(rs.id, req.reason, by=who.username, actor=who.actor())
    async with act(request, readable_session, write=False) as (session, rs, _):
        return answer(request, await session_out(session, rs))
