"""Alert rules and their evaluation, pure.

A rule watches one metric of the health report (`cpu.percent`,
`memory.percent`, `swap.percent`, `load.1m`, `disk[/var].percent`,
`disk[*].percent` for the fullest disk, `agent.offline` in seconds) and
fires when the comparison holds for `for_seconds`; it recovers when the value
passes the clear threshold (hysteresis), so a value hovering at the threshold
does not flap.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}

_SIMPLE = {
    "cpu.percent": ("cpu", "percent"),
    "memory.percent": ("memory", "percent"),
    "swap.percent": ("swap", "percent"),
    "load.1m": ("load", "1m"),
    "load.5m": ("load", "5m"),
    "load.15m": ("load", "15m"),
    "uptime.seconds": ("uptime_seconds",),
    "process.count": ("process_count",),
}
_DISK = re.compile(r"^disk\[(?P<mount>[^\]]+)\]\.(?P<field>percent|inodes_percent)$")
OFFLINE = "agent.offline"


class MetricError(ValueError):
    """Not a metric path this module understands."""


def check_metric(path: str) -> None:
    if path in _SIMPLE or path == OFFLINE or _DISK.match(path):
        return
    known = ", ".join([*_SIMPLE, "disk[/mount].percent", "disk[*].percent", OFFLINE])
    raise MetricError(f"unknown metric {path!r}; known: {known}")


def metric(report: dict[str, Any], path: str) -> float | None:
    """The metric's value in a health report (as stored JSON), or None if absent."""
    if path in _SIMPLE:
        value: Any = report
        for key in _SIMPLE[path]:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return float(value) if isinstance(value, int | float) else None
    match = _DISK.match(path)
    if match is None:
        return None
    mount, field = match.group("mount"), match.group("field")
    values = [
        float(d[field])
        for d in report.get("disks", [])
        if isinstance(d, dict)
        and d.get(field) is not None
        and (mount == "*" or d.get("mount") == mount)
    ]
    return max(values) if values else None


@dataclass(frozen=True)
class Rule:
    id: str
    metric: str
    op: str
    threshold: float
    for_seconds: float = 0.0
    clear_threshold: float | None = None  # default: the threshold itself

    def holds(self, value: float) -> bool:
        return OPS[self.op](value, self.threshold)

    def cleared(self, value: float) -> bool:
        clear = self.threshold if self.clear_threshold is None else self.clear_threshold
        return not OPS[self.op](value, clear)


@dataclass(frozen=True)
class State:
    firing: bool = False
    pending_since: datetime | None = None


@dataclass(frozen=True)
class Outcome:
    state: State
    event: str | None  # "fire" | "recover" | None


def evaluate(rule: Rule, state: State, value: float | None, now: datetime) -> Outcome:
    """One evaluation of one rule for one agent."""
    if value is None:
        return Outcome(replace(state, pending_since=None) if not state.firing else state, None)
    if state.firing:
        if rule.cleared(value):
            return Outcome(State(False, None), "recover")
        return Outcome(state, None)
    if not rule.holds(value):
        return Outcome(State(False, None), None)
    since = state.pending_since or now
    if (now - since).total_seconds() >= rule.for_seconds:
        return Outcome(State(True, since), "fire")
    return Outcome(State(False, since), None)


DEFAULT_RULES: list[dict[str, Any]] = [
    {
        "name": "Disk almost full",
        "metric": "disk[*].percent",
        "op": ">=",
        "threshold": 90,
        "clear_threshold": 85,
        "for_seconds": 0,
        "priority": "P2",
        "diagnostics": ["disk.usage", "disk.largest"],
    },
    {
        "name": "Memory exhausted",
        "metric": "memory.percent",
        "op": ">=",
        "threshold": 95,
        "clear_threshold": 90,
        "for_seconds": 300,
        "priority": "P2",
        "diagnostics": ["process.top"],
    },
    {
        "name": "CPU saturated",
        "metric": "cpu.percent",
        "op": ">=",
        "threshold": 95,
        "clear_threshold": 80,
        "for_seconds": 900,
        "priority": "P3",
        "diagnostics": ["process.top"],
    },
    {
        "name": "Agent offline",
        "metric": "agent.offline",
        "op": ">=",
        "threshold": 600,
        "clear_threshold": 1,
        "for_seconds": 0,
        "priority": "P2",
        "diagnostics": [],
    },
]
