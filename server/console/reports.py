"""Alert rules, KPI reports with charts, and the audit trail with its filters
and the hash chain's verification status (checked by the page's script on
`GET /api/v1/audit/verify`, which walks the whole chain)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import select

from server.console import i18n
from server.console.lists import parsed, site_names, words
from server.console.render import page
from server.store.models import Site
from server.views.alerts import AlertQuery, alert_items, visible_rules
from server.views.audit import AuditQuery, audit_item, audit_page
from server.views.service_levels import KpiQuery, kpi_report
from server.web.act import unit
from server.web.authn import principal
from server.web.keys import DB
from server.web.routing import ApiRouter

routes = ApiRouter("console", console=True)


def _utc(value: str | None, *, next_day: bool = False) -> str | None:
    """A date (`YYYY-MM-DD`) or a `datetime-local` value as an RFC 3339 time in
    UTC, as the API wants; a date that ends a range counts its whole day."""
    if not value:
        return None
    try:
        if len(value) == 10:
            day = date.fromisoformat(value) + timedelta(days=1 if next_day else 0)
            return datetime.combine(day, time(), UTC).isoformat()
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return value  # the query model names what is wrong
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).isoformat()


@routes.route(
    "GET", "/alert-rules", permission="alerts:manage", summary="Alert rules and firing alerts"
)
async def alert_rules(request: web.Request) -> web.StreamResponse:
    async with unit(request) as (session, who):
        rules = await visible_rules(session, who)
        alerts = await alert_items(session, who, AlertQuery(status="firing"))
    sites = await site_names(request, who, "alerts:manage")
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
    "deflection_rate",
)
TIMES = ("time_to_acknowledge", "time_to_first_response", "time_to_resolve")


@routes.route("GET", "/kpis", permission="kpi:read", summary="KPI reports")
async def kpis(request: web.Request) -> web.StreamResponse:
    raw = words(request, ("site", "engineer", "from", "to", "group_by"))
    params: dict[str, Any] = {"group_by": "site", **raw}
    params["from"], params["to"] = _utc(raw.get("from")), _utc(raw.get("to"), next_day=True)
    q = parsed(KpiQuery, {k: v for k, v in params.items() if v is not None})
    async with unit(request) as (session, who):
        report = await kpi_report(session, who, q)
    ctx = {"report": report, "f": raw, "rates": RATES, "times": TIMES}
    return page(request, "kpis.html", ctx, title=i18n.gettext("KPIs"))


def recent_periods(today: date, months: int = 12, weeks: int = 8) -> list[str]:
    """Periods to offer: this month and the ones before, this ISO week and the
    ones before. Pure."""
    out: list[str] = []
    year, mon = today.year, today.month
    for _ in range(months):
        out.append(f"{year}-{mon:02d}")
        year, mon = (year - 1, 12) if mon == 1 else (year, mon - 1)
    day = today
    for _ in range(weeks):
        iso = day.isocalendar()
        out.append(f"{iso.year}-W{iso.week:02d}")
        day -= timedelta(days=7)
    return out


@routes.route("GET", "/reports", permission="kpi:read", summary="Review reports")
async def reports(request: web.Request) -> web.StreamResponse:
    """Choose a site (or HQ) and a period; the buttons fetch the report from
    `GET /api/v1/reports/html|pdf` in the console's language."""
    async with unit(request) as (session, who):
        allowed = who.sites("kpi:read")
        stmt = select(Site.name).order_by(Site.name)
        if allowed is not None:
            stmt = stmt.where(Site.id.in_(sorted(allowed)))
        sites = list((await session.scalars(stmt)).all())
    periods = recent_periods(datetime.now(UTC).date())
    ctx = {
        "sites": sites,
        "periods": periods,
        "site": request.query.get("site", ""),
        "period": request.query.get("period", "") or periods[0],
    }
    return page(request, "reports.html", ctx, title=i18n.gettext("Review reports"))


@routes.route("GET", "/audit", permission="audit:read", summary="The audit trail")
async def audit(request: web.Request) -> web.StreamResponse:
    who = principal(request)
    raw = words(request, ("actor", "action", "site", "ticket", "since", "until", "after"))
    params: dict[str, Any] = {**raw, "limit": 100}
    params["since"], params["until"] = _utc(raw.get("since")), _utc(raw.get("until"))
    q = parsed(AuditQuery, {k: v for k, v in params.items() if v is not None})
    rows = [audit_item(e) for e in await audit_page(request.app[DB], who, q, 100)]
    ctx = {
        "rows": rows,
        "f": raw,
        "next": rows[-1].seq if len(rows) == 100 else None,
        "may_verify": who.allowed("audit:read", None),
    }
    return page(request, "audit.html", ctx, title=i18n.gettext("Audit trail"))
