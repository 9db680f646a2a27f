"""Failed-login throttling, pure: given a counter's state and the time, may
another attempt be made, and what does one more failure do?

Per user name and per source address: after a few failures each further
attempt must wait a growing delay; after many, the key is locked for a while.
The same answer is given whether or not the user exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Limits:
    free_failures: int  # failures allowed before delays start
    max_delay: float  # seconds
    lock_after: int  # failures that lock the key
    lock_for: timedelta
    forget_after: timedelta  # a quiet period resets the counter


USER_LIMITS = Limits(3, 30.0, 10, timedelta(minutes=15), timedelta(hours=1))
ADDRESS_LIMITS = Limits(10, 30.0, 50, timedelta(minutes=15), timedelta(hours=1))


@dataclass(frozen=True)
class State:
    failures: int
    last_failure_at: datetime | None
    locked_until: datetime | None


def retry_after(state: State, limits: Limits, now: datetime) -> float:
    """Seconds the caller must wait before this key may try again (0 = now)."""
    if state.locked_until is not None and now < state.locked_until:
        return (state.locked_until - now).total_seconds()
    if state.last_failure_at is None or now - state.last_failure_at > limits.forget_after:
        return 0.0
    excess = state.failures - limits.free_failures
    if excess < 0:
        return 0.0
    delay = min(limits.max_delay, float(2**excess))
    ready = state.last_failure_at + timedelta(seconds=delay)
    return max(0.0, (ready - now).total_seconds())


def after_failure(state: State, limits: Limits, now: datetime) -> State:
    failures = state.failures
    if state.last_failure_at is not None and now - state.last_failure_at > limits.forget_after:
        failures = 0
    if state.locked_until is not None and now >= state.locked_until:
        failures = 0
    failures += 1
    locked = now + limits.lock_for if failures >= limits.lock_after else None
    return State(failures, now, locked)
