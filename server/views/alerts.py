"""Alert rules and the alerts they raised, as the caller may see them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.principal import Principal
from server.itsm.tickets import number_text
from server.store.models import Agent, Alert, AlertRule, Site, Ticket
from server.views.rows import from_row


class RuleOut(BaseModel):
    id: str
    name: str
    metric: str
    op: str
    threshold: float
    for_seconds: float
    clear_threshold: float | None
    priority: str
    diagnostics: list[str]
    site: str | None
    tags: list[str]
    enabled: bool
    auto_resolve: bool
    reopen_window_seconds: float
    created_at: datetime


async def _rule_out(session: AsyncSession, rule: AlertRule) -> RuleOut:
    site = await session.get(Site, rule.site_id) if rule.site_id else None
    return from_row(RuleOut, rule, site=site.name if site else None, tags=rule.tags or [])


def _visible(who: Principal, rule: AlertRule) -> bool:
    return who.allowed("alerts:manage", rule.site_id)


async def visible_rules(session: AsyncSession, who: Principal) -> list[RuleOut]:
    """Rules the caller manages (global rules are shown to every manager)."""
    rules = (await session.scalars(select(AlertRule).order_by(AlertRule.created_at))).all()
    return [
        await _rule_out(session, r)
        for r in rules
        if _visible(who, r) or (who.holds("alerts:manage") and r.site_id is None)
    ]


class AlertQuery(BaseModel):
    status: Literal["ok", "pending", "firing"] | None = None
    agent_id: str | None = None
    limit: int = Field(200, ge=1, le=1000)


class AlertOut(BaseModel):
    id: str
    rule_id: str
    rule: str
    agent_id: str
    hostname: str | None
    site_id: str
    status: str
    count: int
    last_value: float | None
    first_seen: datetime | None
    last_seen: datetime | None
    fired_at: datetime | None
    resolved_at: datetime | None
    ticket: str | None


async def alert_items(session: AsyncSession, who: Principal, q: AlertQuery) -> list[AlertOut]:
    """Alert states the caller may see (its agents:read scope), firing first."""
    scope = who.sites("agents:read")
    stmt = (
        select(Alert, AlertRule.name, Agent.hostname, Ticket.number)
        .join(AlertRule, AlertRule.id == Alert.rule_id)
        .join(Agent, Agent.id == Alert.agent_id)
        .outerjoin(Ticket, Ticket.id == Alert.ticket_id)
    )
    if scope is not None:
        stmt = stmt.where(Alert.site_id.in_(scope))
    if q.status:
        stmt = stmt.where(Alert.status == q.status)
    if q.agent_id:
        stmt = stmt.where(Alert.agent_id == q.agent_id)
    rows = (await session.execute(stmt.limit(q.limit))).all()
    order = {"firing": 0, "pending": 1, "ok": 2}
    return sorted(
        (
            from_row(
                AlertOut,
                a,
                rule=name,
                hostname=host,
                ticket=number_text(number) if number is not None else None,
            )
            for a, name, host, number in rows
        ),
        key=lambda x: (order.get(x.status, 3), x.rule, x.agent_id),
    )
