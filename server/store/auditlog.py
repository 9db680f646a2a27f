"""Audit trail storage: append (hash-chained), list, verify.

`append` runs inside the caller's transaction, so the audit entry commits
together with the change it records, or not at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from server.base.audit import GENESIS, Actor, ChainBreak, Event, entry_fields, entry_hash, verify
from server.store.models import AuditEntry, AuditHead, utcnow


async def append(session: AsyncSession, actor: Actor, event: Event) -> AuditEntry:
    return (await append_many(session, [(actor, event)]))[0]


async def append_many(
    session: AsyncSession, entries: Sequence[tuple[Actor, Event]]
) -> list[AuditEntry]:
    """Append entries in order, chained, in the caller's transaction. Takes the
    head row's lock first (one update for the whole batch): it serialises
    concurrent appenders."""
    if not entries:
        return []
    count = len(entries)
    res = await session.execute(
        update(AuditHead)
        .where(AuditHead.id == 1)
        .values(seq=AuditHead.seq + count)
        .returning(AuditHead.seq, AuditHead.hash)
    )
    row = res.one_or_none()
    if row is None:
        session.add(AuditHead(id=1, seq=count, hash=GENESIS))
        await session.flush()
        last, prev = count, GENESIS
    else:
        last, prev = int(row[0]), str(row[1])
    at = utcnow()
    made: list[AuditEntry] = []
    for seq, (actor, event) in enumerate(entries, start=last - count + 1):
        digest = entry_hash(entry_fields(seq, at, actor, event, prev))
        made.append(
            AuditEntry(
                seq=seq,
                at=at,
                actor_type=actor.type,
                actor_id=actor.id,
                actor_name=actor.name,
                source=actor.source,
                action=event.action,
                target_type=event.target_type,
                target_id=event.target_id,
                site_id=event.site_id,
                ticket_id=event.ticket_id,
                outcome=event.outcome,
                details=event.details,
                prev_hash=prev,
                hash=digest,
            )
        )
        prev = digest
    session.add_all(made)
    await session.execute(update(AuditHead).where(AuditHead.id == 1).values(hash=prev))
    return made


def fields_of(entry: AuditEntry) -> dict[str, Any]:
    return entry_fields(
        entry.seq,
        entry.at,
        Actor(entry.actor_type, entry.actor_id, entry.actor_name, entry.source),
        Event(
            action=entry.action,
            outcome=entry.outcome,
            target_type=entry.target_type,
            target_id=entry.target_id,
            site_id=entry.site_id,
            ticket_id=entry.ticket_id,
            details=entry.details,
        ),
        entry.prev_hash,
    )


async def _walk(session: AsyncSession, batch: int = 2000) -> AsyncIterator[AuditEntry]:
    after = 0
    while True:
        rows = (
            await session.scalars(
                select(AuditEntry)
                .where(AuditEntry.seq > after)
                .order_by(AuditEntry.seq)
                .limit(batch)
            )
        ).all()
        if not rows:
            return
        for row in rows:
            yield row
        after = rows[-1].seq


async def verify_chain(session: AsyncSession) -> tuple[int, ChainBreak | None]:
    """(entries checked, first break or None). Also catches a cut-off tail
    by comparing with the head row."""
    pairs: list[tuple[dict[str, Any], str]] = []
    count = 0
    last_seq, last_hash = 0, GENESIS
    async for entry in _walk(session):
        pairs.append((fields_of(entry), entry.hash))
        count += 1
        last_seq, last_hash = entry.seq, entry.hash
    broken = verify(pairs)
    if broken is not None:
        return count, broken
    head = await session.get(AuditHead, 1)
    if head is not None and (head.seq != last_seq or head.hash != last_hash):
        return count, ChainBreak(
            last_seq + 1, f"entries after {last_seq} are missing (head is at {head.seq})"
        )
    return count, None


async def query(
    session: AsyncSession,
    *,
    actor: str | None = None,
    action: str | None = None,
    site_ids: frozenset[str] | None = None,
    site_id: str | None = None,
    ticket_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after_seq: int = 0,
    limit: int = 100,
) -> list[AuditEntry]:
    stmt = select(AuditEntry).where(AuditEntry.seq > after_seq)
    if actor:
        stmt = stmt.where((AuditEntry.actor_name == actor) | (AuditEntry.actor_id == actor))
    if action:
        if action.endswith("*"):
            stmt = stmt.where(AuditEntry.action.startswith(action[:-1]))
        else:
            stmt = stmt.where(AuditEntry.action == action)
    if site_ids is not None:
        stmt = stmt.where(AuditEntry.site_id.in_(site_ids))
    if site_id:
        stmt = stmt.where(AuditEntry.site_id == site_id)
    if ticket_id:
        stmt = stmt.where(AuditEntry.ticket_id == ticket_id)
    if since:
        stmt = stmt.where(AuditEntry.at >= since)
    if until:
        stmt = stmt.where(AuditEntry.at < until)
    return list((await session.scalars(stmt.order_by(AuditEntry.seq).limit(limit))).all())
