"""How tickets and KPIs look in the engineer CLI: the ticket list with its SLA
badge, one ticket with its clocks and timeline, the KPI report.

Pure: every function takes the API's JSON (and `now`) and answers text or a
rich renderable; nothing here does I/O. Whatever came from HQ is wrapped in
`Text`, never read as rich markup.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from server.client import problemview
from server.client.cells import PRIORITY_STYLE, STATUS_STYLE, one_line, when
from server.client.render import parse_time
from server.itsm import sla

BADGE_STYLE = {
    "breached": "bold red",
    "missed": "red",
    "warning": "yellow",
    "paused": "blue",
    "ok": "green",
    "met": "dim green",
}
CLOCK_NAMES = {"ack": "acknowledge", "response": "first response", "resolve": "resolve"}


def span(seconds: float | None) -> str:
    """A length of time for people: `45s`, `12m 30s`, `1h 05m`, `2d 03h`."""
    if seconds is None:
        return "-"
    total = round(abs(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        minutes, secs = divmod(total, 60)
        return f"{minutes}m {secs:02d}s" if secs else f"{minutes}m"
    if total < 86400:
        hours, rest = divmod(total, 3600)
        return f"{hours}h {rest // 60:02d}m"
    days, rest = divmod(total, 86400)
    return f"{days}d {rest // 3600:02d}h"


def short_span(seconds: float) -> str:
    """The compact form for table cells: `45s`, `12m`, `2h10m`, `3d4h`."""
    total = round(abs(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m"
    if total < 86400:
        hours, rest = divmod(total, 3600)
        return f"{hours}h{rest // 60:02d}m"
    days, rest = divmod(total, 86400)
    return f"{days}d{rest // 3600}h"


def rate(value: Any) -> str:
    """A share as a percentage: 0.5 -> `50%`, 2/3 -> `66.7%`; None -> `-`."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    pct = value * 100
    return f"{pct:.0f}%" if abs(pct - round(pct)) < 0.05 else f"{pct:.1f}%"


def sla_badge(clocks: dict[str, Any], now: datetime | None = None) -> tuple[str, str]:
    """(label, style) for a ticket's worst SLA clock. Running clocks count as
    `ok`; the label carries the time to the nearest due (or past it). Pure."""
    got = sla.badge(clocks, now or datetime.now(UTC))
    if not got.state:
        return "-", ""
    label = got.state
    if got.seconds is not None and got.state in ("ok", "warning"):
        label = f"{got.state} {short_span(got.seconds)} left"
    elif got.seconds is not None and got.state == "breached":
        label = f"breached {short_span(got.seconds)} ago"
    return label, BADGE_STYLE[got.state]


def _styled(value: Any, styles: dict[str, str]) -> Text:
    text = str(value if value is not None else "-")
    return Text(text, style=styles.get(text, ""))


def tickets_table(items: list[dict[str, Any]], now: datetime | None = None) -> Table:
    table = Table(header_style="bold")
    for name in ("ticket", "prio", "status", "SLA", "site", "assignee"):
        table.add_column(name, no_wrap=True)
    table.add_column("title")  # the one that gives way on a narrow terminal
    for item in items:
        label, style = sla_badge(item.get("sla") or {}, now)
        status = str(item.get("status", ""))
        if status == "waiting" and item.get("waiting_reason"):
            status = f"waiting ({item['waiting_reason']})"
        table.add_row(
            Text(str(item.get("number", ""))),
            _styled(item.get("priority"), PRIORITY_STYLE),
            Text(status, style=STATUS_STYLE.get(str(item.get("status")), "")),
            Text(label, style=style),
            Text(str(item.get("site", ""))),
            Text(str(item.get("assignee") or "-")),
            one_line(item.get("title", "")),
        )
    return table


def _fields(t: dict[str, Any]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    machines = t.get("machines")
    if isinstance(machines, list) and machines:
        agents = ", ".join(f"{m.get('hostname')} ({m.get('id')})" for m in machines)
    else:
        agents = ", ".join(str(a) for a in t.get("agents") or []) or "-"
    rows: list[tuple[str, str]] = [
        ("type", str(t.get("type", "-"))),
        ("priority", f"{t.get('priority')} (impact {t.get('impact')}, urgency {t.get('urgency')})"),
        ("site", str(t.get("site", "-"))),
        ("machines", agents),
        ("requester", str(t.get("requester") or "-")),
        ("assignee", str(t.get("assignee") or "-")),
        ("tier", str(t.get("tier", "-"))),
        ("source", str(t.get("source", "-"))),
        ("created", when(t.get("created_at"))),
    ]
    for key, name in (
        ("acknowledged_at", "acknowledged"),
        ("first_response_at", "first response"),
        ("resolved_at", "resolved"),
        ("closed_at", "closed"),
    ):
        if t.get(key):
            rows.append((name, when(t[key])))
    if t.get("paused_seconds"):
        rows.append(("paused", span(float(t["paused_seconds"]))))
    if t.get("reopen_count"):
        rows.append(("reopened", f"{t['reopen_count']} time(s)"))
    if t.get("escalation_count"):
        rows.append(("escalated", f"{t['escalation_count']} time(s)"))
    if t.get("resolution_code") or t.get("resolution_text"):
        code = t.get("resolution_code") or "-"
        text = t.get("resolution_text") or ""
        rows.append(("resolution", f"{code}: {text}" if text else str(code)))
    if t.get("rating") is not None:
        comment = t.get("rating_comment") or ""
        rows.append(("rating", f"{t['rating']}/5 {comment}".strip()))
    if t.get("allowed_actions"):
        rows.append(("next", ", ".join(str(a) for a in t["allowed_actions"])))
    for name, value in rows:
        grid.add_row(name, Text(value))
    return grid


def clocks_table(clocks: dict[str, Any], now: datetime | None = None) -> Table:
    now = now or datetime.now(UTC)
    table = Table(header_style="bold", title=None)
    for name in ("SLA clock", "state", "due", "used / target"):
        table.add_column(name, no_wrap=True)
    for kind in ("ack", "response", "resolve"):
        clock = clocks.get(kind)
        if not isinstance(clock, dict):
            continue
        state = str(clock.get("state", "-"))
        due = parse_time(clock.get("due"))
        due_text = "-"
        if due is not None:
            left = (due - now).total_seconds()
            rel = f"in {span(left)}" if left >= 0 else f"{span(left)} ago"
            due_text = f"{when(clock.get('due'))} ({rel})"
        used = f"{span(clock.get('elapsed_seconds'))} / {span(clock.get('target_seconds'))}"
        style = BADGE_STYLE.get("ok" if state == "running" else state, "")
        table.add_row(CLOCK_NAMES.get(kind, kind), Text(state, style=style), due_text, used)
    return table


LABELS = {
    "created": "opened",
    "state": "status",
    "assignment": "assigned",
    "escalation": "escalated",
    "agent_linked": "machine linked",
    "alert_fired": "alert fired",
    "alert_recovered": "alert recovered",
    "sla_warning": "SLA warning",
    "sla_breach": "SLA breach",
    "update": "changed",
    "help_repeat": "asked again",
    "self_served_repeat": "said again it is solved",
    "problem": "problem",
}


def event_label(event: dict[str, Any]) -> str:
    """What kind of event, in a word or two. Pure."""
    kind = str(event.get("kind", ""))
    if kind == "comment":
        return "internal note" if event.get("internal") else "comment"
    label = LABELS.get(kind, kind)
    return f"{label} (internal)" if event.get("internal") else label


def event_text(event: dict[str, Any]) -> str:
    """What happened, in words. Pure."""
    kind = str(event.get("kind", ""))
    body = str(event.get("body") or "")
    raw = event.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if kind == "created":
        head = (
            f"{data.get('source', '?')}, {data.get('priority', '?')}, tier {data.get('tier', '?')}"
        )
        return f"{head}: {body}" if body else head
    if kind == "state":
        text = f"{data.get('from', '?')} -> {data.get('to', '?')}"
        if data.get("reason"):
            text += f" ({data['reason']})"
        if data.get("resolution_code"):
            text += f" [{data['resolution_code']}]"
        return f"{text}: {body}" if body else text
    if kind == "escalation":
        return f"to {data.get('to', 'hq')}: {body}"
    if kind == "agent_linked":
        return str(data.get("agent_id", "?"))
    if kind == "run":
        text = f"{data.get('name', '?')} on {data.get('agent_id', '?')}: {data.get('status', '?')}"
        return f"{text} (result {data['run_id']})" if data.get("run_id") else text
    if kind == "session":
        sid = data.get("session_id")
        return f"{body} (session {sid})" if sid else body
    if kind in ("sla_warning", "sla_breach"):
        due = when(data.get("due")) if parse_time(data.get("due")) else data.get("due")
        return f"{body} (due {due})" if due else body
    if kind == "alert_fired" and data.get("count"):
        return f"{body} (x{data['count']})"
    if kind == "snapshot":
        return body or "health snapshot attached"
    if kind == "rating":
        return f"{data.get('score', '?')}/5" + (f": {body}" if body else "")
    if kind == "update":
        changed = ", ".join(str(c) for c in data.get("changed") or [])
        return f"{changed or 'fields'} (priority {data.get('priority', '?')})"
    return body


def timeline_table(events: list[dict[str, Any]]) -> Table:
    table = Table(header_style="bold", show_lines=False)
    table.add_column("when", no_wrap=True)
    table.add_column("who", no_wrap=True, max_width=24, overflow="ellipsis")
    table.add_column("what", no_wrap=True)
    table.add_column("")  # wraps on a narrow terminal
    for event in events:
        table.add_row(
            when(event.get("at")),
            Text(str(event.get("actor") or event.get("actor_type") or "-")),
            Text(event_label(event)),
            Text(event_text(event)),
        )
    return table


def _pct(value: Any) -> Text:
    if not isinstance(value, int | float):
        return Text("-")
    style = "bold red" if value >= 90 else "yellow" if value >= 75 else ""
    return Text(f"{value:.0f}%", style=style)


def _size(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(value)


def snapshot_view(s: dict[str, Any]) -> RenderableType:
    """A health snapshot (a help request's): CPU, load, memory, disks and the
    top processes by CPU. Pure."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    cpu = s.get("cpu") or {}
    grid.add_row(
        "CPU", Text.assemble(_pct(cpu.get("percent")), f" of {cpu.get('count', '?')} cores")
    )
    load = s.get("load") or {}
    grid.add_row("load", " / ".join(f"{load.get(k, 0):.2f}" for k in ("1m", "5m", "15m")))
    mem = s.get("memory") or {}
    grid.add_row(
        "memory",
        Text.assemble(
            _pct(mem.get("percent")), f" ({_size(mem.get('used'))} of {_size(mem.get('total'))})"
        ),
    )
    if s.get("uptime_seconds") is not None:
        grid.add_row("up for", span(float(s["uptime_seconds"])))
    if s.get("process_count") is not None:
        grid.add_row("processes", str(s["process_count"]))
    parts: list[RenderableType] = [grid]
    disks = Table(header_style="bold", title=None)
    for name in ("disk", "used", "size", "full"):
        disks.add_column(name, no_wrap=True, justify="left" if name == "disk" else "right")
    for d in s.get("disks") or []:
        disks.add_row(
            Text(str(d.get("mount", "?"))),
            _size(d.get("used")),
            _size(d.get("total")),
            _pct(d.get("percent")),
        )
    if disks.row_count:
        parts.append(disks)
    procs = Table(header_style="bold", title=None)
    for name in ("pid", "process", "user", "CPU", "memory"):
        procs.add_column(name, no_wrap=name != "process")
    for p in s.get("top_cpu") or []:
        procs.add_row(
            str(p.get("pid", "?")),
            one_line(p.get("name")),
            Text(str(p.get("user") or "-")),
            f"{p.get('cpu_percent', 0):.1f}%",
            f"{p.get('memory_percent', 0):.1f}%",
        )
    if procs.row_count:
        parts.append(procs)
    return Group(*parts)


def ticket_detail(t: dict[str, Any], now: datetime | None = None) -> RenderableType:
    """A ticket: its heading, fields, SLA clocks, description and timeline."""
    label, style = sla_badge(t.get("sla") or {}, now)
    status = str(t.get("status", ""))
    if t.get("waiting_reason") and status == "waiting":
        status += f" ({t['waiting_reason']})"
    head = Text.assemble(
        (f"{t.get('number', '')} ", "bold"),
        (f"{t.get('priority', '')} ", PRIORITY_STYLE.get(str(t.get("priority")), "")),
        (status, STATUS_STYLE.get(str(t.get("status")), "")),
        "  SLA ",
        (label, style),
        "\n",
        (str(t.get("title", "")), "bold"),
    )
    parts: list[RenderableType] = [head, Text(""), _fields(t)]
    if t.get("description"):
        parts += [Text(""), Text(str(t["description"]))]
    linked = problemview.ticket_problems(t.get("problems") or [])
    if linked:
        parts += [Text(""), *linked]
    parts += [Text(""), clocks_table(t.get("sla") or {}, now)]
    events = t.get("timeline") or []
    snapshots = [e for e in events if e.get("kind") == "snapshot" and e.get("data")]
    if snapshots and isinstance(snapshots[-1]["data"].get("snapshot"), dict):
        data = snapshots[-1]["data"]
        heading = f"Health snapshot (when help was asked, {when(data.get('sampled_at'))})"
        parts += [Text(""), Text(heading, style="bold"), snapshot_view(data["snapshot"])]
    parts += [Text(""), Text(f"Timeline ({len(events)} events)", style="bold")]
    parts.append(timeline_table(events))
    return Group(*parts)


# --- KPIs --------------------------------------------------------------------------------

TIMES = (
    ("time_to_acknowledge", "time to acknowledge"),
    ("time_to_first_response", "time to first response"),
    ("time_to_resolve", "time to resolve (paused excluded)"),
)
RATES = (
    ("tier1_resolution_rate", "tier-1 resolution rate"),
    ("escalation_rate", "escalation rate"),
    ("reopen_rate", "reopen rate"),
    ("csat", "CSAT (ratings of 4-5)"),
    ("csat_response_rate", "CSAT response rate"),
    ("auto_resolved_share", "auto-resolved share"),
    ("deflection_rate", "deflection rate (self-served / asked)"),
)


def kpi_rows(k: dict[str, Any]) -> list[tuple[str, str]]:
    """One group's KPIs as (measure, value) lines: times as h/m, rates as %. Pure."""
    rows = [
        ("tickets", str(k.get("tickets", 0))),
        ("resolved", str(k.get("resolved", 0))),
        ("self-served by the knowledge base", str(k.get("self_served", 0))),
    ]
    for key, name in TIMES:
        stats = k.get(key) or {}
        if not stats.get("count"):
            rows.append((f"{name}, mean / median / p90", "-"))
            continue
        value = " / ".join(span(stats.get(m)) for m in ("mean", "median", "p90"))
        rows.append((f"{name}, mean / median / p90", f"{value} (n={stats['count']})"))
    compliance = k.get("sla_compliance") or {}
    for clock in ("ack", "response", "resolve"):
        rows.append((f"SLA met: {CLOCK_NAMES[clock]}", rate(compliance.get(clock))))
    for key, name in RATES:
        rows.append((name, rate(k.get(key))))
    per_ticket = k.get("alerts_per_ticket")
    rows.append(
        ("alerts per alert ticket", f"{per_ticket:.1f}" if isinstance(per_ticket, float) else "-")
    )
    return rows


def kpi_table(report: dict[str, Any]) -> Table:
    """Measures down, groups across (one column "all" when not grouped)."""
    groups: dict[str, Any] = report.get("groups") or {}
    table = Table(header_style="bold")
    table.add_column("measure", no_wrap=True)
    columns = {name: kpi_rows(values) for name, values in groups.items()}
    for name in columns:
        table.add_column(Text(name), justify="right", no_wrap=True)
    measures = [m for m, _ in next(iter(columns.values()), [])]
    for index, measure in enumerate(measures):
        table.add_row(measure, *(rows[index][1] for rows in columns.values()))
    return table
