"""Problem records, pure: the lifecycle and when HQ proposes a problem.

    proposed -> new (accept) | dismissed (dismiss)
    new -> investigating -> known_error -> resolved -> closed
    new | investigating -> known_error | resolved
    known_error -> investigating (back to work)
    resolved -> investigating (reopen)

A known error needs a workaround; a resolved problem needs its root cause and
its resolution. `transition()` answers the new status or raises
IllegalTransition naming the statuses allowed from the current one, or
MissingField naming what the step needs.

Proposals: an alert rule firing on `ALERT_MACHINES` or more distinct machines
(counted over its open incidents not yet tied to a problem), or an incident
reopened `REOPENS` times, proposes a problem.
"""

from __future__ import annotations

from collections.abc import Iterable

STATUSES = (
    "proposed",
    "new",
    "investigating",
    "known_error",
    "resolved",
    "closed",
    "dismissed",
)
# the statuses of a problem someone works on (a proposal is not one yet)
OPEN = frozenset({"new", "investigating", "known_error"})
# a problem that still gathers incidents: new ones of its rule link to it
ACTIVE = frozenset({"proposed", "new", "investigating", "known_error"})
PRIORITIES = ("P1", "P2", "P3", "P4")
ORIGINS = ("manual", "alert_rule", "reopened")

ALERT_MACHINES = 3
REOPENS = 2

# target status -> statuses it may be reached from
MOVES: dict[str, frozenset[str]] = {
    "new": frozenset({"proposed"}),
    "dismissed": frozenset({"proposed"}),
    "investigating": frozenset({"new", "known_error", "resolved"}),
    "known_error": frozenset({"new", "investigating"}),
    "resolved": frozenset({"new", "investigating", "known_error"}),
    "closed": frozenset({"resolved"}),
}


class IllegalTransition(Exception):
    def __init__(self, status: str, target: str) -> None:
        self.status = status
        self.target = target
        self.allowed = allowed_statuses(status)
        super().__init__(
            f"a problem that is {status} cannot become {target}; allowed: "
            + (", ".join(self.allowed) if self.allowed else "nothing (it is final)")
        )


class MissingField(Exception):
    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


def allowed_statuses(status: str) -> list[str]:
    return [target for target, sources in MOVES.items() if status in sources]


def transition(
    status: str,
    target: str,
    *,
    workaround: str | None,
    root_cause: str | None,
    resolution: str | None,
    reason: str | None = None,
) -> str:
    """The status after moving to `target`, given the record's (updated) texts."""
    if target not in MOVES or status not in MOVES[target]:
        raise IllegalTransition(status, target)
    if target == "known_error" and not (workaround or "").strip():
        raise MissingField("workaround", "a known error needs its workaround")
    if target == "resolved":
        if not (root_cause or "").strip():
            raise MissingField("root_cause", "a resolved problem needs its root cause")
        if not (resolution or "").strip():
            raise MissingField("resolution", "a resolved problem needs its resolution")
    if target == "dismissed" and not (reason or "").strip():
        raise MissingField("reason", "say why the proposal is dismissed")
    return target


def number_text(number: int) -> str:
    return f"PRB-{number}"


def machines_firing(open_incidents: Iterable[tuple[str, str]]) -> set[str]:
    """Distinct machines among a rule's open incidents [(ticket_id, agent_id)]."""
    return {agent for _, agent in open_incidents}


def proposes_for_alerts(open_incidents: Iterable[tuple[str, str]]) -> bool:
    """A rule's open, unlinked incidents span enough machines to suggest one cause."""
    return len(machines_firing(open_incidents)) >= ALERT_MACHINES


def proposes_for_reopens(reopen_count: int, ticket_type: str) -> bool:
    """An incident reopened the second time (exactly: later reopens add nothing new)."""
    return ticket_type == "incident" and reopen_count == REOPENS
