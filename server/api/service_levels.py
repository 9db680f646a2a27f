"""SLA policies, KPI reports and webhooks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.crypto import seal
from server.auth.principal import Principal
from server.itsm import sla
from server.store.models import OutboxItem, SlaPolicy, Webhook
from server.views.rows import from_row
from server.views.service_levels import KpiQuery, KpiReport, kpi_report
from server.web.act import act, answer, audit, unit
from server.web.authn import principal
from server.web.keys import CONFIG
from server.web.routing import ApiRouter, body, json_response, query
from shared.errors import Invalid, NotFound
from shared.numbers import FiniteFloat

routes = ApiRouter("service levels")


# --- SLA policies ------------------------------------------------------------------------


class PolicyOut(BaseModel):
    priority: str
    ack_seconds: float
    response_seconds: float
    resolve_seconds: float
    warn_at: float
    business_hours: bool
    default: bool


class PolicyList(BaseModel):
    items: list[PolicyOut]
    next: str | None = None


class PolicyIn(BaseModel):
    ack_seconds: FiniteFloat = Field(gt=0, le=365 * 86400)
    response_seconds: FiniteFloat = Field(gt=0, le=365 * 86400)
    resolve_seconds: FiniteFloat = Field(gt=0, le=365 * 86400)
    warn_at: FiniteFloat = Field(0.8, gt=0, lt=1)
    business_hours: bool = True


@routes.route(
    "GET",
    "/api/v1/sla-policies",
    permission="tickets:read",
    response=PolicyList,
    summary="SLA targets per priority (seconds of business or wall time)",
)
async def list_policies(request: web.Request) -> web.Response:
    async with unit(request) as (session, _):
        rows = {r.priority: r for r in (await session.scalars(select(SlaPolicy))).all()}
    items = []
    for prio, default in sla.DEFAULT_TARGETS.items():
        row = rows.get(prio)
        t = (
            default
            if row is None
            else sla.Targets(
                row.ack_seconds,
                row.response_seconds,
                row.resolve_seconds,
                row.warn_at,
                row.business_hours,
            )
        )
        items.append(
            PolicyOut(
                priority=prio,
                ack_seconds=t.ack,
                response_seconds=t.response,
                resolve_seconds=t.resolve,
                warn_at=t.warn_at,
                business_hours=t.business_hours,
                default=row is None,
            )
        )
    return json_response(PolicyList(items=items))


@routes.route(
    "PUT",
    "/api/v1/sla-policies/{priority}",
    permission="users:admin",
    body=PolicyIn,
    response=PolicyOut,
    summary="Set the SLA targets of a priority",
)
async def put_policy(request: web.Request) -> web.Response:
    who = principal(request)
    who.require("users:admin", None)
    prio = request.match_info["priority"]
    if prio not in sla.DEFAULT_TARGETS:
        raise NotFound("not found")
    req = body(request, PolicyIn)
    if not req.ack_seconds <= req.resolve_seconds:
        raise Invalid(
            "acknowledge must not be later than resolve",
            fields={"ack_seconds": "greater than resolve_seconds"},
        )
    async with unit(request) as (session, _):
        row = await session.get(SlaPolicy, prio)
        if row is None:
            row = SlaPolicy(priority=prio, **req.model_dump())
            session.add(row)
        else:
            for key, value in req.model_dump().items():
                setattr(row, key, value)
        await audit(
            session, who, "sla_policy.update", ("sla_policy", prio), details=req.model_dump()
        )
    return json_response(PolicyOut(priority=prio, default=False, **req.model_dump()))


# --- KPIs --------------------------------------------------------------------------------


@routes.route(
    "GET",
    "/api/v1/kpis",
    permission="kpi:read",
    query=KpiQuery,
    response=KpiReport,
    summary="Service KPIs per site, engineer, priority or week",
)
async def kpis(request: web.Request) -> web.Response:
    async with unit(request) as (session, who):
        report = await kpi_report(session, who, query(request, KpiQuery))
    return json_response(report)


# --- webhooks ---------------------------------------------------------------------------


class WebhookIn(BaseModel):
    url: str = Field(min_length=8, max_length=2000)
    secret: str = Field(min_length=16, max_length=200, description="HMAC key; never shown again")
    events: list[str] = Field(
        default_factory=list,
        description='e.g. ["ticket.create", "ticket.*", "problem.*"]; empty = all',
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    enabled: bool
    created_at: datetime
    pending: int = 0
    failed: int = 0


class WebhookList(BaseModel):
    items: list[WebhookOut]
    next: str | None = None


async def _hook_out(session: Any, hook: Webhook) -> WebhookOut:
    from sqlalchemy import func

    pending = await session.scalar(
        select(func.count())
        .select_from(OutboxItem)
        .where(
            OutboxItem.webhook_id == hook.id,
            OutboxItem.delivered_at.is_(None),
            OutboxItem.failed_at.is_(None),
        )
    )
    failed = await session.scalar(
        select(func.count())
        .select_from(OutboxItem)
        .where(OutboxItem.webhook_id == hook.id, OutboxItem.failed_at.is_not(None))
    )
    return from_row(WebhookOut, hook, pending=pending or 0, failed=failed or 0)


@routes.route(
    "GET",
    "/api/v1/webhooks",
    permission="users:admin",
    response=WebhookList,
    summary="Outbound webhooks for ticket and problem events (secrets never shown)",
)
async def list_webhooks(request: web.Request) -> web.Response:
    async with unit(request) as (session, who):
        who.require("users:admin", None)
        hooks = (await session.scalars(select(Webhook).order_by(Webhook.created_at))).all()
        items = [await _hook_out(session, h) for h in hooks]
    return json_response(WebhookList(items=items))


@routes.route(
    "POST",
    "/api/v1/webhooks",
    permission="users:admin",
    body=WebhookIn,
    response=WebhookOut,
    status=201,
    summary="Add a webhook; deliveries are HMAC-SHA256 signed with its secret",
)
async def create_webhook(request: web.Request) -> web.Response:
    app = request.app
    req = body(request, WebhookIn)
    async with unit(request) as (session, who):
        who.require("users:admin", None)
        hook = Webhook(url=req.url, events=req.events, secret_enc=b"")
        session.add(hook)
        await session.flush()
        hook.secret_enc = seal(
            app[CONFIG].master_key, req.secret.encode(), f"webhook:{hook.id}".encode()
        )
        details = {"url": req.url, "events": req.events}
        await audit(session, who, "webhook.create", ("webhook", hook.id), details=details)
        return answer(request, await _hook_out(session, hook))


async def _webhook(session: AsyncSession, who: Principal, webhook_id: str) -> Webhook:
    who.require("users:admin", None)
    hook = await session.get(Webhook, webhook_id)
    if hook is None:
        raise NotFound("not found")
    return hook


@routes.route(
    "DELETE",
    "/api/v1/webhooks/{webhook_id}",
    permission="users:admin",
    response=WebhookOut,
    summary="Remove a webhook and its pending deliveries",
)
async def delete_webhook(request: web.Request) -> web.Response:
    async with act(request, _webhook) as (session, hook, who):
        out = await _hook_out(session, hook)
        await session.delete(hook)
        await audit(session, who, "webhook.delete", ("webhook", hook.id), details={"url": hook.url})
    return answer(request, out)
