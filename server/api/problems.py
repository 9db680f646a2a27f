"""Problem records: list (and HQ's proposals), open, read with linked
incidents and history, change, move through the lifecycle, link and unlink
incidents. `{problem_id}` is an id or a number (`PRB-7`).

Scope: a problem belongs to one site or is HQ-wide (no site). A caller with
problems:read on a site sees the site's problems and every problem tied to
one of the site's incidents; working a problem needs problems:write on its
site (an HQ-wide one: a global grant).
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.principal import Principal
from server.ops import problems as ops
from server.ops import problemstates
from server.store import tickets
from server.store.models import Ticket
from server.views.admin import assignee, site_named
from server.views.problems import (
    ListQuery,
    ProblemDetail,
    ProblemOut,
    detail,
    find_problems,
    problem_out,
    readable_problem,
    writable_problem,
)
from server.web.act import act, answer, unit
from server.web.routing import ApiRouter, body, json_response, query
from shared.errors import Forbidden, Invalid, NotFound

routes = ApiRouter("problems")

Priority = Literal["P1", "P2", "P3", "P4"]


class ProblemList(BaseModel):
    items: list[ProblemOut]
    next: str | None = None


@routes.route(
    "GET",
    "/api/v1/problems",
    permission="problems:read",
    query=ListQuery,
    response=ProblemList,
    summary="Problems you can see, newest first; status=proposed lists HQ's proposals",
)
async def list_problems(request: web.Request) -> web.Response:
    q = query(request, ListQuery)
    async with unit(request) as (session, who):
        rows = await find_problems(session, who, q)
        items = [await problem_out(session, p, who) for p in rows]
    nxt = str(rows[-1].number) if len(rows) == q.limit else None
    return json_response(ProblemList(items=items, next=nxt))


async def _assignee(session: AsyncSession, name: str | None, site_id: str | None) -> str | None:
    if not name:
        return None
    why = "that user cannot work this problem"
    return (await assignee(session, name, "problems:write", site_id, "problem", why)).id


async def _incident(session: AsyncSession, who: Principal, ref: str, field: str) -> Ticket:
    """An incident the caller sees all of its site's tickets for; else 422 naming `field`."""
    ticket = await tickets.find(session, ref)
    if ticket is None or not who.sees_all_tickets(ticket.site_id):
        raise Invalid("unknown ticket", fields={field: f"{ref}: no such ticket"})
    return ticket


class NewProblem(BaseModel):
    title: str = Field(min_length=1, max_length=300)
    description: str = Field("", max_length=20000)
    site: str | None = Field(
        None, min_length=1, max_length=100, description="the site it belongs to; none: HQ-wide"
    )
    impact: int = Field(3, ge=1, le=3)
    urgency: int = Field(3, ge=1, le=3)
    priority: Priority | None = Field(None, description="override impact x urgency")
    assignee: str | None = Field(None, description="user name or id of the owner")
    tickets: list[str] = Field(
        default_factory=list, max_length=200, description="incidents to link (FL-N or ids)"
    )


@routes.route(
    "POST",
    "/api/v1/problems",
    permission="problems:write",
    body=NewProblem,
    response=ProblemDetail,
    status=201,
    errors=(404,),
    summary="Open a problem record (on a site, or HQ-wide), optionally with incidents",
)
async def create_problem(request: web.Request) -> web.Response:
    req = body(request, NewProblem)
    async with unit(request) as (session, who):
        site_id: str | None = None
        if req.site is not None:
            site_id = (await site_named(session, who, req.site, "problems:write")).id
        elif not who.allowed("problems:write", None):
            raise Forbidden(
                "an HQ-wide problem needs problems:write on every site",
                fields={"site": "name your site"},
            )
        incidents = [
            await _incident(session, who, t, "tickets") for t in dict.fromkeys(req.tickets)
        ]
        problem = await ops.create(
            session,
            title=req.title,
            description=req.description,
            site_id=site_id,
            impact=req.impact,
            urgency=req.urgency,
            priority=req.priority,
            assignee_id=await _assignee(session, req.assignee, site_id),
            created_by=who.user_id,
            actor=who.actor(),
            incidents=incidents,
        )
        return answer(request, await detail(session, problem, who))


@routes.route(
    "GET",
    "/api/v1/problems/{problem_id}",
    permission="problems:read",
    response=ProblemDetail,
    summary="A problem with its linked incidents and history",
)
async def get_problem(request: web.Request) -> web.Response:
    async with act(request, readable_problem) as (session, problem, who):
        return answer(request, await detail(session, problem, who))


class ProblemPatch(BaseModel):
    title: str | None = Field(None, min_length=1, max_length=300)
    description: str | None = Field(None, max_length=20000)
    impact: int | None = Field(None, ge=1, le=3)
    urgency: int | None = Field(None, ge=1, le=3)
    priority: Priority | None = None
    assignee: str | None = Field(None, description='user name or id; "" to clear')
    root_cause: str | None = Field(None, max_length=20000)
    workaround: str | None = Field(None, max_length=20000)
    resolution: str | None = Field(None, max_length=20000)


@routes.route(
    "PATCH",
    "/api/v1/problems/{problem_id}",
    permission="problems:write",
    body=ProblemPatch,
    response=ProblemDetail,
    errors=(409,),
    summary="Change title, description, priority, owner, root cause, workaround or resolution",
)
async def patch_problem(request: web.Request) -> web.Response:
    req = body(request, ProblemPatch)
    async with act(request, writable_problem) as (session, problem, who):
        changes = req.model_dump(exclude_none=True)
        if "assignee" in changes:
            changes["assignee_id"] = await _assignee(
                session, changes.pop("assignee"), problem.site_id
            )
        if not changes:
            raise Invalid("nothing to change", fields={"body": "name a field to change"})
        changes = {k: v for k, v in changes.items() if getattr(problem, k) != v}
        if changes:
            await ops.update(session, problem, changes, who.actor())
        return answer(request, await detail(session, problem, who))


class TransitionRequest(BaseModel):
    status: Literal["new", "investigating", "known_error", "resolved", "closed", "dismissed"] = (
        Field(description="new accepts a proposal; dismissed dismisses it")
    )
    workaround: str | None = Field(None, max_length=20000, description="stored with the move")
    root_cause: str | None = Field(None, max_length=20000, description="stored with the move")
    resolution: str | None = Field(None, max_length=20000, description="stored with the move")
    reason: str | None = Field(None, max_length=5000, description="why a proposal is dismissed")
    note: str | None = Field(None, max_length=20000)
    resolve_incidents: bool = Field(
        False,
        description="with status resolved: also resolve the open linked incidents the caller "
        "may work (resolution code problem_resolved, the problem's resolution as text)",
    )


@routes.route(
    "POST",
    "/api/v1/problems/{problem_id}/transition",
    permission="problems:write",
    body=TransitionRequest,
    response=ProblemDetail,
    errors=(409,),
    summary="Move a problem to a status (accept or dismiss a proposal); 409 names the allowed "
    "ones, 422 the text a status needs (known_error: workaround; resolved: root cause and "
    "resolution; dismissed: reason)",
)
async def transition_problem(request: web.Request) -> web.Response:
    req = body(request, TransitionRequest)
    async with act(request, writable_problem) as (session, problem, who):
        await problemstates.move(
            session,
            problem,
            req.status,
            who.actor(),
            workaround=req.workaround,
            root_cause=req.root_cause,
            resolution=req.resolution,
            reason=req.reason,
            note=req.note,
            resolve_incidents=(lambda t: who.works_tickets(t.site_id))
            if req.resolve_incidents
            else None,
        )
        return answer(request, await detail(session, problem, who))


class LinkRequest(BaseModel):
    ticket: str = Field(min_length=1, max_length=100, description="FL-N or ticket id")


@routes.route(
    "POST",
    "/api/v1/problems/{problem_id}/tickets",
    permission="problems:write",
    body=LinkRequest,
    response=ProblemDetail,
    errors=(409,),
    summary="Link an incident to the problem (a site's problem: that site's incidents only)",
)
async def link_ticket(request: web.Request) -> web.Response:
    req = body(request, LinkRequest)
    async with act(request, writable_problem) as (session, problem, who):
        ticket = await _incident(session, who, req.ticket, "ticket")
        await ops.link(session, problem, ticket, who.actor())
        return answer(request, await detail(session, problem, who))


@routes.route(
    "DELETE",
    "/api/v1/problems/{problem_id}/tickets/{ticket_id}",
    permission="problems:write",
    response=ProblemDetail,
    summary="Unlink an incident from the problem",
)
async def unlink_ticket(request: web.Request) -> web.Response:
    async with act(request, writable_problem) as (session, problem, who):
        ticket = await tickets.find(session, request.match_info["ticket_id"])
        if ticket is None or not await ops.unlink(session, problem, ticket, who.actor()):
            raise NotFound("that ticket is not linked to this problem")
        return answer(request, await detail(session, problem, who))


class NoteRequest(BaseModel):
    body: str = Field(min_length=1, max_length=20000, description="findings, what was tried")


@routes.route(
    "POST",
    "/api/v1/problems/{problem_id}/notes",
    permission="problems:write",
    body=NoteRequest,
    response=ProblemDetail,
    status=201,
    summary="Add a work note to the problem's history",
)
async def add_note(request: web.Request) -> web.Response:
    req = body(request, NoteRequest)
    async with act(request, writable_problem) as (session, problem, who):
        if not req.body.strip():
            raise Invalid("the note is empty", fields={"body": "write something"})
        await ops.note(session, problem, who.actor(), req.body)
        return answer(request, await detail(session, problem, who))
