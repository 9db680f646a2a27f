"""What the engineer CLI's ticket, problem and session views share: status and
priority styles, times in the local zone, cells cut short rather than wrapped."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from server.client.render import parse_time

STATUS_STYLE = {
    "new": "bold",
    "acknowledged": "cyan",
    "in_progress": "cyan",
    "waiting": "blue",
    "resolved": "green",
    "closed": "dim",
    "cancelled": "dim",
}
PRIORITY_STYLE = {"P1": "bold red", "P2": "yellow", "P3": "", "P4": "dim"}


def when(value: Any) -> str:
    """An API time in the local time zone, to the minute; `-` for none."""
    at = parse_time(value)
    return at.astimezone().strftime("%Y-%m-%d %H:%M") if at else "-"


def one_line(value: Any) -> Text:
    """A cell that is cut short with … rather than wrapped."""
    return Text(str(value or ""), no_wrap=True, overflow="ellipsis")
