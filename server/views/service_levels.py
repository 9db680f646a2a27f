"""KPIs over a period and scope (site, engineer) as the API answers them and
the console's reports page shows them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy import select

from server.auth.principal import Principal
from server.itsm import kpi
from server.ops import ticketing
from server.store import people
from server.store.models import Ticket, TicketEvent, User


class KpiQuery(BaseModel):
    site: str | None = None
    engineer: str | None = Field(None, description="assignee user name")
    from_: AwareDatetime | None = Field(
        None, alias="from", description="tickets created at or after (RFC 3339, with offset)"
    )
    to: AwareDatetime | None = Field(None, description="tickets created before (RFC 3339)")
    group_by: Literal["site", "engineer", "priority", "week"] | None = None


class KpiReport(BaseModel):
    group_by: str | None
    groups: dict[str, dict[str, Any]]


async def kpi_report(session: Any, who: Principal, q: KpiQuery) -> KpiReport:
    """KPIs over the tickets of the caller's kpi:read scope, filtered and grouped."""
    scope = who.sites("kpi:read")
    stmt = select(Ticket)
    if scope is not None:
        stmt = stmt.where(Ticket.site_id.in_(scope))
    if q.site:
        site = await people.site_by_name(session, q.site)
        if site is None or (scope is not None and site.id not in scope):
            return KpiReport(group_by=q.group_by, groups=kpi.grouped([], q.group_by))
        stmt = stmt.where(Ticket.site_id == site.id)
    if q.engineer:
        user = await people.user_by_name(session, q.engineer)
        stmt = stmt.where(Ticket.assignee_id == (user.id if user else "-"))
    if q.from_:
        stmt = stmt.where(Ticket.created_at >= q.from_)
    if q.to:
        stmt = stmt.where(Ticket.created_at < q.to)
    rows = (await session.scalars(stmt)).all()
    facts = [await fact_of(session, t) for t in rows]
    return KpiReport(group_by=q.group_by, groups=kpi.grouped(facts, q.group_by))


async def fact_of(session: Any, t: Ticket) -> kpi.Fact:
    from server.store.models import Site

    site = await session.get(Site, t.site_id)
    assignee = await session.get(User, t.assignee_id) if t.assignee_id else None
    events = (
        await session.execute(
            select(TicketEvent.kind, TicketEvent.at, TicketEvent.data).where(
                TicketEvent.ticket_id == t.id, TicketEvent.kind.in_(("state", "alert_fired"))
            )
        )
    ).all()
    reopens = [
        at
        for kind, at, data in events
        if kind == "state" and data.get("to") == "in_progress" and data.get("from") == "resolved"
    ]
    firings = sum(1 for kind, _, _ in events if kind == "alert_fired")
    clocks = await ticketing.clocks(session, t)
    states = {}
    for kind, c in clocks.items():
        states[kind] = {"met": "met", "missed": "missed", "breached": "breached"}.get(
            c.state, "open"
        )
    return kpi.Fact(
        id=t.id,
        site=site.name if site else t.site_id,
        priority=t.priority,
        assignee=assignee.username if assignee else None,
        created_at=t.created_at,
        acknowledged_at=t.acknowledged_at,
        first_response_at=t.first_response_at,
        resolved_at=t.resolved_at,
        paused_seconds=t.paused_seconds,
        status=t.status,
        tier_resolved=t.resolved_tier,
        escalations=t.escalation_count,
        reopens=reopens,
        rating=t.rating,
        has_requester=bool(t.requester_id or t.requester_agent_id),
        source=t.source,
        alert_firings=firings,
        auto_resolved=t.auto_resolved,
        resolution_code=t.resolution_code,
        sla=states,
    )
