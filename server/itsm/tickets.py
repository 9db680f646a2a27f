"""The ticket lifecycle as a pure state machine, and priority from impact x urgency.

    new -> acknowledged -> in_progress <-> waiting -> resolved -> closed
    resolved -> in_progress (reopen, within the reopen window)
    new | acknowledged | in_progress | waiting -> cancelled

`transition()` answers the new state or raises IllegalTransition naming the
actions allowed from the current one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

TYPES = ("incident", "service_request", "problem", "change")
STATUSES = ("new", "acknowledged", "in_progress", "waiting", "resolved", "closed", "cancelled")
OPEN = frozenset({"new", "acknowledged", "in_progress", "waiting"})
WAIT_REASONS = ("on_site", "on_requester", "on_vendor")
PRIORITIES = ("P1", "P2", "P3", "P4")
SOURCES = ("alert", "help", "console", "api")
TIERS = ("site", "hq")

# action -> (states it may start from, state it leads to)
ACTIONS: dict[str, tuple[frozenset[str], str]] = {
    "ack": (frozenset({"new"}), "acknowledged"),
    "start": (frozenset({"new", "acknowledged", "waiting"}), "in_progress"),
    "wait": (frozenset({"in_progress", "acknowledged"}), "waiting"),
    "resolve": (frozenset({"new", "acknowledged", "in_progress", "waiting"}), "resolved"),
    "close": (frozenset({"resolved"}), "closed"),
    "reopen": (frozenset({"resolved"}), "in_progress"),
    "cancel": (frozenset({"new", "acknowledged", "in_progress", "waiting"}), "cancelled"),
}

DEFAULT_REOPEN_WINDOW = timedelta(days=7)


class IllegalTransition(Exception):
    def __init__(self, action: str, status: str) -> None:
        self.action = action
        self.status = status
        self.allowed = allowed_actions(status)
        super().__init__(
            f"cannot {action} a ticket that is {status}; allowed: "
            + (", ".join(self.allowed) if self.allowed else "nothing (it is final)")
        )


def allowed_actions(status: str) -> list[str]:
    return [action for action, (sources, _) in ACTIONS.items() if status in sources]


@dataclass(frozen=True)
class Change:
    status: str
    waiting_reason: str | None
    reopened: bool = False


def transition(
    status: str,
    action: str,
    *,
    reason: str | None = None,
    resolved_at: datetime | None = None,
    now: datetime | None = None,
    reopen_window: timedelta = DEFAULT_REOPEN_WINDOW,
) -> Change:
    """The state after `action`, or IllegalTransition. `wait` needs a reason;
    `reopen` only within the window after resolution."""
    if action not in ACTIONS:
        raise IllegalTransition(action, status)
    sources, target = ACTIONS[action]
    if status not in sources:
        raise IllegalTransition(action, status)
    if action == "wait":
        if reason not in WAIT_REASONS:
            raise ValueError(f"waiting needs a reason: {', '.join(WAIT_REASONS)}")
        return Change(target, reason)
    if action == "reopen":
        if resolved_at is not None and now is not None and now - resolved_at > reopen_window:
            raise IllegalTransition(action, f"{status} for longer than the reopen window")
        return Change(target, None, reopened=True)
    return Change(target, None)


def priority_of(impact: int, urgency: int) -> str:
    """ITIL-style matrix; impact and urgency run from 1 (high) to 3 (low)."""
    if not (1 <= impact <= 3 and 1 <= urgency <= 3):
        raise ValueError("impact and urgency are 1 (high) to 3 (low)")
    return PRIORITIES[min(impact + urgency - 2, 3)]


def number_text(number: int) -> str:
    return f"FL-{number}"
