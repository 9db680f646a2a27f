"""Tickets: list, create, read with timeline, lifecycle, comments, assignment,
escalation, linked agents, attached results, rating. `{ticket_id}` is an id
or a number (`FL-42`). Site staff see and comment on their own requests only.
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.principal import Principal
from server.itsm.tickets import number_text, priority_of
from server.ops import helprequests, ticketing
from server.store import fleet
from server.store.models import Agent, RunRecord, Ticket, TicketEvent
from server.views.admin import assignee, site_named
from server.views.tickets import (
    ListQuery,
    Priority,
    TicketDetail,
    TicketOut,
    TicketType,
    detail,
    find_tickets,
    readable_ticket,
    ticket_out,
    workable_ticket,
)
from server.web.act import act, answer, unit
from server.web.keys import CONFIG, REMOTE
from server.web.routing import ApiRouter, body, json_response, query
from shared.errors import Forbidden, Invalid

routes = ApiRouter("tickets")
REPEAT_HEADER = "X-Fieldlink-Repeat-Of"  # a site request folded into this open one


class TicketList(BaseModel):
    items: list[TicketOut]
    next: str | None = None


def repeat_answer(out: BaseModel, number: str) -> web.Response:
    """A repeat of the asker's open request: the first record, 200 (not 201),
    its number in `X-Fieldlink-Repeat-Of`."""
    resp = json_response(out, status=200)
    resp.headers[REPEAT_HEADER] = number
    return resp


@routes.route(
    "GET",
    "/api/v1/tickets",
    permission="tickets:read",
    query=ListQuery,
    response=TicketList,
    summary="Tickets you can see, newest first, with filters",
)
async def list_tickets(request: web.Request) -> web.Response:
    q = query(request, ListQuery)
    async with unit(request) as (session, who):
        rows = await find_tickets(session, who, q)
        items = [await ticket_out(session, t, who) for t in rows]
    nxt = str(rows[-1].number) if len(rows) == q.limit else None
    return json_response(TicketList(items=items, next=nxt))


class NewTicket(BaseModel):
    title: str = Field(min_length=1, max_length=300)
    description: str = Field("", max_length=20000)
    type: TicketType = "incident"
    site: str = Field(min_length=1, max_length=100)
    impact: int = Field(3, ge=1, le=3)
    urgency: int = Field(3, ge=1, le=3)
    priority: Priority | None = Field(None, description="override impact x urgency")
    agent_ids: list[str] = Field(default_factory=list, max_length=100)
    tier: Literal["site", "hq"] | None = Field(
        None, description="default: site when opened by site people, else hq"
    )
    assist: bool = Field(
        False,
        description="ask for someone at HQ to take over the machine (exactly one in "
        "agent_ids): a shell session offer waits in HQ's queue, the site's asking "
        "counting as its consent; for site staff and those who consent for the site",
    )


@routes.route(
    "POST",
    "/api/v1/tickets",
    errors=(404, 429),
    permission="tickets:write",
    body=NewTicket,
    response=TicketDetail,
    status=201,
    also=(200,),
    summary="Open a ticket (site people: a repeat of their open request answers 200 with "
    "it, and past the help request limits 429)",
)
async def create_ticket(request: web.Request) -> web.Response:
    app = request.app
    req = body(request, NewTicket)
    async with unit(request) as (session, who):
        site = await site_named(session, who, req.site, "tickets:write")
        staff = not who.sees_all_tickets(site.id)
        if req.assist:
            if not (staff or who.allowed("sessions:consent", site.id)):
                raise Forbidden(
                    "only the site's people can ask for someone to take over",
                    fields={"assist": "HQ requests sessions with POST /api/v1/sessions"},
                )
            if len(req.agent_ids) != 1:
                raise Invalid(
                    "name the machine to take over",
                    fields={"agent_ids": "assist needs exactly one machine"},
                )
        agents: list[Agent] = []
        for agent_id in req.agent_ids:
            found = await fleet.get_agent(session, agent_id)
            # site people asking for help name their own machine without agents:read
            may_name = who.allowed("agents:read", site.id) or req.assist
            if found is None or found[0].site_id != site.id or not may_name:
                raise Invalid(
                    "unknown agent", fields={"agent_ids": f"{agent_id}: not on this site"}
                )
            agents.append(found[0])
        if staff and req.priority is not None:
            raise Forbidden("site staff cannot set a priority", fields={"priority": "not allowed"})
        if staff:
            repeat = await _site_request(session, app, who, site.id, req)
            if repeat is not None:
                out = await detail(session, repeat, who)
                return repeat_answer(out, number_text(repeat.number))
        hq_side = who.allowed("tickets:write", None)
        ticket = await ticketing.create(
            session,
            site_id=site.id,
            title=req.title,
            description=req.description,
            type=req.type,
            impact=req.impact,
            urgency=req.urgency,
            priority=req.priority,
            source="console" if who.via == "session" else "api",
            tier=req.tier or ("hq" if hq_side and not staff else "site"),
            requester_id=who.user_id,
            requester_name=who.username,
            agent_ids=req.agent_ids,
            actor=who.actor(),
        )
        offer = None
        if req.assist:
            offer = await app[REMOTE].offer(
                session,
                agent=agents[0],
                ticket=ticket,
                reason=req.description or req.title,
                asked_by=who.username,
                actor=who.actor(),
            )
        out = await detail(session, ticket, who)
    if offer is not None:
        await app[REMOTE].push(offer)
    return answer(request, out)


async def _site_request(
    session: AsyncSession, app: web.Application, who: Principal, site_id: str, req: NewTicket
) -> Ticket | None:
    """A request from the site's people: 429 past the help request limits; the
    open request it repeats (the repeat added to it), or None for a new ticket."""
    asker = helprequests.Asker(
        site_id, req.agent_ids[0] if len(req.agent_ids) == 1 else None, who.username, who.user_id
    )
    limited = await helprequests.check(session, asker, helprequests.Limits.of(app[CONFIG].settings))
    if limited is not None:
        raise limited.error()
    if req.assist:
        return None
    text = f"{req.title}\n{req.description}".strip()
    repeat = await helprequests.open_repeat(session, asker, text)
    if repeat is not None:
        await helprequests.fold(session, repeat, who.actor(), text)
    return repeat


@routes.route(
    "GET",
    "/api/v1/tickets/{ticket_id}",
    permission="tickets:read",
    response=TicketDetail,
    summary="A ticket with its timeline and SLA clocks",
)
async def get_ticket(request: web.Request) -> web.Response:
    async with act(request, readable_ticket) as (session, ticket, who):
        return answer(request, await detail(session, ticket, who))


class TicketPatch(BaseModel):
    title: str | None = Field(None, min_length=1, max_length=300)
    description: str | None = Field(None, max_length=20000)
    type: TicketType | None = None
    impact: int | None = Field(None, ge=1, le=3)
    urgency: int | None = Field(None, ge=1, le=3)
    priority: Priority | None = None


@routes.route(
    "PATCH",
    "/api/v1/tickets/{ticket_id}",
    permission="tickets:write",
    body=TicketPatch,
    response=TicketDetail,
    summary="Change title, description, type, impact, urgency or priority",
)
async def patch_ticket(request: web.Request) -> web.Response:
    req = body(request, TicketPatch)
    async with act(request, workable_ticket) as (session, ticket, who):
        changed = req.model_dump(exclude_none=True)
        for key, value in changed.items():
            setattr(ticket, key, value)
        if ("impact" in changed or "urgency" in changed) and "priority" not in changed:
            ticket.priority = priority_of(ticket.impact, ticket.urgency)
        await ticketing.refresh_dues(session, ticket)
        await ticketing.record_event(
            session,
            ticket,
            who.actor(),
            "update",
            "update",
            data={"changed": sorted(changed), "priority": ticket.priority},
        )
        return answer(request, await detail(session, ticket, who))


class TransitionRequest(BaseModel):
    action: Literal["ack", "start", "wait", "resolve", "close", "reopen", "cancel"]
    reason: Literal["on_site", "on_requester", "on_vendor"] | None = Field(
        None, description="why it waits (action wait)"
    )
    note: str | None = Field(None, max_length=20000)
    resolution_code: str | None = Field(None, max_length=40)
    resolution_text: str | None = Field(None, max_length=20000)


@routes.route(
    "POST",
    "/api/v1/tickets/{ticket_id}/transition",
    errors=(409,),
    permission="tickets:write",
    body=TransitionRequest,
    response=TicketDetail,
    summary="Move a ticket through its lifecycle; 409 names the allowed actions",
)
async def transition_ticket(request: web.Request) -> web.Response:
    req = body(request, TransitionRequest)
    async with act(request, workable_ticket) as (session, ticket, who):
        await ticketing.act(
            session,
            ticket,
            req.action,
            who.actor(),
            reason=req.reason,
            note=req.note,
            resolution_code=req.resolution_code,
            resolution_text=req.resolution_text,
        )
        return answer(request, await detail(session, ticket, who))


class CommentRequest(BaseModel):
    body: str = Field(min_length=1, max_length=20000)
    internal: bool = Field(False, description="visible to IT only")


@routes.route(
    "POST",
    "/api/v1/tickets/{ticket_id}/comments",
    permission="tickets:write",
    body=CommentRequest,
    response=TicketDetail,
    status=201,
    summary="Comment (public, or internal for IT)",
)
async def comment(request: web.Request) -> web.Response:
    req = body(request, CommentRequest)
    async with act(request, readable_ticket) as (session, ticket, who):
        if not who.allowed("tickets:write", ticket.site_id):
            raise Forbidden("commenting needs tickets:write on this site")
        staff = not who.sees_all_tickets(ticket.site_id)
        if staff and req.internal:
            raise Forbidden("site staff cannot write internal notes", fields={"internal": "no"})
        await ticketing.comment(
            session,
            ticket,
            who.actor(),
            req.body,
            internal=req.internal,
            by_requester=ticket.requester_id == who.user_id,
        )
        return answer(request, await detail(session, ticket, who))


class AssignRequest(BaseModel):
    assignee: str | None = Field(description="user name or id; null to unassign")


@routes.route(
    "POST",
    "/api/v1/tickets/{ticket_id}/assign",
    permission="tickets:assign",
    body=AssignRequest,
    response=TicketDetail,
    summary="Assign or unassign",
)
async def assign(request: web.Request) -> web.Response:
    req = body(request, AssignRequest)
    async with act(request, workable_ticket) as (session, ticket, who):
        if not who.allowed("tickets:assign", ticket.site_id):
            raise Forbidden("assigning needs tickets:assign on this site")
        why = "that user cannot work tickets on this site"
        user = (
            await assignee(session, req.assignee, "tickets:write", ticket.site_id, "ticket", why)
            if req.assignee
            else None
        )
        await ticketing.assign(session, ticket, user, who.actor())
        return answer(request, await detail(session, ticket, who))


class EscalateRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=5000)


@routes.route(
    "POST",
    "/api/v1/tickets/{ticket_id}/escalate",
    errors=(409,),
    permission="tickets:assign",
    body=EscalateRequest,
    response=TicketDetail,
    summary="Escalate a site-tier ticket to HQ, with a reason",
)
async def escalate(request: web.Request) -> web.Response:
    req = body(request, EscalateRequest)
    async with act(request, workable_ticket) as (session, ticket, who):
        if not who.allowed("tickets:assign", ticket.site_id):
            raise Forbidden("escalating needs tickets:assign on this site")
        await ticketing.escalate(session, ticket, req.reason, who.actor())
        return answer(request, await detail(session, ticket, who))


class LinkRequest(BaseModel):
    agent_id: str


@routes.route(
    "POST",
    "/api/v1/tickets/{ticket_id}/agents",
    permission="tickets:write",
    body=LinkRequest,
    response=TicketDetail,
    summary="Link an agent of the ticket's site",
)
async def link_agent(request: web.Request) -> web.Response:
    req = body(request, LinkRequest)
    async with act(request, workable_ticket) as (session, ticket, who):
        agent = await session.get(Agent, req.agent_id)
        if agent is None or agent.site_id != ticket.site_id:
            raise Invalid("unknown agent", fields={"agent_id": "not on the ticket's site"})
        await ticketing.link_agent(session, ticket, agent.id, who.actor())
        return answer(request, await detail(session, ticket, who))


class AttachRequest(BaseModel):
    result_id: str


@routes.route(
    "POST",
    "/api/v1/tickets/{ticket_id}/results",
    permission="tickets:write",
    body=AttachRequest,
    response=TicketDetail,
    summary="Attach a stored run result to the ticket's timeline",
)
async def attach_result(request: web.Request) -> web.Response:
    req = body(request, AttachRequest)
    async with act(request, workable_ticket) as (session, ticket, who):
        record = await session.get(RunRecord, req.result_id)
        if (
            record is None
            or record.site_id != ticket.site_id
            or not who.allowed("diag:run", record.site_id)
        ):
            raise Invalid("unknown result", fields={"result_id": "no such result on this site"})
        await ticketing.record_event(
            session,
            ticket,
            who.actor(),
            "run",
            "attach_result",
            f"{record.name} on {record.agent_id}: {record.status}",
            internal=True,
            data={
                "run_id": record.id,
                "name": record.name,
                "agent_id": record.agent_id,
                "status": record.status,
            },
        )
        return answer(request, await detail(session, ticket, who))


class RatingRequest(BaseModel):
    score: int = Field(ge=1, le=5)
    comment: str = Field("", max_length=5000)


@routes.route(
    "POST",
    "/api/v1/tickets/{ticket_id}/rating",
    errors=(409,),
    permission="tickets:write",
    body=RatingRequest,
    response=TicketDetail,
    summary="The requester rates the help (1-5), once, after resolution",
)
async def rate(request: web.Request) -> web.Response:
    req = body(request, RatingRequest)
    async with act(request, readable_ticket) as (session, ticket, who):
        if ticket.requester_id != who.user_id:
            raise Forbidden("only the requester rates a ticket")
        worked = await session.scalar(
            select(TicketEvent.id)
            .where(
                TicketEvent.ticket_id == ticket.id,
                TicketEvent.actor_id == who.user_id,
                TicketEvent.kind.in_(("state", "assignment", "escalation")),
            )
            .limit(1)
        )
        if worked is not None or ticket.assignee_id == who.user_id:
            raise Forbidden("nobody rates a ticket they worked")
        await ticketing.rate(session, ticket, req.score, req.comment, who.actor())
        return answer(request, await detail(session, ticket, who))
