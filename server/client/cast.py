"""Session recordings as HQ returns them (asciicast v2), and their replay timing.

A cast is a JSON header line, then one `[time, code, data]` line per event:
"o" output, "i" input, "r" resize (`"80x24"`). Replay writes the output
events with their recorded timing divided by the speed; an idle gap longer
than `max_idle` (after which nobody learns anything by waiting) is cut to it
first, as `asciinema play -i` does.

Pure: parsing and scheduling, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_IDLE = 2.0


class CastError(ValueError):
    """The recording is not an asciicast v2 we can read."""


@dataclass(frozen=True)
class Event:
    at: float
    code: str
    data: str


@dataclass(frozen=True)
class Cast:
    header: dict[str, Any]
    events: list[Event] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int] | None:
        width, height = self.header.get("width"), self.header.get("height")
        if isinstance(width, int) and isinstance(height, int):
            return width, height
        return None

    def output(self) -> str:
        """Everything the terminal showed, without timing."""
        return "".join(e.data for e in self.events if e.code == "o")

    def duration(self) -> float:
        return self.events[-1].at if self.events else 0.0


def parse(raw: bytes) -> Cast:
    lines = raw.decode("utf-8", "replace").splitlines()
    if not lines:
        raise CastError("the recording is empty")
    try:
        header = json.loads(lines[0])
    except ValueError:
        raise CastError("the recording's first line is not a JSON header") from None
    if not isinstance(header, dict) or header.get("version") != 2:
        raise CastError("not an asciicast v2 recording")
    events: list[Event] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            raise CastError(f"line {number} of the recording is not JSON") from None
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not isinstance(item[0], int | float)
            or not isinstance(item[1], str)
            or not isinstance(item[2], str)
        ):
            raise CastError(f"line {number} of the recording is not [time, code, data]")
        events.append(Event(float(item[0]), item[1], item[2]))
    return Cast(header, events)


def schedule(
    events: list[Event], *, speed: float = 1.0, max_idle: float = DEFAULT_MAX_IDLE
) -> Iterator[tuple[float, str]]:
    """(seconds to wait before it, data) for each output event: the gap since
    the previous output, cut to `max_idle`, divided by `speed`."""
    if speed <= 0:
        raise ValueError("speed must be positive")
    last = 0.0
    for event in events:
        if event.code != "o":
            continue
        gap = max(0.0, event.at - last)
        last = event.at
        yield min(gap, max_idle) / speed, event.data


def play_time(events: list[Event], *, speed: float, max_idle: float) -> float:
    """How long a replay takes."""
    return sum(delay for delay, _ in schedule(events, speed=speed, max_idle=max_idle))
