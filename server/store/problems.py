"""Problem records in the database: lookup by id or number, history events,
linked incidents."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.base.audit import Actor
from server.store.models import Problem, ProblemEvent, ProblemTicket, Ticket

_NUMBER = re.compile(r"^PRB-(\d{1,12})$", re.IGNORECASE)
COUNTER = "problem"


async def find(session: AsyncSession, ref: str) -> Problem | None:
    """A problem by id (`pb_...`) or number (`PRB-7`)."""
    match = _NUMBER.match(ref.strip())
    if match:
        return await session.scalar(select(Problem).where(Problem.number == int(match.group(1))))
    return await session.get(Problem, ref)


async def add_event(
    session: AsyncSession,
    problem_id: str,
    actor: Actor,
    kind: str,
    body: str = "",
    *,
    data: dict[str, Any] | None = None,
) -> ProblemEvent:
    event = ProblemEvent(
        problem_id=problem_id,
        actor_type=actor.type,
        actor_id=actor.id,
        actor_name=actor.name,
        kind=kind,
        body=body,
        data=data or {},
    )
    session.add(event)
    await session.flush()
    return event


async def events(session: AsyncSession, problem_id: str) -> list[ProblemEvent]:
    stmt = select(ProblemEvent).where(ProblemEvent.problem_id == problem_id)
    return list((await session.scalars(stmt.order_by(ProblemEvent.id))).all())


async def linked_tickets(session: AsyncSession, problem_id: str) -> list[Ticket]:
    stmt = (
        select(Ticket)
        .join(ProblemTicket, ProblemTicket.ticket_id == Ticket.id)
        .where(ProblemTicket.problem_id == problem_id)
        .order_by(Ticket.number)
    )
    return list((await session.scalars(stmt)).all())


async def problems_of_ticket(
    session: AsyncSession, ticket_id: str, *, include: frozenset[str] | None = None
) -> list[Problem]:
    stmt = (
        select(Problem)
        .join(ProblemTicket, ProblemTicket.problem_id == Problem.id)
        .where(ProblemTicket.ticket_id == ticket_id)
        .order_by(Problem.number)
    )
    if include is not None:
        stmt = stmt.where(Problem.status.in_(sorted(include)))
    return list((await session.scalars(stmt)).all())


async def link_count(session: AsyncSession, problem_id: str) -> int:
    from sqlalchemy import func

    stmt = select(func.count()).where(ProblemTicket.problem_id == problem_id)
    return int(await session.scalar(stmt) or 0)
