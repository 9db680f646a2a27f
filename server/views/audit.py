"""The audit trail as the caller may read it: entries of its `audit:read`
scope, filtered by site, ticket, actor, action and time, oldest first."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.auth.principal import Principal
from server.store import auditlog, people, tickets
from server.store.models import AuditEntry
from server.views.rows import from_row


class AuditQuery(BaseModel):
    actor: str | None = Field(None, description="user name or id")
    action: str | None = Field(None, description="exact, or a prefix ending in * (auth.*)")
    site: str | None = Field(None, description="site name")
    ticket: str | None = Field(None, description="ticket id or number (FL-42)")
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    after: int = Field(0, ge=0, description="cursor: entries with seq greater than this")
    limit: int = Field(100, ge=1, le=1000)


class AuditItem(BaseModel):
    seq: int
    at: datetime
    actor_type: str
    actor_id: str | None
    actor_name: str | None
    source: str | None
    action: str
    target_type: str | None
    target_id: str | None
    site_id: str | None
    ticket_id: str | None
    outcome: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


def audit_item(e: AuditEntry) -> AuditItem:
    return from_row(AuditItem, e)


async def audit_page(
    db: async_sessionmaker[AsyncSession], who: Principal, q: AuditQuery, limit: int
) -> list[AuditEntry]:
    """Entries of the caller's audit:read scope, filtered, oldest first."""
    scope = who.sites("audit:read")
    async with db() as session:
        site_id = None
        if q.site:
            site = await people.site_by_name(session, q.site)
            if site is None or (scope is not None and site.id not in scope):
                return []
            site_id = site.id
        ticket_id = q.ticket
        if q.ticket:
            ticket = await tickets.find(session, q.ticket)
            if ticket is None:
                return []
            ticket_id = ticket.id
        return await auditlog.query(
            session,
            actor=q.actor,
            action=q.action,
            site_ids=scope,
            site_id=site_id,
            ticket_id=ticket_id,
            since=q.since,
            until=q.until,
            after_seq=q.after,
            limit=limit,
        )
