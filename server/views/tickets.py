"""Tickets as the caller may see them: the read models (`TicketOut`, the
detail with its timeline, SLA clocks, machines and problem), the filtered
list, and a ticket by id or number within the caller's scope (404 outside)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import Select, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.principal import Principal
from server.itsm import problems as problem_rules
from server.itsm.tickets import OPEN, allowed_actions, number_text
from server.ops import ticketing
from server.store import people, tickets
from server.store import problems as problem_store
from server.store.models import Agent, Site, Ticket, TicketAgent, TicketEvent, User
from server.views.rows import from_row
from shared.errors import Forbidden, NotFound

TicketType = Literal["incident", "service_request", "problem", "change"]


Priority = Literal["P1", "P2", "P3", "P4"]


class ClockOut(BaseModel):
    state: str = Field(description="running, warning, breached, met, missed or paused")
    due: datetime | None
    target_seconds: float
    elapsed_seconds: float


class TicketOut(BaseModel):
    id: str
    number: str
    title: str
    description: str
    type: str
    impact: int
    urgency: int
    priority: str
    status: str
    waiting_reason: str | None
    site: str
    site_id: str
    requester: str
    requester_id: str | None
    assignee: str | None
    assignee_id: str | None
    tier: str
    source: str
    agents: list[str]
    created_at: datetime
    updated_at: datetime
    acknowledged_at: datetime | None
    first_response_at: datetime | None
    resolved_at: datetime | None
    closed_at: datetime | None
    paused_seconds: float
    reopen_count: int
    escalation_count: int
    resolution_code: str | None
    resolution_text: str | None
    rating: int | None
    rating_comment: str | None
    sla: dict[str, ClockOut]
    allowed_actions: list[str]


class EventOut(BaseModel):
    id: int
    at: datetime
    kind: str
    actor: str | None
    actor_type: str
    internal: bool
    body: str
    data: dict[str, Any]


class MachineRef(BaseModel):
    id: str
    hostname: str


class TicketProblem(BaseModel):
    id: str
    number: str
    title: str
    status: str
    workaround: str | None = Field(
        description="the known error's workaround (null until the problem is a known error)"
    )


class TicketDetail(TicketOut):
    machines: list[MachineRef] = Field(
        default_factory=list, description="the linked machines (`agents`) with their host names"
    )
    problems: list[TicketProblem] = Field(
        description="problem records this incident is linked to (dismissed proposals left out)"
    )
    timeline: list[EventOut]


async def ticket_out(session: AsyncSession, t: Ticket, who: Principal) -> TicketOut:
    site = await session.get(Site, t.site_id)
    assignee = await session.get(User, t.assignee_id) if t.assignee_id else None
    clocks = await ticketing.clocks(session, t)
    return from_row(
        TicketOut,
        t,
        number=number_text(t.number),
        site=site.name if site else "?",
        requester=t.requester_name,
        assignee=assignee.username if assignee else None,
        agents=await ticketing.agents_of(session, t.id),
        sla={
            k: ClockOut(
                state=c.state,
                due=c.due,
                target_seconds=c.target,
                elapsed_seconds=round(c.elapsed, 1),
            )
            for k, c in clocks.items()
        },
        allowed_actions=allowed_actions(t.status) if who.works_tickets(t.site_id) else [],
    )


async def readable_ticket(session: AsyncSession, who: Principal, ref: str) -> Ticket:
    """A ticket by id or number, if the caller may read it; else 404."""
    ticket = await tickets.find(session, ref)
    if ticket is None or not who.can_read_ticket(ticket.site_id, ticket.requester_id):
        raise NotFound("not found")
    return ticket


async def workable_ticket(session: AsyncSession, who: Principal, ref: str) -> Ticket:
    """A ticket the caller reads (else 404) and works: tickets:write with
    agents:read on its site (else 403)."""
    ticket = await readable_ticket(session, who, ref)
    if not who.works_tickets(ticket.site_id):
        raise Forbidden("working this ticket needs tickets:write with agents:read on its site")
    return ticket


class ListQuery(BaseModel):
    site: str | None = None
    status: str | None = Field(None, description='a status, comma-separated statuses, or "open"')
    priority: Priority | None = None
    assignee: str | None = Field(None, description='a user name, or "me"')
    mine: bool = Field(False, description="assigned to me or requested by me")
    source: str | None = None
    type: TicketType | None = None
    tier: Literal["site", "hq"] | None = None
    q: str | None = Field(None, max_length=200, description="text in the title")
    agent_id: str | None = None
    after: int = Field(0, ge=0, description="cursor: tickets numbered below this (newest first)")
    limit: int = Field(50, ge=1, le=500)


def visible_tickets(who: Principal) -> Select[Ticket]:
    """Tickets the caller may read: its scope, and where it cannot see every
    ticket of a site (site staff), only the requests it opened."""
    scope = who.sites("tickets:read")
    full = who.sites("agents:read")
    stmt = select(Ticket)
    if scope is not None:
        stmt = stmt.where(Ticket.site_id.in_(scope))
    if full is not None:
        stmt = stmt.where(or_(Ticket.site_id.in_(full), Ticket.requester_id == who.user_id))
    return stmt


async def find_tickets(session: AsyncSession, who: Principal, q: ListQuery) -> list[Ticket]:
    """The API's and the console's ticket list: visible tickets, filtered, newest first."""
    stmt = visible_tickets(who)
    if q.site:
        site = await people.site_by_name(session, q.site)
        if site is None:
            return []
        stmt = stmt.where(Ticket.site_id == site.id)
    if q.status:
        wanted = sorted(OPEN) if q.status == "open" else q.status.split(",")
        stmt = stmt.where(Ticket.status.in_(wanted))
    if q.priority:
        stmt = stmt.where(Ticket.priority == q.priority)
    if q.assignee:
        if q.assignee == "me":
            stmt = stmt.where(Ticket.assignee_id == who.user_id)
        else:
            user = await people.user_by_name(session, q.assignee)
            stmt = stmt.where(Ticket.assignee_id == (user.id if user else "-"))
    if q.mine:
        stmt = stmt.where(
            or_(Ticket.assignee_id == who.user_id, Ticket.requester_id == who.user_id)
        )
    if q.source:
        stmt = stmt.where(Ticket.source == q.source)
    if q.type:
        stmt = stmt.where(Ticket.type == q.type)
    if q.tier:
        stmt = stmt.where(Ticket.tier == q.tier)
    if q.q:
        stmt = stmt.where(Ticket.title.ilike(f"%{q.q}%"))
    if q.agent_id:
        stmt = stmt.where(
            Ticket.id.in_(select(TicketAgent.ticket_id).where(TicketAgent.agent_id == q.agent_id))
        )
    if q.after:
        stmt = stmt.where(Ticket.number < q.after)
    return list((await session.scalars(stmt.order_by(Ticket.number.desc()).limit(q.limit))).all())


async def detail(session: AsyncSession, ticket: Ticket, who: Principal) -> TicketDetail:
    base = await ticket_out(session, ticket, who)
    stmt = select(TicketEvent).where(TicketEvent.ticket_id == ticket.id).order_by(TicketEvent.id)
    if not who.sees_all_tickets(ticket.site_id):
        stmt = stmt.where(TicketEvent.internal.is_(False))
    events = (await session.scalars(stmt)).all()
    hosts = dict(
        (
            await session.execute(select(Agent.id, Agent.hostname).where(Agent.id.in_(base.agents)))
        ).all()
    )
    linked = await problem_store.problems_of_ticket(
        session, ticket.id, include=frozenset(problem_rules.STATUSES) - {"dismissed"}
    )
    return TicketDetail(
        **base.model_dump(),
        machines=[MachineRef(id=a, hostname=hosts.get(a, a)) for a in base.agents],
        problems=[
            TicketProblem(
                id=p.id,
                number=problem_rules.number_text(p.number),
                title=p.title,
                status=p.status,
                workaround=p.workaround if p.status == "known_error" else None,
            )
            for p in linked
        ],
        timeline=[from_row(EventOut, e, actor=e.actor_name) for e in events],
    )
