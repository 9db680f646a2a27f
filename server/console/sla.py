"""SLA badges as the console shows them: the worst clock with the time left
to its due (or past it), in the page's language. The arithmetic is the CLI's
(`server.itsm.sla.badge`); only the words are the console's."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from server.console import i18n
from server.console.i18n import N_
from server.itsm import sla

STATES = {
    "ok": N_("on time"),
    "running": N_("on time"),
    "warning": N_("at risk"),
    "breached": N_("breached"),
    "met": N_("met"),
    "missed": N_("missed"),
    "paused": N_("paused"),
}
CLOCKS = {"ack": N_("acknowledge"), "response": N_("first response"), "resolve": N_("resolve")}


def span(seconds: float) -> str:
    """A length of time, short: `45s`, `29m`, `2h 10m`, `3d 4h` (translated)."""
    total = round(abs(seconds))
    if total < 60:
        return i18n.gettext("%(n)ds") % {"n": total}
    if total < 3600:
        return i18n.gettext("%(n)dm") % {"n": total // 60}
    if total < 86400:
        return i18n.gettext("%(h)dh %(m)02dm") % {"h": total // 3600, "m": total % 3600 // 60}
    return i18n.gettext("%(d)dd %(h)dh") % {"d": total // 86400, "h": total % 86400 // 3600}


def _left(state: str, seconds: float | None) -> str:
    if seconds is None:
        return ""
    if state == "breached" or seconds < 0:
        return i18n.gettext("%(span)s overdue") % {"span": span(seconds)}
    return i18n.gettext("%(span)s left") % {"span": span(seconds)}


def badge(clocks: Mapping[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """What the ticket list and page show: state (for the colour), the words,
    and the due time (for the tooltip and the page)."""
    got = sla.badge(clocks, now or datetime.now(UTC))
    if not got.state:
        return {"state": "", "text": "—", "due": None}
    words = i18n.gettext(STATES[got.state])
    left = _left(got.state, got.seconds)
    return {
        "state": got.state,
        "text": f"{words} · {left}" if left else words,
        "due": got.due,
        "clock": i18n.gettext(CLOCKS.get(got.kind or "", got.kind or "")),
    }


def clock_rows(clocks: Mapping[str, Any], now: datetime | None = None) -> list[dict[str, Any]]:
    """Each clock of a ticket: its name, state, due time and time left, for the page."""
    now = now or datetime.now(UTC)
    rows = []
    for kind in sla.CLOCKS:
        clock = clocks.get(kind)
        if clock is None:
            continue
        one = sla.badge({kind: clock}, now)
        rows.append(
            {
                "kind": kind,
                "name": i18n.gettext(CLOCKS[kind]),
                "state": one.state,
                "words": i18n.gettext(STATES.get(one.state, one.state)),
                "due": one.due,
                "left": _left(one.state, one.seconds),
            }
        )
    return rows
