"""Alert rules (`alerts:manage`) and the alerts they raise (`agents:read`)."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.principal import Principal
from server.itsm import alerts as pure
from server.store.models import Alert, AlertRule
from server.views.admin import site_named
from server.views.alerts import (
    AlertOut,
    AlertQuery,
    RuleOut,
    _rule_out,
    _visible,
    alert_items,
    visible_rules,
)
from server.web.act import act, answer, audit, unit
from server.web.keys import ALERTS
from server.web.routing import ApiRouter, PatchBody, body, json_response, query
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


class RuleList(BaseModel):
    items: list[RuleOut]
    next: str | None = None


@routes.route(
    "GET",
    "/api/v1/alert-rules",
    permission="alerts:manage",
    response=RuleList,
    summary="Alert rules you manage",
)
async def list_rules(request: web.Request) -> web.Response:
    async with unit(request) as (session, who):
        items = await visible_rules(session, who)
    return json_response(RuleList(items=items))


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
    req = body(request, RuleIn)
    async with unit(request) as (session, who):
        site_id = None
        if req.site:
            site_id = (await site_named(session, who, req.site, "alerts:manage")).id
        else:
            who.require("alerts:manage", None)
        rule = AlertRule(**req.model_dump(exclude={"site"}), site_id=site_id)
        session.add(rule)
        await session.flush()
        await _audit(session, who, "alert_rule.create", rule, req.model_dump())
        out = await _rule_out(session, rule)
    await request.app[ALERTS].reload_rules()
    return answer(request, out)


async def _audit(
    session: AsyncSession, who: Principal, action: str, rule: AlertRule, details: dict[str, Any]
) -> None:
    target = ("alert_rule", rule.id)
    await audit(session, who, action, target, site_id=rule.site_id, details=details)


async def _load_rule(session: AsyncSession, who: Principal, rule_id: str) -> AlertRule:
    rule = await session.get(AlertRule, rule_id)
    if rule is None or not _visible(who, rule):
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
    async with act(request, _load_rule) as (session, rule, _):
        return answer(request, await _rule_out(session, rule))


@routes.route(
    "PATCH",
    "/api/v1/alert-rules/{rule_id}",
    permission="alerts:manage",
    body=RulePatch,
    response=RuleOut,
    summary="Change an alert rule",
)
async def patch_rule(request: web.Request) -> web.Response:
    req = body(request, RulePatch)
    async with act(request, _load_rule) as (session, rule, who):
        changes = req.model_dump(exclude_unset=True)
        for key, value in changes.items():
            setattr(rule, key, value)
        await _audit(session, who, "alert_rule.update", rule, changes)
        out = await _rule_out(session, rule)
    await request.app[ALERTS].reload_rules()
    return answer(request, out)


@routes.route(
    "DELETE",
    "/api/v1/alert-rules/{rule_id}",
    permission="alerts:manage",
    response=RuleOut,
    summary="Delete an alert rule (its alerts go with it)",
)
async def delete_rule(request: web.Request) -> web.Response:
    async with act(request, _load_rule) as (session, rule, who):
        out = await _rule_out(session, rule)
        for alert in (await session.scalars(select(Alert).where(Alert.rule_id == rule.id))).all():
            await session.delete(alert)
        await session.delete(rule)
        await _audit(session, who, "alert_rule.delete", rule, {"name": rule.name})
    await request.app[ALERTS].reload_rules()
    return answer(request, out)


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
    async with unit(request) as (session, who):
        items = await alert_items(session, who, query(request, AlertQuery))
    return json_response(AlertList(items=items))
