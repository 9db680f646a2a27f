"""Tickets in the database: lookup by id or number, timeline events."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from server.base.audit import Actor
from server.store.models import Counter, Ticket, TicketEvent

_NUMBER = re.compile(r"^FL-(\d{1,12})$", re.IGNORECASE)


async def find(session: AsyncSession, ref: str) -> Ticket | None:
    """A ticket by id (`ti_...`) or number (`FL-42`)."""
    match = _NUMBER.match(ref.strip())
    if match:
        return await session.scalar(select(Ticket).where(Ticket.number == int(match.group(1))))
    return await session.get(Ticket, ref)


async def next_number(session: AsyncSession, name: str = "ticket") -> int:
    res = await session.execute(
        update(Counter)
        .where(Counter.name == name)
        .values(value=Counter.value + 1)
        .returning(Counter.value)
    )
    value = res.scalar_one_or_none()
    if value is None:
        session.add(Counter(name=name, value=1))
        await session.flush()
        return 1
    return int(value)


async def add_event(
    session: AsyncSession,
    ticket_id: str,
    actor: Actor,
    kind: str,
    body: str = "",
    *,
    internal: bool = False,
    data: dict[str, Any] | None = None,
) -> TicketEvent:
    event = TicketEvent(
        ticket_id=ticket_id,
        actor_type=actor.type,
        actor_id=actor.id,
        actor_name=actor.name,
        kind=kind,
        internal=internal,
        body=body,
        data=data or {},
    )
    session.add(event)
    await session.flush()
    return event
