"""Problem records: list (and HQ's proposals), open, read with linked
incidents and history, change, move through the lifecycle, link and unlink
incidents. `{problem_id}` is an id or a number (`PRB-7`).

Scope: a problem belongs to one site or is HQ-wide (no site). A caller with
problems:read on a site sees the site's problems and every problem tied to
one of the site's incidents; working a problem needs problems:write on its
site (an HQ-wide one: a global grant).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field
from sqlalchemy import Select, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.principal import Principal
from server.itsm import problems as pure
from server.itsm.tickets import number_text as ticket_number
from server.ops import problems as ops
from server.store import people, problems, tickets
from server.store.models import AlertRule, Problem, ProblemTicket, Site, Ticket, User
from server.web.authn import principal
from server.web.keys import DB
from server.web.routing import ApiRouter, body, json_response, query
from shared.errors import Forbidden, Invalid, NotFound

routes = ApiRouter("problems")

Priority = Literal["P1", "P2", "P3", "P4"]


class ProblemOut(BaseModel):
    id: str
    number: str
    title: str
    description: str
    status: str
    impact: int
    urgency: int
    priority: str
    site: str | None = Field(description="the site's name; null for an HQ-wide problem")
    site_id: str | None
    assignee: str | None
    assignee_id: str | None
    root_cause: str
    workaround: str
    resolution: str
    origin: str = Field(description="manual, alert_rule (proposed) or reopened (proposed)")
    origin_ref: str | None = Field(description="the alert rule's id or the reopened ticket's id")
    origin_label: str | None = Field(description="the alert rule's name or the ticket's number")
    proposed_reason: str
    created_by: str
    created_at: datetime
    updated_at: datetime
    accepted_at: datetime | None
    known_error_at: datetime | None
    resolved_at: datetime | None
    closed_at: datetime | None
    dismissed_at: datetime | None
    ticket_count: int
    allowed_statuses: list[str] = Field(description="where the caller may move it now")


class LinkedTicket(BaseModel):
    id: str
    number: str
    title: str
    status: str
    priority: str
    site_id: str


class HistoryOut(BaseModel):
    id: int
    at: datetime
    kind: str
    actor: str | None
    actor_type: str
    body: str
    data: dict[str, Any]


class ProblemDetail(ProblemOut):
    tickets: list[LinkedTicket] = Field(description="the linked incidents the caller can read")
    history: list[HistoryOut]


class ProblemList(BaseModel):
    items: list[ProblemOut]
    next: str | None = None


def may_write(who: Principal, problem: Problem) -> bool:
    return who.allowed("problems:write", problem.site_id)


async def problem_out(session: AsyncSession, p: Problem, who: Principal) -> ProblemOut:
    site = await session.get(Site, p.site_id) if p.site_id else None
    assignee = await session.get(User, p.assignee_id) if p.assignee_id else None
    label: str | None = None
    if p.origin == "alert_rule" and p.origin_ref:
        rule = await session.get(AlertRule, p.origin_ref)
        label = rule.name if rule else None
    elif p.origin == "reopened" and p.origin_ref:
        ticket = await session.get(Ticket, p.origin_ref)
        label = ticket_number(ticket.number) if ticket else None
    return ProblemOut(
        id=p.id,
        number=pure.number_text(p.number),
        title=p.title,
        description=p.description,
        status=p.status,
        impact=p.impact,
        urgency=p.urgency,
        priority=p.priority,
        site=site.name if site else None,
        site_id=p.site_id,
        assignee=assignee.username if assignee else None,
        assignee_id=p.assignee_id,
        root_cause=p.root_cause,
        workaround=p.workaround,
        resolution=p.resolution,
        origin=p.origin,
        origin_ref=p.origin_ref,
        origin_label=label,
        proposed_reason=p.proposed_reason,
        created_by=p.created_by_name,
        created_at=p.created_at,
        updated_at=p.updated_at,
        accepted_at=p.accepted_at,
        known_error_at=p.known_error_at,
        resolved_at=p.resolved_at,
        closed_at=p.closed_at,
        dismissed_at=p.dismissed_at,
        ticket_count=await problems.link_count(session, p.id),
        allowed_statuses=pure.allowed_statuses(p.status) if may_write(who, p) else [],
    )


async def detail(session: AsyncSession, p: Problem, who: Principal) -> ProblemDetail:
    base = await problem_out(session, p, who)
    linked = [
        LinkedTicket(
            id=t.id,
            number=ticket_number(t.number),
            title=t.title,
            status=t.status,
            priority=t.priority,
            site_id=t.site_id,
        )
        for t in await problems.linked_tickets(session, p.id)
        if who.can_read_ticket(t.site_id, t.requester_id)
    ]
    history = [
        HistoryOut(
            id=e.id,
            at=e.at,
            kind=e.kind,
            actor=e.actor_name,
            actor_type=e.actor_type,
            body=e.body,
            data=e.data,
        )
        for e in await problems.events(session, p.id)
    ]
    return ProblemDetail(**base.model_dump(), tickets=linked, history=history)


def visible_problems(who: Principal) -> Select[Problem]:
    """Problems of the caller's sites, and those tied to its sites' incidents."""
    scope = who.sites("problems:read")
    stmt = select(Problem)
    if scope is not None:
        touching = (
            select(ProblemTicket.problem_id)
            .join(Ticket, Ticket.id == ProblemTicket.ticket_id)
            .where(Ticket.site_id.in_(scope))
        )
        stmt = stmt.where(or_(Problem.site_id.in_(scope), Problem.id.in_(touching)))
    return stmt


async def readable_problem(session: AsyncSession, who: Principal, ref: str) -> Problem:
    found = await problems.find(session, ref)
    if found is None:
        raise NotFound("not found")
    visible = await session.scalar(
        visible_problems(who).where(Problem.id == found.id).with_only_columns(Problem.id)
    )
    if visible is None:
        raise NotFound("not found")
    return found


async def writable_problem(
    session: AsyncSession, request: web.Request
) -> tuple[Problem, Principal]:
    who = principal(request)
    problem = await readable_problem(session, who, request.match_info["problem_id"])
    if not may_write(who, problem):
        raise Forbidden(
            "working this problem needs problems:write on its site"
            + (" (an HQ-wide problem: on every site)" if problem.site_id is None else "")
        )
    return problem, who


class ListQuery(BaseModel):
    status: str | None = Field(
        None,
        description='a status, comma-separated statuses, "open" (new, investigating, '
        'known_error) or "proposed" (HQ\'s proposals); default: every problem '
        "except proposals and dismissed ones",
    )
    site: str | None = Field(None, description="a site's name; `hq` for HQ-wide problems")
    assignee: str | None = Field(None, description='a user name, or "me"')
    origin: Literal["manual", "alert_rule", "reopened"] | None = None
    ticket: str | None = Field(None, description="problems tied to this ticket (FL-N or id)")
    q: str | None = Field(None, max_length=200, description="text in the title")
    after: int = Field(0, ge=0, description="cursor: problems numbered below this (newest first)")
    limit: int = Field(50, ge=1, le=500)


def parse_status(text: str | None) -> list[str]:
    if not text:
        return sorted(set(pure.STATUSES) - {"proposed", "dismissed"})
    if text == "open":
        return sorted(pure.OPEN)
    words = [w.strip() for w in text.split(",") if w.strip()]
    unknown = [w for w in words if w not in pure.STATUSES]
    if unknown or not words:
        raise Invalid(
            "unknown status",
            fields={
                "status": f"{', '.join(unknown) or text!r}: use open or " + ", ".join(pure.STATUSES)
            },
        )
    return words


async def find_problems(session: AsyncSession, who: Principal, q: ListQuery) -> list[Problem]:
    """The API's and the console's problem list: visible, filtered, newest first."""
    stmt = visible_problems(who).where(Problem.status.in_(parse_status(q.status)))
    if q.site == "hq":
        stmt = stmt.where(Problem.site_id.is_(None))
    elif q.site:
        site = await people.site_by_name(session, q.site)
        stmt = stmt.where(Problem.site_id == (site.id if site else "-"))
    if q.assignee:
        user_id = who.user_id
        if q.assignee != "me":
            user = await people.user_by_name(session, q.assignee)
            user_id = user.id if user else "-"
        stmt = stmt.where(Problem.assignee_id == user_id)
    if q.origin:
        stmt = stmt.where(Problem.origin == q.origin)
    if q.ticket:
        ticket = await tickets.find(session, q.ticket)
        stmt = stmt.where(
            Problem.id.in_(
                select(ProblemTicket.problem_id).where(
                    ProblemTicket.ticket_id == (ticket.id if ticket else "-")
                )
            )
        )
    if q.q:
        stmt = stmt.where(Problem.title.ilike(f"%{q.q}%"))
    if q.after:
        stmt = stmt.where(Problem.number < q.after)
    return list((await session.scalars(stmt.order_by(Problem.number.desc()).limit(q.limit))).all())


@routes.route(
    "GET",
    "/api/v1/problems",
    permission="problems:read",
    query=ListQuery,
    response=ProblemList,
    summary="Problems you can see, newest first; status=proposed lists HQ's proposals",
)
async def list_problems(request: web.Request) -> web.Response:
    who = principal(request)
    q = query(request, ListQuery)
    async with request.app[DB]() as session:
        rows = await find_problems(session, who, q)
        items = [await problem_out(session, p, who) for p in rows]
    nxt = str(rows[-1].number) if len(rows) == q.limit else None
    return json_response(ProblemList(items=items, next=nxt))


async def _assignee(session: AsyncSession, name: str | None, site_id: str | None) -> str | None:
    if not name:
        return None
    user = await people.user_by_name(session, name) or await session.get(User, name)
    if user is None or user.disabled:
        raise Invalid("unknown user", fields={"assignee": "no such user"})
    rights = await people.rights_for(session, user.id)
    from server.auth import rbac

    if not rbac.allowed(rights, "problems:write", site_id):
        raise Invalid(
            "that user cannot work this problem",
            fields={"assignee": "no problems:write on the problem's site"},
        )
    return user.id


async def _incidents(session: AsyncSession, who: Principal, refs: list[str]) -> list[Ticket]:
    out: list[Ticket] = []
    for ref in dict.fromkeys(refs):
        ticket = await tickets.find(session, ref)
        if ticket is None or not who.sees_all_tickets(ticket.site_id):
            raise Invalid("unknown ticket", fields={"tickets": f"{ref}: no such ticket"})
        out.append(ticket)
    return out


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
    who = principal(request)
    req = body(request, NewProblem)
    async with request.app[DB].begin() as session:
        site_id: str | None = None
        if req.site is not None:
            site = await people.site_by_name(session, req.site)
            if site is None or not who.allowed("problems:write", site.id):
                raise NotFound("site not found", fields={"site": "no such site"})
            site_id = site.id
        elif not who.allowed("problems:write", None):
            raise Forbidden(
                "an HQ-wide problem needs problems:write on every site",
                fields={"site": "name your site"},
            )
        incidents = await _incidents(session, who, req.tickets)
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
        out = await detail(session, problem, who)
    return json_response(out, status=201)


@routes.route(
    "GET",
    "/api/v1/problems/{problem_id}",
    permission="problems:read",
    response=ProblemDetail,
    summary="A problem with its linked incidents and history",
)
async def get_problem(request: web.Request) -> web.Response:
    who = principal(request)
    async with request.app[DB]() as session:
        problem = await readable_problem(session, who, request.match_info["problem_id"])
        out = await detail(session, problem, who)
    return json_response(out)


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
    async with request.app[DB].begin() as session:
        problem, who = await writable_problem(session, request)
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
        out = await detail(session, problem, who)
    return json_response(out)


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
    async with request.app[DB].begin() as session:
        problem, who = await writable_problem(session, request)
        await ops.move(
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
        out = await detail(session, problem, who)
    return json_response(out)


class LinkRequest(BaseModel):
    ticket: str = Field(min_length=1, max_length=100, description="FL-N or ticket id")


async def _linkable(session: AsyncSession, who: Principal, ref: str) -> Ticket:
    ticket = await tickets.find(session, ref)
    if ticket is None or not who.sees_all_tickets(ticket.site_id):
        raise Invalid("unknown ticket", fields={"ticket": f"{ref}: no such ticket"})
    return ticket


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
    async with request.app[DB].begin() as session:
        problem, who = await writable_problem(session, request)
        ticket = await _linkable(session, who, req.ticket)
        await ops.link(session, problem, ticket, who.actor())
        out = await detail(session, problem, who)
    return json_response(out)


@routes.route(
    "DELETE",
    "/api/v1/problems/{problem_id}/tickets/{ticket_id}",
    permission="problems:write",
    response=ProblemDetail,
    summary="Unlink an incident from the problem",
)
async def unlink_ticket(request: web.Request) -> web.Response:
    async with request.app[DB].begin() as session:
        problem, who = await writable_problem(session, request)
        ref = request.match_info["ticket_id"]
        ticket = await tickets.find(session, ref)
        if ticket is None or not await ops.unlink(session, problem, ticket, who.actor()):
            raise NotFound("that ticket is not linked to this problem")
        out = await detail(session, problem, who)
    return json_response(out)


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
    async with request.app[DB].begin() as session:
        problem, who = await writable_problem(session, request)
        if not req.body.strip():
            raise Invalid("the note is empty", fields={"body": "write something"})
        await ops.note(session, problem, who.actor(), req.body)
        out = await detail(session, problem, who)
    return json_response(out, status=201)
