"""Problems as the caller may see them: the read models (`ProblemOut`, the
detail with linked incidents and history), the filtered list, who may
change one, and a problem by id or number within the caller's scope."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import Select, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.principal import Principal
from server.itsm import problems as pure
from server.itsm.tickets import number_text as ticket_number
from server.store import people, problems, tickets
from server.store.models import AlertRule, Problem, ProblemTicket, Site, Ticket, User
from server.views.rows import from_row
from shared.errors import Forbidden, Invalid, NotFound


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
    return from_row(
        ProblemOut,
        p,
        number=pure.number_text(p.number),
        site=site.name if site else None,
        assignee=assignee.username if assignee else None,
        origin_label=label,
        created_by=p.created_by_name,
        ticket_count=await problems.link_count(session, p.id),
        allowed_statuses=pure.allowed_statuses(p.status) if may_write(who, p) else [],
    )


async def detail(session: AsyncSession, p: Problem, who: Principal) -> ProblemDetail:
    base = await problem_out(session, p, who)
    linked = [
        from_row(LinkedTicket, t, number=ticket_number(t.number))
        for t in await problems.linked_tickets(session, p.id)
        if who.can_read_ticket(t.site_id, t.requester_id)
    ]
    history = [
        from_row(HistoryOut, e, actor=e.actor_name) for e in await problems.events(session, p.id)
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


async def writable_problem(session: AsyncSession, who: Principal, ref: str) -> Problem:
    """A problem the caller sees (else 404) and may work (else 403)."""
    problem = await readable_problem(session, who, ref)
    if not may_write(who, problem):
        raise Forbidden(
            "working this problem needs problems:write on its site"
            + (" (an HQ-wide problem: on every site)" if problem.site_id is None else "")
        )
    return problem


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
