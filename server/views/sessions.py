"""Remote sessions as the caller may see them: the list (filters by ticket,
state, origin, machine), one session, and its read model `SessionOut`."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.principal import Principal
from server.itsm.consent import LIVE
from server.itsm.tickets import number_text
from server.store import tickets
from server.store.models import Agent, RemoteSession, Ticket
from server.views.rows import from_row
from shared.errors import NotFound


class SessionOut(BaseModel):
    id: str
    agent_id: str
    hostname: str | None
    site_id: str
    ticket_id: str
    ticket: str
    kind: str
    state: str
    origin: str
    reason: str
    max_minutes: int
    requested_by: str
    consent_required: bool
    consent_by: str | None
    consent_via: str | None
    consent_at: datetime | None
    expires_at: datetime | None
    started_at: datetime | None
    ends_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None
    ended_by: str | None
    recording: bool
    recording_sha256: str | None
    created_at: datetime


async def session_out(session: AsyncSession, rs: RemoteSession) -> SessionOut:
    ticket = await session.get(Ticket, rs.ticket_id)
    agent = await session.get(Agent, rs.agent_id)
    return from_row(
        SessionOut,
        rs,
        hostname=agent.hostname if agent else None,
        ticket=number_text(ticket.number) if ticket else "?",
        requested_by=rs.requested_by_name,
        recording=rs.recording_sha256 is not None,
    )


class ListQuery(BaseModel):
    ticket: str | None = None
    state: str | None = Field(None, description="a state, or comma-separated states")
    origin: Literal["site", "hq"] | None = (
        None  # the order of tickets.tier (typing caches equal Literals)
    )
    agent_id: str | None = None
    active: bool = False
    limit: int = Field(100, ge=1, le=1000)


def _visible_sites(who: Principal) -> frozenset[str] | None:
    tickets_scope = who.sites("tickets:read")
    agents_scope = who.sites("agents:read")
    if tickets_scope is None:
        return agents_scope
    if agents_scope is None:
        return tickets_scope
    return tickets_scope & agents_scope


async def find_sessions(session: AsyncSession, who: Principal, q: ListQuery) -> list[SessionOut]:
    """The API's and the console's session list: the caller's sites, filtered, newest first."""
    scope = _visible_sites(who)
    stmt = select(RemoteSession)
    if scope is not None:
        # and the sessions on the caller's own requests (site staff asking for help)
        own = select(Ticket.id).where(Ticket.requester_id == who.user_id)
        stmt = stmt.where(or_(RemoteSession.site_id.in_(scope), RemoteSession.ticket_id.in_(own)))
    if q.ticket:
        ticket = await tickets.find(session, q.ticket)
        stmt = stmt.where(RemoteSession.ticket_id == (ticket.id if ticket else "-"))
    if q.state:
        stmt = stmt.where(RemoteSession.state.in_(q.state.split(",")))
    if q.active:
        stmt = stmt.where(RemoteSession.state.in_(sorted(LIVE)))
    if q.origin:
        stmt = stmt.where(RemoteSession.origin == q.origin)
    if q.agent_id:
        stmt = stmt.where(RemoteSession.agent_id == q.agent_id)
    rows = (
        await session.scalars(stmt.order_by(RemoteSession.created_at.desc()).limit(q.limit))
    ).all()
    return [await session_out(session, rs) for rs in rows]


async def readable_session(session: AsyncSession, who: Principal, session_id: str) -> RemoteSession:
    """A session the caller may see (its site's tickets, its own, or one on a
    ticket the caller asked for); else 404."""
    rs = await session.get(RemoteSession, session_id)
    if rs is None:
        raise NotFound("not found")
    if not (
        who.sees_all_tickets(rs.site_id)
        or rs.requested_by == who.user_id
        or await _asked_by(session, who, rs)
    ):
        raise NotFound("not found")
    return rs


async def _asked_by(session: AsyncSession, who: Principal, rs: RemoteSession) -> bool:
    """Whether `rs` is on a ticket the caller opened (their own request)."""
    ticket = await session.get(Ticket, rs.ticket_id)
    return ticket is not None and ticket.requester_id == who.user_id
