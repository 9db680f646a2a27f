"""Alert rules (`alerts:manage`) and the alerts they raise (`agents:read`)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.api.authn import Principal, principal
from server.api.routing import ApiRouter, PatchBody, body, json_response, query
from server.audit import Event
from server.context import services
from server.itsm import alerts as pure
from server.itsm.tickets import number_text
from server.store import auditlog, people
from server.store.models import Agent, Alert, AlertRule, Site, Ticket
from shared.errors import NotFound
from shared.numbers import FiniteFloat

routes = ApiRouter("alerts")

Op = Literal[">", ">=", "<", "<=", "==", "!="]
Priority = Literal["P1", "P2", "P3", "P4"]


class RuleIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    metric: str = Field(
        description="cpu.percent, memory.percent, swap.percent, load.1m, "
        "disk[/var].percent, disk[*].percent, agent.offline (seconds), ..."
    )
    op: Op
    threshold: FiniteFloat
    for_seconds: FiniteFloat = Field(0.0, ge=0, le=7 * 86400)
    clear_threshold: FiniteFloat | None = Field(
        None, description="hysteresis; default the threshold"
    )
    priority: Priority = "P3"
    diagnostics: list[str] = Field(
        default_factory=list,
        max_length=10,
        description="diagnostics to run on firing (auto-triage)",
    )
    site: str | None = Field(None, description="only this site (default: every site)")
    tags: list[str] = Field(default_factory=list, description="only agents with all these tags")
    enabled: bool = True
    auto_resolve: bool = Field(
        True, description="resolve the ticket on recovery if no human touched it"
    )
    reopen_window_seconds: FiniteFloat = Field(86400.0, ge=0, le=30 * 86400)

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        pure.check_metric(value)
        return value


class RulePatch(PatchBody):
    nullable = frozenset({"clear_threshold"})

    name: str | None = Field(None, min_length=1, max_length=200)
    op: Op | None = None
    threshold: FiniteFloat | None = None
    for_seconds: FiniteFloat | None = Field(None, ge=0, le=7 * 86400)
    clear_threshold: FiniteFloat | None = None
    priority: Priority | None = None
    diagnostics: list[str] | None = Field(None, max_length=10)
    tags: list[str] | None = None
    enabled: bool | None = None
    auto_resolve: bool | None = None
    reopen_window_seconds: FiniteFloat | None = Field(None, ge=0, le=30 * 86400)


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


class RuleList(BaseModel):
    items: list[RuleOut]
    next: str | None = None


async def _rule_out(session: AsyncSession, rule: AlertRule) -> RuleOut:
    site = await session.get(Site, rule.site_id) if rule.site_id else None
    return RuleOut(
        id=rule.id,
        name=rule.name,
        metric=rule.metric,
        op=rule.op,
        threshold=rule.threshold,
        for_seconds=rule.for_seconds,
        clear_threshold=rule.clear_threshold,
        priority=rule.priority,
        diagnostics=rule.diagnostics,
        site=site.name if site else None,
        tags=rule.tags or [],
        enabled=rule.enabled,
        auto_resolve=rule.auto_resolve,
        reopen_window_seconds=rule.reopen_window_seconds,
        created_at=rule.created_at,
    )


def _visible(who: Principal, rule: AlertRule) -> bool:
    return who.allowed("alerts:manage", rule.site_id)


@routes.route(
    "GET",
    "/api/v1/alert-rules",
    permission="alerts:manage",
    response=RuleList,
    summary="Alert rules you manage",
)
async def list_rules(request: web.Request) -> web.Response:
    async with services(request).sessions() as session:
        items = await visible_rules(session, principal(request))
    return json_response(RuleList(items=items))


async def visible_rules(session: AsyncSession, who: Principal) -> list[RuleOut]:
    """Rules the caller manages (global rules are shown to every manager)."""
    rules = (await session.scalars(select(AlertRule).order_by(AlertRule.created_at))).all()
    return [
        await _rule_out(session, r)
        for r in rules
        if _visible(who, r) or (who.holds("alerts:manage") and r.site_id is None)
    ]


@routes.route(
    "POST",
    "/api/v1/alert-rules",
    errors=(404,),
    permission="alerts:manage",
    body=RuleIn,
    response=RuleOut,
    status=201,
    summary="Create an alert rule",
)
async def create_rule(request: web.Request) -> web.Response:
    svc = services(request)
    who = principal(request)
    req = body(request, RuleIn)
    async with svc.sessions.begin() as session:
        site_id = None
        if req.site:
            site = await people.site_by_name(session, req.site)
            if site is None or not who.allowed("alerts:manage", site.id):
                raise NotFound("site not found", fields={"site": "no such site"})
            site_id = site.id
        else:
            who.require("alerts:manage", None)
        rule = AlertRule(**req.model_dump(exclude={"site"}), site_id=site_id)
        session.add(rule)
        await session.flush()
        await auditlog.append(
            session,
            who.actor(),
            Event(
                "alert_rule.create",
                target_type="alert_rule",
                target_id=rule.id,
                site_id=site_id,
                details=req.model_dump(),
            ),
        )
        out = await _rule_out(session, rule)
    await svc.alerts.reload_rules()
    return json_response(out, status=201)


async def _load_rule(session: AsyncSession, request: web.Request) -> AlertRule:
    rule = await session.get(AlertRule, request.match_info["rule_id"])
    if rule is None or not _visible(principal(request), rule):
        raise NotFound("not found")
    return rule


@routes.route(
    "GET",
    "/api/v1/alert-rules/{rule_id}",
    permission="alerts:manage",
    response=RuleOut,
    summary="One alert rule",
)
async def get_rule(request: web.Request) -> web.Response:
    async with services(request).sessions() as session:
        out = await _rule_out(session, await _load_rule(session, request))
    return json_response(out)


@routes.route(
    "PATCH",
    "/api/v1/alert-rules/{rule_id}",
    permission="alerts:manage",
    body=RulePatch,
    response=RuleOut,
    summary="Change an alert rule",
)
async def patch_rule(request: web.Request) -> web.Response:
    svc = services(request)
    req = body(request, RulePatch)
    async with svc.sessions.begin() as session:
        rule = await _load_rule(session, request)
        changes = req.model_dump(exclude_unset=True)
        for key, value in changes.items():
            setattr(rule, key, value)
        await auditlog.append(
            session,
            principal(request).actor(),
            Event(
                "alert_rule.update",
                target_type="alert_rule",
                target_id=rule.id,
                site_id=rule.site_id,
                details=changes,
            ),
        )
        out = await _rule_out(session, rule)
    await svc.alerts.reload_rules()
    return json_response(out)


@routes.route(
    "DELETE",
    "/api/v1/alert-rules/{rule_id}",
    permission="alerts:manage",
    response=RuleOut,
    summary="Delete an alert rule (its alerts go with it)",
)
async def delete_rule(request: web.Request) -> web.Response:
    svc = services(request)
    async with svc.sessions.begin() as session:
        rule = await _load_rule(session, request)
        out = await _rule_out(session, rule)
        for alert in (await session.scalars(select(Alert).where(Alert.rule_id == rule.id))).all():
            await session.delete(alert)
        await session.delete(rule)
        await auditlog.append(
            session,
            principal(request).actor(),
            Event(
                "alert_rule.delete",
                target_type="alert_rule",
                target_id=rule.id,
                site_id=rule.site_id,
                details={"name": rule.name},
            ),
        )
    await svc.alerts.reload_rules()
    return json_response(out)


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


class AlertList(BaseModel):
    items: list[AlertOut]
    next: str | None = None


@routes.route(
    "GET",
    "/api/v1/alerts",
    permission="agents:read",
    query=AlertQuery,
    response=AlertList,
    summary="Alert states per (rule, agent), firing first",
)
async def list_alerts(request: web.Request) -> web.Response:
    async with services(request).sessions() as session:
        items = await alert_items(session, principal(request), query(request, AlertQuery))
    return json_response(AlertList(items=items))


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
            AlertOut(
                id=a.id,
                rule_id=a.rule_id,
                rule=name,
                agent_id=a.agent_id,
                hostname=host,
                site_id=a.site_id,
                status=a.status,
                count=a.count,
                last_value=a.last_value,
                first_seen=a.first_seen,
                last_seen=a.last_seen,
                fired_at=a.fired_at,
                resolved_at=a.resolved_at,
                ticket=number_text(number) if number is not None else None,
            )
            for a, name, host, number in rows
        ),
        key=lambda x: (order.get(x.status, 3), x.rule, x.agent_id),
    )
