"""How problem records look in the engineer CLI: the list, one problem with
its texts, incidents and history, and the problems block of `ticket show`.

Pure: every function takes the API's JSON and answers a rich renderable;
whatever came from HQ is wrapped in `Text`, never read as rich markup.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from server.client.cells import PRIORITY_STYLE, STATUS_STYLE, one_line, when

PROBLEM_STYLE = {
    "proposed": "magenta",
    "new": "bold",
    "investigating": "cyan",
    "known_error": "yellow",
    "resolved": "green",
    "closed": "dim",
    "dismissed": "dim",
}


def problems_table(items: list[dict[str, Any]]) -> Table:
    table = Table(header_style="bold")
    for name in ("problem", "prio", "status", "incidents", "site", "owner"):
        table.add_column(name, no_wrap=True)
    table.add_column("title")
    for item in items:
        status = str(item.get("status", ""))
        table.add_row(
            Text(str(item.get("number", ""))),
            Text(
                str(item.get("priority", "")),
                style=PRIORITY_STYLE.get(str(item.get("priority")), ""),
            ),
            Text(status, style=PROBLEM_STYLE.get(status, "")),
            Text(str(item.get("ticket_count", 0))),
            Text(str(item.get("site") or "hq")),
            Text(str(item.get("assignee") or "-")),
            one_line(item.get("title", "")),
        )
    return table


def _fields(p: dict[str, Any]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    origin = str(p.get("origin", "manual"))
    if origin != "manual":
        origin = f"{origin} ({p.get('origin_label') or p.get('origin_ref') or '?'})"
    rows: list[tuple[str, str]] = [
        ("priority", f"{p.get('priority')} (impact {p.get('impact')}, urgency {p.get('urgency')})"),
        ("site", str(p.get("site") or "HQ-wide")),
        ("owner", str(p.get("assignee") or "-")),
        ("origin", origin),
        ("opened", f"{when(p.get('created_at'))} by {p.get('created_by') or '-'}"),
    ]
    if p.get("proposed_reason"):
        rows.append(("proposed because", str(p["proposed_reason"])))
    for key, name in (
        ("accepted_at", "accepted"),
        ("known_error_at", "known error"),
        ("resolved_at", "resolved"),
        ("closed_at", "closed"),
        ("dismissed_at", "dismissed"),
    ):
        if p.get(key):
            rows.append((name, when(p[key])))
    if p.get("allowed_statuses"):
        rows.append(("next", ", ".join(str(s) for s in p["allowed_statuses"])))
    for name, value in rows:
        grid.add_row(name, Text(value))
    return grid


def history_text(event: dict[str, Any]) -> str:
    """What happened, in words. Pure."""
    kind = str(event.get("kind", ""))
    raw = event.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    body = str(event.get("body") or "")
    if kind == "state":
        text = f"{data.get('from', '?')} -> {data.get('to', '?')}"
        return f"{text}: {body}" if body else text
    if kind in ("ticket_linked", "ticket_unlinked"):
        return str(data.get("ticket", "?"))
    if kind == "update":
        return ", ".join(str(c) for c in data.get("changed") or []) or "fields"
    return body


def problem_detail(p: dict[str, Any]) -> RenderableType:
    status = str(p.get("status", ""))
    head = Text.assemble(
        (f"{p.get('number', '')} ", "bold"),
        (f"{p.get('priority', '')} ", PRIORITY_STYLE.get(str(p.get("priority")), "")),
        (status, PROBLEM_STYLE.get(status, "")),
        "\n",
        (str(p.get("title", "")), "bold"),
    )
    parts: list[RenderableType] = [head, Text(""), _fields(p)]
    if p.get("description"):
        parts += [Text(""), Text(str(p["description"]))]
    for key, name, style in (
        ("workaround", "Workaround", "yellow"),
        ("root_cause", "Root cause", ""),
        ("resolution", "Resolution", "green"),
    ):
        if p.get(key):
            parts += [Text(""), Panel(Text(str(p[key])), title=name, border_style=style)]
    tickets = p.get("tickets") or []
    parts += [Text(""), Text(f"Incidents ({p.get('ticket_count', len(tickets))})", style="bold")]
    table = Table(header_style="bold")
    for name in ("ticket", "prio", "status"):
        table.add_column(name, no_wrap=True)
    table.add_column("title")
    for t in tickets:
        table.add_row(
            Text(str(t.get("number", ""))),
            Text(str(t.get("priority", ""))),
            Text(str(t.get("status", "")), style=STATUS_STYLE.get(str(t.get("status")), "")),
            one_line(t.get("title", "")),
        )
    parts.append(table)
    history = p.get("history") or []
    parts += [Text(""), Text(f"History ({len(history)} events)", style="bold")]
    hist = Table(header_style="bold")
    hist.add_column("when", no_wrap=True)
    hist.add_column("who", no_wrap=True, max_width=24, overflow="ellipsis")
    hist.add_column("what", no_wrap=True)
    hist.add_column("")
    for event in history:
        hist.add_row(
            when(event.get("at")),
            Text(str(event.get("actor") or event.get("actor_type") or "-")),
            Text(str(event.get("kind", "")).replace("_", " ")),
            Text(history_text(event)),
        )
    parts.append(hist)
    return Group(*parts)


def ticket_problems(problems: list[dict[str, Any]]) -> list[RenderableType]:
    """The problems block of `ticket show`: one line each, and a box per known
    error's workaround."""
    if not problems:
        return []
    parts: list[RenderableType] = [Text("Problems", style="bold")]
    for p in problems:
        status = str(p.get("status", ""))
        parts.append(
            Text.assemble(
                (f"{p.get('number', '')} ", "bold"),
                (status, PROBLEM_STYLE.get(status, "")),
                f"  {p.get('title', '')}",
            )
        )
        if p.get("workaround"):
            parts.append(
                Panel(
                    Text(str(p["workaround"])),
                    title=f"Known error {p.get('number', '')}: workaround",
                    border_style="yellow",
                )
            )
    return parts
