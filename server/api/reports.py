"""Review reports: for one site or for HQ (every site the caller reads KPIs
on), over a month, an ISO week or a range of days: KPIs against targets,
trends, top problems, changes and their success rate, CSAT and its comments,
deflection. As JSON, as a standalone printable HTML page, or as a PDF.

Scope: `kpi:read`. With `site`, the caller needs it on that site (else 404,
as for a site that does not exist); without, the report covers the sites the
caller holds `kpi:read` on (all of them with a global grant).
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.principal import Principal
from server.itsm import review
from server.itsm.tickets import number_text as ticket_number
from server.store import people
from server.store.models import Change, Problem, ProblemTicket, Site, Ticket, utcnow
from server.views.service_levels import fact_of
from server.web.act import unit
from server.web.keys import CONFIG, REPORT_DOCS
from server.web.routing import ApiRouter, json_response, query
from shared.errors import NotFound

routes = ApiRouter("reports")

MAX_COMMENTS = 50
TOP_PROBLEMS = 5
HQ = "HQ"
# The standalone page styles itself inline (CSS and SVG attributes) and runs no script.
HTML_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)


class ReportQuery(BaseModel):
    site: str | None = Field(None, description="a site's name; without it: the HQ report")
    period: str = Field(
        description="2026-11 (a month), 2026-W47 (an ISO week) or "
        "2026-11-01..2026-11-15 (days, both included; at most 366), in UTC; years "
        f"{review.MIN_YEAR} to {review.MAX_YEAR} in ASCII digits",
        max_length=40,
    )
    lang: str | None = Field(
        None, description="HTML and PDF: en or ko (default: the console's language cookie, en)"
    )

    download: bool = Field(
        False, description="HTML: as an attachment (report-SITE-PERIOD.html) rather than inline"
    )

    @field_validator("site")
    @classmethod
    def _site(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("period")
    @classmethod
    def _period(cls, value: str) -> str:
        review.parse_period(value)
        return value.strip()

    @field_validator("lang")
    @classmethod
    def _lang(cls, value: str | None) -> str | None:
        if value is not None and value not in ("en", "ko"):
            raise ValueError("en or ko")
        return value


class PeriodOut(BaseModel):
    label: str
    kind: str = Field(description="month, week or range")
    start: date
    end: date = Field(description="the day after the last day")


class TargetOut(BaseModel):
    kpi: str
    value: float | None
    comparison: str = Field(description=">= or <=")
    target: float
    met: bool | None = Field(description="null: nothing to measure in the period")


class TrendPoint(BaseModel):
    period: str
    start: date
    end: date
    opened: int
    resolved: int
    sla_compliance: float | None
    mttr_seconds: float | None


class SiteRow(BaseModel):
    site: str
    opened: int
    resolved: int
    sla_compliance: float | None
    mttr_seconds: float | None
    csat: float | None


class DayPoint(BaseModel):
    day: date
    opened: int
    resolved: int


class ProblemRow(BaseModel):
    number: str
    title: str
    status: str
    priority: str
    site: str | None
    incidents: int = Field(description="linked incidents opened in the period")


class ChangeRow(BaseModel):
    number: str
    title: str
    risk: str
    state: str
    created_at: datetime
    closed_at: datetime | None


class ChangesOut(BaseModel):
    items: list[ChangeRow]
    requested: int = Field(description="changes requested in the period")
    closed: int = Field(description="changes closed in the period with an outcome")
    successful: int
    failed: int
    rolled_back: int
    success_rate: float | None


class CommentRow(BaseModel):
    ticket: str
    site: str
    rating: int
    comment: str
    rated_at: datetime


class CsatOut(BaseModel):
    ratings: int = Field(description="ratings given in the period")
    average: float | None = Field(description="mean score, 1-5")
    satisfied: float | None = Field(description="share of ratings of 4 or 5")
    comments: list[CommentRow]


class ReportOut(BaseModel):
    scope: str = Field(description="the site's name, or HQ")
    site: str | None
    sites: list[str] = Field(description="the sites the report covers")
    period: PeriodOut
    generated_at: datetime
    kpis: dict[str, Any] = Field(description="as GET /api/v1/kpis, tickets created in the period")
    targets: list[TargetOut]
    trend: list[TrendPoint] = Field(description="the period and the five before it")
    daily: list[DayPoint]
    per_site: list[SiteRow] = Field(description="the period's figures of each site covered")
    top_problems: list[ProblemRow]
    changes: ChangesOut
    csat: CsatOut
    deflection_rate: float | None


async def _scope(session: AsyncSession, who: Principal, site: str | None) -> list[Site]:
    allowed = who.sites("kpi:read")
    if site is not None:
        row = await people.site_by_name(session, site)
        if row is None or (allowed is not None and row.id not in allowed):
            raise NotFound("no such site", fields={"site": "not found"})
        return [row]
    stmt = select(Site).order_by(Site.name)
    if allowed is not None:
        stmt = stmt.where(Site.id.in_(sorted(allowed)))
    return list((await session.scalars(stmt)).all())


async def build_report(
    session: AsyncSession,
    who: Principal,
    site: str | None,
    period_text: str,
    targets: dict[str, float] | None = None,
) -> ReportOut:
    """The review report of a site (or HQ's) over a period, from the database."""
    period = review.parse_period(period_text)
    sites = await _scope(session, who, site)
    ids = [s.id for s in sites]
    names = {s.id: s.name for s in sites}
    trend = review.trend_periods(period)
    first, end = trend[0].begins, period.ends
    tickets = (
        await session.scalars(
            select(Ticket).where(
                Ticket.site_id.in_(ids),
                or_(
                    and_(Ticket.created_at >= first, Ticket.created_at < end),
                    and_(Ticket.resolved_at >= first, Ticket.resolved_at < end),
                ),
            )
        )
    ).all()
    facts = [await fact_of(session, t) for t in tickets]
    figures = review.period_kpis(facts, period)

    # problems by the incidents linked to them that were opened in the period
    counted = (
        await session.execute(
            select(ProblemTicket.problem_id, func.count())
            .join(Ticket, Ticket.id == ProblemTicket.ticket_id)
            .where(
                Ticket.site_id.in_(ids),
                Ticket.created_at >= period.begins,
                Ticket.created_at < end,
            )
            .group_by(ProblemTicket.problem_id)
        )
    ).all()
    problems: list[ProblemRow] = []
    for problem_id, count in counted:
        p = await session.get(Problem, problem_id)
        if p is None:
            continue
        problems.append(
            ProblemRow(
                number=f"PRB-{p.number}",
                title=p.title,
                status=p.status,
                priority=p.priority,
                site=names.get(p.site_id or "") if p.site_id else None,
                incidents=int(count),
            )
        )
    problems.sort(key=lambda r: (-r.incidents, int(r.number[4:])))

    # changes touching the sites, requested or closed in the period
    rows = (
        await session.scalars(
            select(Change)
            .where(
                or_(
                    and_(Change.created_at >= period.begins, Change.created_at < end),
                    and_(Change.closed_at >= period.begins, Change.closed_at < end),
                )
            )
            .order_by(Change.number)
        )
    ).all()
    wanted = set(ids)
    changes = [c for c in rows if wanted.intersection(c.site_ids or [])]
    closed = [c for c in changes if period.holds(c.closed_at) and c.outcome]
    outcomes = [c.outcome for c in closed]

    rated = (
        await session.scalars(
            select(Ticket)
            .where(
                Ticket.site_id.in_(ids),
                Ticket.rating.is_not(None),
                Ticket.rated_at >= period.begins,
                Ticket.rated_at < end,
            )
            .order_by(Ticket.rated_at, Ticket.number)
        )
    ).all()
    scores = [t.rating for t in rated if t.rating is not None]
    comments = [
        CommentRow(
            ticket=ticket_number(t.number),
            site=names.get(t.site_id, t.site_id),
            rating=t.rating or 0,
            comment=(t.rating_comment or "").strip(),
            rated_at=t.rated_at or t.updated_at,
        )
        for t in rated
        if (t.rating_comment or "").strip()
    ][-MAX_COMMENTS:]

    return ReportOut(
        scope=sites[0].name if site is not None else HQ,
        site=site,
        sites=[s.name for s in sites],
        period=PeriodOut(label=period.label, kind=period.kind, start=period.start, end=period.end),
        generated_at=utcnow(),
        kpis=figures,
        targets=[TargetOut(**t) for t in review.against_targets(figures, targets)],
        trend=[TrendPoint(**review.trend_point(facts, p)) for p in trend],
        daily=[DayPoint(**d) for d in review.daily(facts, period)],
        per_site=[
            SiteRow(**row) for row in review.per_site(facts, period, [s.name for s in sites])
        ],
        top_problems=problems[:TOP_PROBLEMS],
        changes=ChangesOut(
            items=[
                ChangeRow(
                    number=f"CHG-{c.number}",
                    title=c.title,
                    risk=c.risk,
                    state=c.state,
                    created_at=c.created_at,
                    closed_at=c.closed_at,
                )
                for c in changes
            ],
            requested=sum(1 for c in changes if period.holds(c.created_at)),
            closed=len(closed),
            successful=outcomes.count("successful"),
            failed=outcomes.count("failed"),
            rolled_back=outcomes.count("rolled_back"),
            success_rate=review.success_rate(outcomes),
        ),
        csat=CsatOut(
            ratings=len(scores),
            average=sum(scores) / len(scores) if scores else None,
            satisfied=sum(1 for s in scores if s >= 4) / len(scores) if scores else None,
            comments=comments,
        ),
        deflection_rate=figures.get("deflection_rate"),
    )


async def _report(request: web.Request) -> tuple[ReportOut, str]:
    q = query(request, ReportQuery)
    app = request.app
    async with unit(request) as (session, who):
        report = await build_report(
            session, who, q.site, q.period, app[CONFIG].settings.report_targets
        )
    lang = q.lang or app[REPORT_DOCS].language_of(request)
    return report, lang


def filename(report: ReportOut, ext: str) -> str:
    scope = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in report.scope)
    return f"report-{scope}-{report.period.label}.{ext}"


@routes.route(
    "GET",
    "/api/v1/reports",
    permission="kpi:read",
    query=ReportQuery,
    response=ReportOut,
    errors=(404,),
    summary="Review report of a site (or HQ) over a month, ISO week or days, as JSON",
)
async def report_json(request: web.Request) -> web.Response:
    report, _ = await _report(request)
    return json_response(report)


@routes.route(
    "GET",
    "/api/v1/reports/html",
    permission="kpi:read",
    query=ReportQuery,
    content_type="text/html",
    errors=(404,),
    summary="The review report as a standalone, printable HTML page",
)
async def report_html(request: web.Request) -> web.Response:
    report, lang = await _report(request)
    docs = request.app[REPORT_DOCS]
    text = await asyncio.to_thread(docs.html, report.model_dump(mode="json"), lang)
    how = "attachment" if query(request, ReportQuery).download else "inline"
    return web.Response(
        text=text,
        content_type="text/html",
        headers={
            "Content-Disposition": f'{how}; filename="{filename(report, "html")}"',
            "Content-Security-Policy": HTML_CSP,
        },
    )


@routes.route(
    "GET",
    "/api/v1/reports/pdf",
    permission="kpi:read",
    query=ReportQuery,
    content_type="application/pdf",
    errors=(404,),
    summary="The review report as a PDF (A4)",
)
async def report_pdf(request: web.Request) -> web.Response:
    report, lang = await _report(request)
    docs = request.app[REPORT_DOCS]
    data = await asyncio.to_thread(docs.pdf, report.model_dump(mode="json"), lang)
    return web.Response(
        body=data,
        content_type="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="{filename(report, "pdf")}"'},
    )
