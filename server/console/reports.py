"""Alert rules, KPI reports with charts, and the audit trail with its filters
and the hash chain's verification status (checked by the page's script on
`GET /api/v1/audit/verify`, which walks the whole chain)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

from server.api.alerts import AlertQuery, alert_items, visible_rules
from server.api.audit import AuditQuery, audit_item, audit_page
from server.api.authn import principal
from server.api.routing import ApiRouter
from server.api.service_levels import KpiQuery, kpi_report
from server.console import i18n
from server.console.render import page
from server.context import services
from server.store import people
from shared.errors import Invalid

routes = ApiRouter("console", console=True)


def _query(model: type[Any], raw: dict[str, str]) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        fields = {".".join(map(str, e["loc"])): e["msg"] for e in exc.errors()}
        raise Invalid("invalid filter", fields=fields) from None


def _raw(request: web.Request, keys: tuple[str, ...]) -> dict[str, str]:
    return {k: request.query[k].strip() for k in keys if request.query.get(k, "").strip()}


@routes.route(
    "GET", "/alert-rules", permission="alerts:manage", summary="Alert rules and firing alerts"
)
async def alert_rules(request: web.Request) -> web.StreamResponse:
    who = principal(request)
    async with services(request).sessions() as session:
        rules = await visible_rules(session, who)
        alerts = await alert_items(session, who, AlertQuery(status="firing"))
        sites = [
            s.name for s in await people.list_sites(session) if who.allowed("alerts:manage", s.id)
        ]
    ctx = {
        "rules": rules,
        "alerts": alerts,
        "sites": sites,
        "global_ok": who.allowed("alerts:manage", None),
    }
    return page(request, "alert_rules.html", ctx, title=i18n.gettext("Alert rules"))


RATES = (
    "tier1_resolution_rate",
    "escalation_rate",
    "reopen_rate",
    "csat",
    "csat_response_rate",
    "auto_resolved_share",
)
TIMES = ("time_to_acknowledge", "time_to_first_response", "time_to_resolve")


@routes.route("GET", "/kpis", permission="kpi:read", summary="KPI reports")
async def kpis(request: web.Request) -> web.StreamResponse:
    raw = _raw(request, ("site", "engineer", "from", "to", "group_by"))
    q = _query(KpiQuery, {"group_by": "site", **raw})
    async with services(request).sessions() as session:
        report = await kpi_report(session, principal(request), q)
    ctx = {"report": report, "f": raw, "rates": RATES, "times": TIMES}
    return page(request, "kpis.html", ctx, title=i18n.gettext("KPIs"))


@routes.route("GET", "/audit", permission="audit:read", summary="The audit trail")
async def audit(request: web.Request) -> web.StreamResponse:
    who = principal(request)
    raw = _raw(request, ("actor", "action", "site", "ticket", "since", "until", "after"))
    params: dict[str, Any] = {**raw, "limit": 100}
    q = _query(AuditQuery, params)
    rows = [audit_item(e) for e in await audit_page(request, q, 100)]
    ctx = {
        "rows": rows,
        "f": raw,
        "next": rows[-1].seq if len(rows) == 100 else None,
        "may_verify": who.allowed("audit:read", None),
    }
    return page(request, "audit.html", ctx, title=i18n.gettext("Audit trail"))
