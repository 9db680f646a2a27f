"""KPI formulas over ticket facts, pure. Each formula is written once here
and pinned by tests on fixed data.

- time to acknowledge / first response: wall seconds from creation
- time to resolve: wall seconds from creation to resolution, minus paused time
- SLA compliance per target: met / (met + missed + open-and-past-due)
- tier-1 resolution rate: resolved at site tier, never escalated, not
  reopened within 7 days / resolved
- escalation rate: escalated / all; reopen rate: reopened / resolved
- CSAT: ratings of 4-5 / ratings; response rate: ratings / resolved with a requester
- alerts per ticket: alert firings / alert tickets; auto-resolved share
- deflection rate: requests a knowledge-base article solved (self-served,
  closed at once) / requests raised by people (every ticket not from an
  alert, self-served ones included). Self-served requests are left out of
  every other formula (they were never worked).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

REOPEN_GRACE = timedelta(days=7)


@dataclass(frozen=True)
class Fact:
    """What the KPIs need to know about one ticket."""

    id: str
    site: str
    priority: str
    assignee: str | None
    created_at: datetime
    acknowledged_at: datetime | None = None
    first_response_at: datetime | None = None
    resolved_at: datetime | None = None
    paused_seconds: float = 0.0
    status: str = "new"
    tier_resolved: str | None = None  # tier at resolution
    escalations: int = 0
    reopens: list[datetime] = field(default_factory=list)
    rating: int | None = None
    has_requester: bool = False
    source: str = "api"
    alert_firings: int = 0
    auto_resolved: bool = False
    resolution_code: str | None = None
    # per target: "met" | "missed" | "breached" (open, past due) | "open" (not yet due)
    sla: dict[str, str] = field(default_factory=dict)


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"count": 0, "mean": None, "median": None, "p90": None}
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    median = ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    p90 = ordered[min(n - 1, math.ceil(0.9 * n) - 1)]  # nearest-rank
    return {"count": n, "mean": sum(ordered) / n, "median": median, "p90": p90}


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


SELF_SERVED = "self_served"


def compute(facts: Iterable[Fact]) -> dict[str, Any]:
    every = list(facts)
    served = sum(1 for f in every if f.resolution_code == SELF_SERVED)
    asked = sum(1 for f in every if f.source != "alert")
    items = [f for f in every if f.resolution_code != SELF_SERVED]
    ack = [(f.acknowledged_at - f.created_at).total_seconds() for f in items if f.acknowledged_at]
    first = [
        (f.first_response_at - f.created_at).total_seconds() for f in items if f.first_response_at
    ]
    resolved = [f for f in items if f.resolved_at is not None]
    resolve = [
        max(0.0, (f.resolved_at - f.created_at).total_seconds() - f.paused_seconds)
        for f in resolved
        if f.resolved_at is not None
    ]
    sla: dict[str, float | None] = {}
    for target in ("ack", "response", "resolve"):
        met = sum(1 for f in items if f.sla.get(target) == "met")
        bad = sum(1 for f in items if f.sla.get(target) in ("missed", "breached"))
        sla[target] = _rate(met, met + bad)
    tier1 = sum(
        1
        for f in resolved
        if f.tier_resolved == "site"
        and f.escalations == 0
        and not any(r - f.resolved_at <= REOPEN_GRACE for r in f.reopens if f.resolved_at)
    )
    rated = [f.rating for f in items if f.rating is not None]
    alert_tickets = [f for f in items if f.source == "alert"]
    return {
        "tickets": len(items),
        "resolved": len(resolved),
        "time_to_acknowledge": _stats(ack),
        "time_to_first_response": _stats(first),
        "time_to_resolve": _stats(resolve),
        "sla_compliance": sla,
        "tier1_resolution_rate": _rate(tier1, len(resolved)),
        "escalation_rate": _rate(sum(1 for f in items if f.escalations), len(items)),
        "reopen_rate": _rate(sum(1 for f in resolved if f.reopens), len(resolved)),
        "csat": _rate(sum(1 for r in rated if r >= 4), len(rated)),
        "csat_response_rate": _rate(len(rated), sum(1 for f in resolved if f.has_requester)),
        "alerts_per_ticket": (
            sum(f.alert_firings for f in alert_tickets) / len(alert_tickets)
            if alert_tickets
            else None
        ),
        "auto_resolved_share": _rate(sum(1 for f in resolved if f.auto_resolved), len(resolved)),
        "self_served": served,
        "deflection_rate": _rate(served, asked),
    }


def _week(f: Fact) -> str:
    year, week, _ = f.created_at.isocalendar()
    return f"{year}-W{week:02d}"


GROUPS: dict[str, Callable[[Fact], str]] = {
    "site": lambda f: f.site,
    "engineer": lambda f: f.assignee or "(unassigned)",
    "priority": lambda f: f.priority,
    "week": _week,
}


def grouped(facts: Iterable[Fact], by: str | None) -> dict[str, dict[str, Any]]:
    """KPIs for all facts (key "all"), or per group."""
    items = list(facts)
    if by is None:
        return {"all": compute(items)}
    key = GROUPS[by]
    buckets: dict[str, list[Fact]] = defaultdict(list)
    for f in items:
        buckets[key(f)].append(f)
    return {name: compute(group) for name, group in sorted(buckets.items())}
