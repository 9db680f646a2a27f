"""Review reports, pure: the period a report covers, the KPI targets it is
measured against, and the trend series. The database side (which tickets,
problems, changes and ratings) is in `server.api.reports`; rendering (HTML,
PDF, plots) in `server.console.reportdoc`.

Periods (UTC):

- `2026-11`: a calendar month
- `2026-W47`: an ISO week (Monday to Sunday)
- `2026-11-01..2026-11-15`: the days from the first to the second, both
  included (at most 366 days)

Years are written with ASCII digits, from `MIN_YEAR` to `MAX_YEAR`: a report
far from the present has nothing to show, and the trend and the day after a
period's end must stay inside the calendar's dates.

The trend covers the period and the `TREND` periods of the same length
before it (the months before a month, the weeks before a week).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from server.itsm import kpi

TREND = 5  # earlier periods shown with the report's own
MAX_RANGE_DAYS = 366
MIN_YEAR, MAX_YEAR = 1970, 2999

# [0-9], not \d: \d also matches other scripts' digits (full-width ones, U+FF10..),
# which int() and date() would then read.
_MONTH = re.compile(r"^([0-9]{4})-([0-9]{2})$")
_WEEK = re.compile(r"^([0-9]{4})-W([0-9]{2})$", re.IGNORECASE)
_RANGE = re.compile(r"^(([0-9]{4})-[0-9]{2}-[0-9]{2})\.\.(([0-9]{4})-[0-9]{2}-[0-9]{2})$")

# KPI -> (comparison, target); a KPI meets its target when value >= (or <=) it.
TARGETS: dict[str, tuple[str, float]] = {
    "sla_compliance_overall": (">=", 0.90),
    "csat": (">=", 0.80),
    "tier1_resolution_rate": (">=", 0.60),
    "escalation_rate": ("<=", 0.20),
    "reopen_rate": ("<=", 0.05),
    "deflection_rate": (">=", 0.10),
}


@dataclass(frozen=True)
class Period:
    kind: str  # month | week | range
    label: str
    start: date
    end: date  # the day after the last one

    @property
    def begins(self) -> datetime:
        return datetime.combine(self.start, time(), UTC)

    @property
    def ends(self) -> datetime:
        return datetime.combine(self.end, time(), UTC)

    def holds(self, at: datetime | None) -> bool:
        return at is not None and self.begins <= at < self.ends

    def previous(self) -> Period:
        if self.kind == "month":
            last = self.start - timedelta(days=1)
            return month(last.year, last.month)
        if self.kind == "week":
            monday = self.start - timedelta(days=7)
            year, week, _ = monday.isocalendar()
            return Period("week", f"{year}-W{week:02d}", monday, self.start)
        length = self.end - self.start
        start = self.start - length
        last = self.start - timedelta(days=1)
        return Period("range", f"{start.isoformat()}..{last.isoformat()}", start, self.start)

    def days(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range((self.end - self.start).days)]


def month(year: int, mon: int) -> Period:
    start = date(year, mon, 1)
    end = date(year + 1, 1, 1) if mon == 12 else date(year, mon + 1, 1)
    return Period("month", f"{year}-{mon:02d}", start, end)


def _in_range(*years: str) -> None:
    if not all(MIN_YEAR <= int(year) <= MAX_YEAR for year in years):
        raise ValueError(f"years from {MIN_YEAR} to {MAX_YEAR}")


def parse_period(text: str) -> Period:
    """A period from its text; ValueError says what is wrong."""
    value = text.strip()
    if m := _MONTH.match(value):
        _in_range(m.group(1))
        year, mon = int(m.group(1)), int(m.group(2))
        if not 1 <= mon <= 12:
            raise ValueError("no such month")
        return month(year, mon)
    if m := _WEEK.match(value):
        _in_range(m.group(1))
        year, week = int(m.group(1)), int(m.group(2))
        try:
            monday = date.fromisocalendar(year, week, 1)
        except ValueError:
            raise ValueError("no such ISO week") from None
        return Period("week", f"{year}-W{week:02d}", monday, monday + timedelta(days=7))
    if m := _RANGE.match(value):
        _in_range(m.group(2), m.group(4))
        try:
            first, last = date.fromisoformat(m.group(1)), date.fromisoformat(m.group(3))
        except ValueError:
            raise ValueError("no such day") from None
        if last < first:
            raise ValueError("the range ends before it starts")
        if (last - first).days + 1 > MAX_RANGE_DAYS:
            raise ValueError(f"at most {MAX_RANGE_DAYS} days")
        return Period("range", f"{first}..{last}", first, last + timedelta(days=1))
    raise ValueError("expected YYYY-MM, YYYY-Www or YYYY-MM-DD..YYYY-MM-DD")


def trend_periods(period: Period, count: int = TREND) -> list[Period]:
    """The `count` periods before `period`, then `period`, oldest first."""
    out = [period]
    for _ in range(count):
        out.append(out[-1].previous())
    return out[::-1]


def _worked(facts: Iterable[kpi.Fact]) -> list[kpi.Fact]:
    return [f for f in facts if f.resolution_code != kpi.SELF_SERVED]


def sla_compliance(facts: Iterable[kpi.Fact]) -> float | None:
    """Met / (met + missed + breached) over every clock of every ticket."""
    met = bad = 0
    for f in _worked(facts):
        for state in f.sla.values():
            met += state == "met"
            bad += state in ("missed", "breached")
    return met / (met + bad) if met + bad else None


def mttr(facts: Iterable[kpi.Fact]) -> float | None:
    """Mean seconds to resolve (without paused time) of the given resolved tickets."""
    spans = [
        max(0.0, (f.resolved_at - f.created_at).total_seconds() - f.paused_seconds)
        for f in _worked(facts)
        if f.resolved_at is not None
    ]
    return sum(spans) / len(spans) if spans else None


def trend_point(facts: list[kpi.Fact], p: Period) -> dict[str, Any]:
    """Opened (created in `p`), resolved (resolved in `p`), SLA compliance of the
    tickets opened in `p`, MTTR of the tickets resolved in `p`."""
    worked = _worked(facts)
    opened = [f for f in worked if p.holds(f.created_at)]
    resolved = [f for f in worked if p.holds(f.resolved_at)]
    return {
        "period": p.label,
        "start": p.start.isoformat(),
        "end": p.end.isoformat(),
        "opened": len(opened),
        "resolved": len(resolved),
        "sla_compliance": sla_compliance(opened),
        "mttr_seconds": mttr(resolved),
    }


def daily(facts: list[kpi.Fact], p: Period) -> list[dict[str, Any]]:
    """Tickets opened and resolved on each day of the period."""
    worked = _worked(facts)
    opened: dict[date, int] = {}
    resolved: dict[date, int] = {}
    for f in worked:
        if p.holds(f.created_at):
            day = f.created_at.astimezone(UTC).date()
            opened[day] = opened.get(day, 0) + 1
        if f.resolved_at is not None and p.holds(f.resolved_at):
            day = f.resolved_at.astimezone(UTC).date()
            resolved[day] = resolved.get(day, 0) + 1
    return [
        {"day": d.isoformat(), "opened": opened.get(d, 0), "resolved": resolved.get(d, 0)}
        for d in p.days()
    ]


def against_targets(
    figures: dict[str, Any], overrides: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """Each targeted KPI with its value, target (the default, or HQ's setting
    `report_targets`) and whether it met it (None: nothing to measure)."""
    out = []
    for key, (op, default) in TARGETS.items():
        target = (overrides or {}).get(key, default)
        value = figures.get(key)
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        out.append({"kpi": key, "value": value, "comparison": op, "target": target, "met": met})
    return out


def period_kpis(facts: list[kpi.Fact], p: Period) -> dict[str, Any]:
    """The KPI formulas over the tickets created in `p`, with the overall SLA
    compliance and the MTTR of the tickets resolved in `p`."""
    created = [f for f in facts if p.holds(f.created_at)]
    figures = kpi.compute(created)
    figures["sla_compliance_overall"] = sla_compliance(created)
    figures["mttr_seconds"] = mttr([f for f in facts if p.holds(f.resolved_at)])
    return figures


def success_rate(outcomes: Iterable[str | None]) -> float | None:
    """Successful / closed with an outcome (successful, failed, rolled back)."""
    done = [o for o in outcomes if o in ("successful", "failed", "rolled_back")]
    return sum(1 for o in done if o == "successful") / len(done) if done else None


def per_site(facts: list[kpi.Fact], p: Period, sites: list[str]) -> list[dict[str, Any]]:
    """One row per site (every site in `sites`, in that order): tickets opened
    and resolved in `p`, SLA compliance of those opened, MTTR of those
    resolved, CSAT (4-5 share) of those opened."""
    rows = []
    for name in sites:
        mine = [f for f in facts if f.site == name]
        point = trend_point(mine, p)
        figures = kpi.compute([f for f in mine if p.holds(f.created_at)])
        rows.append(
            {
                "site": name,
                "opened": point["opened"],
                "resolved": point["resolved"],
                "sla_compliance": point["sla_compliance"],
                "mttr_seconds": point["mttr_seconds"],
                "csat": figures["csat"],
            }
        )
    return rows
