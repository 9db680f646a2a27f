"""Alert rules (`alerts:manage`) and the alerts they raise (`agents:read`)."""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.base.audit import Event
from server.itsm import alerts as pure
from server.store import auditlog, people
from server.store.models import Alert, AlertRule
from server.views.alerts import (
    AlertOut,
    AlertQuery,
    RuleOut,
    _rule_out,
    _visible,
    alert_items,
    visible_rules,
)
from server.web.authn import principal
from server.web.keys import ALERTS, DB
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
    async with request.app[DB]() as session:
        items = await visible_rules(session, principal(request))
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
    app = request.app
    who = principal(request)
    req = body(request, RuleIn)
    async with app[DB].begin() as session:
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
    await app[ALERTS].reload_rules()
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
    async with request.app[DB]() as session:
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
    app = request.app
    req = body(request, RulePatch)
    async with app[DB].begin() as session:
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
    await app[ALERTS].reload_rules()
    return json_response(out)


@routes.route(
    "DELETE",
    "/api/v1/alert-rules/{rule_id}",
    permission="alerts:manage",
    response=RuleOut,
    summary="Delete an alert rule (its alerts go with it)",
)
async def delete_rule(request: web.Request) -> web.Response:
    app = request.app
    async with app[DB].begin() as session:
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
    await app[ALERTS].reload_rules()
    return json_response(out)


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
    async with request.app[DB]() as session:
        items = await alert_items(session, principal(request), query(request, AlertQuery))
    return json_response(AlertList(items=items))
