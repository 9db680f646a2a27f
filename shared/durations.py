"""Human durations on command lines and in API bodies: `90s`, `15m`, `1h`, `30d`, `2w`."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(text: str | int | float) -> timedelta:
    """`1h` -> 1 hour; a bare number is seconds. Raises ValueError."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = _RE.match(text)
        if not match:
            raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 1h, 30d)")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
