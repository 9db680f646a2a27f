"""SLA arithmetic on business calendars, pure.

A calendar is a site's time zone, its working hours per weekday and its
holidays (or "always": 24x7). SLA targets are durations of *calendar time*:
business seconds on a business calendar. A ticket's clocks (acknowledge,
first response, resolution) start at creation, stop when met, and pause
while the ticket waits (on site, on the requester, on a vendor).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

MAX_DAYS = 3660  # a calendar without working time must not loop forever


@dataclass(frozen=True)
class Calendar:
    tz: str = "UTC"
    # weekday (0 = Monday) -> (start, end) local working hours; absent = closed
    hours: dict[int, tuple[time, time]] = field(default_factory=dict)
    holidays: frozenset[date] = frozenset()
    always: bool = False

    @classmethod
    def business(
        cls,
        tz: str = "UTC",
        start: str = "09:00",
        end: str = "18:00",
        days: tuple[int, ...] = (0, 1, 2, 3, 4),
        holidays: tuple[date, ...] = (),
    ) -> Calendar:
        span = (time.fromisoformat(start), time.fromisoformat(end))
        if span[1] <= span[0]:
            raise ValueError("working hours must end after they start")
        return cls(tz, dict.fromkeys(days, span), frozenset(holidays))


ALWAYS = Calendar(always=True)


def _intervals(cal: Calendar, start: datetime) -> Iterator[tuple[datetime, datetime]]:
    """Working intervals (UTC) from `start` on, in order."""
    if cal.always:
        yield start, datetime.max.replace(tzinfo=UTC)
        return
    zone = ZoneInfo(cal.tz)
    day = start.astimezone(zone).date()
    for _ in range(MAX_DAYS):
        span = cal.hours.get(day.weekday())
        if span is not None and day not in cal.holidays:
            a = datetime.combine(day, span[0], tzinfo=zone).astimezone(UTC)
            b = datetime.combine(day, span[1], tzinfo=zone).astimezone(UTC)
            if b > start:
                yield max(a, start), b
        day += timedelta(days=1)


def add(cal: Calendar, start: datetime, seconds: float) -> datetime:
    """The moment `seconds` of working time after `start`; ValueError when the
    calendar does not have that much working time within ten years."""
    left = timedelta(seconds=max(seconds, 0.0))
    for a, b in _intervals(cal, start):
        if b - a >= left:
            return a + left
        left -= b - a
    raise ValueError("the calendar has no working time in ten years")


def elapsed(cal: Calendar, start: datetime, end: datetime) -> float:
    """Working seconds between `start` and `end` (0 if end is not later)."""
    if end <= start:
        return 0.0
    if cal.always:
        return (end - start).total_seconds()
    total = 0.0
    for a, b in _intervals(cal, start):
        if a >= end:
            break
        total += (min(b, end) - a).total_seconds()
    return total


@dataclass(frozen=True)
class Targets:
    """Per priority: seconds of calendar time for each clock, and when to warn."""

    ack: float
    response: float
    resolve: float
    warn_at: float = 0.8  # share of a target after which the ticket is at risk
    business_hours: bool = True  # False: 24x7 regardless of the site calendar

    def seconds(self, kind: str) -> float:
        return {"ack": self.ack, "response": self.response, "resolve": self.resolve}[kind]


HOUR = 3600.0
DEFAULT_TARGETS: dict[str, Targets] = {
    "P1": Targets(ack=15 * 60, response=30 * 60, resolve=4 * HOUR, business_hours=False),
    "P2": Targets(ack=30 * 60, response=1 * HOUR, resolve=8 * HOUR),
    "P3": Targets(ack=2 * HOUR, response=4 * HOUR, resolve=27 * HOUR),  # 3 business days
    "P4": Targets(ack=8 * HOUR, response=9 * HOUR, resolve=45 * HOUR),  # 5 business days
}
CLOCKS = ("ack", "response", "resolve")


@dataclass(frozen=True)
class Clock:
    kind: str
    target: float
    elapsed: float  # working seconds counted so far (pauses excluded)
    due: datetime | None  # None while paused, or when beyond ten years of working time
    state: str  # running | warning | breached | met | missed | paused

    @property
    def remaining(self) -> float:
        return self.target - self.elapsed


def clock(
    cal: Calendar,
    kind: str,
    targets: Targets,
    *,
    created_at: datetime,
    met_at: datetime | None,
    paused_seconds: float,
    paused_since: datetime | None,
    now: datetime,
) -> Clock:
    """One SLA clock's state. `paused_seconds` are working seconds already
    spent waiting (finished pauses); `paused_since` an ongoing pause."""
    use = cal if targets.business_hours else ALWAYS
    target = targets.seconds(kind)
    end = met_at or now
    paused = paused_seconds
    if paused_since is not None and met_at is None:
        paused += elapsed(use, paused_since, now)
    spent = max(0.0, elapsed(use, created_at, end) - paused)
    if met_at is not None:
        return Clock(kind, target, spent, None, "met" if spent <= target else "missed")
    if paused_since is not None:
        return Clock(kind, target, spent, None, "paused")
    try:
        due: datetime | None = add(use, created_at, target + paused)
    except ValueError:
        # A long target on a calendar with little working time (a minute a
        # week) lands beyond ten years: no due date to show, the clock runs.
        due = None
    if spent > target:
        state = "breached"
    elif spent >= targets.warn_at * target:
        state = "warning"
    else:
        state = "running"
    return Clock(kind, target, spent, due, state)


# --- the badge people see (CLI and console) -------------------------------------------------

# worst first: a ticket's badge shows the worst state of its clocks; a running clock is `ok`
BADGE_ORDER = ("breached", "missed", "warning", "paused", "ok", "met")


@dataclass(frozen=True)
class Badge:
    """A ticket's SLA at a glance: its worst clock state and, for `ok` and
    `warning`, the time left to the nearest due (`breached`: the time past it)."""

    state: str  # one of BADGE_ORDER; "" when the ticket has no clocks
    seconds: float | None  # left (ok, warning) or overdue (breached); None otherwise
    due: datetime | None  # the nearest due time of the clocks in that state
    kind: str | None  # which clock that is (ack, response, resolve)


def _field(clock: Any, name: str) -> Any:
    return clock.get(name) if isinstance(clock, Mapping) else getattr(clock, name, None)


def _as_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            return _as_time(datetime.fromisoformat(value))
        except ValueError:
            return None
    return None


def badge(clocks: Mapping[str, Any], now: datetime) -> Badge:
    """The badge for a ticket's clocks: API JSON (dicts, due as ISO text) or
    objects with `state` and `due`. Pure."""
    states: dict[str, list[tuple[str, datetime | None]]] = {}
    for kind, clock in clocks.items():
        if clock is None or isinstance(clock, str | int | float):
            continue
        state = str(_field(clock, "state"))
        states.setdefault("ok" if state == "running" else state, []).append(
            (kind, _as_time(_field(clock, "due")))
        )
    for state in BADGE_ORDER:
        if state not in states:
            continue
        dues = sorted((due, kind) for kind, due in states[state] if due is not None)
        if not dues:
            return Badge(state, None, None, states[state][0][0])
        due, kind = dues[0]
        seconds: float | None = None
        if state in ("ok", "warning"):
            seconds = (due - now).total_seconds()
        elif state == "breached":
            seconds = (now - due).total_seconds()
        return Badge(state, seconds, due, kind)
    return Badge("", None, None, None)
