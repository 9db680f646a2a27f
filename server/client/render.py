"""How the engineer CLI shows things: tables, a run's streaming output, a
job's live progress (rich).

On a terminal (as rich decides: a tty, or `TTY_COMPATIBLE=1`/`FORCE_COLOR`)
tables are drawn and progress is live; otherwise output is plain, line by
line, so it pipes and logs well. Everything that came from HQ or an agent is
shown as text, never read as rich markup.
"""

from __future__ import annotations

import sys
from collections import Counter
from datetime import UTC, datetime
from typing import Any, TextIO, TypeGuard

from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

FINAL = frozenset(
    {"ok", "failed", "timeout", "refused", "interrupted", "expired", "offline", "cancelled"}
)
STATUS_STYLE = {
    "ok": "green",
    "online": "green",
    "running": "cyan",
    "queued": "yellow",
    "offline": "yellow",
    "expired": "yellow",
    "cancelled": "dim",
    "failed": "red",
    "timeout": "red",
    "refused": "red",
    "interrupted": "red",
    "revoked": "red",
}
BYTE_COLUMNS = frozenset({"total", "used", "free", "bytes", "rss", "size", "available"})
PLAIN_WIDTH = 160  # tables written to a pipe are not cut at 80 columns
PREVIEW_LINES = 12


def console(file: TextIO | None = None, *, stderr: bool = False) -> Console:
    out = Console(file=file, stderr=stderr, highlight=False, soft_wrap=False)
    if not out.is_terminal and out.width < PLAIN_WIDTH:
        out.width = PLAIN_WIDTH
    return out


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop returns


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def ago(value: Any, now: datetime | None = None) -> str:
    """`2025-01-01T10:00:00Z` -> `3m ago`."""
    when = parse_time(value)
    if when is None:
        return "never"
    seconds = int(((now or datetime.now(UTC)) - when).total_seconds())
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def percent(value: Any) -> str:
    return f"{value:.0f}%" if isinstance(value, int | float) else "-"


def styled(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def agents_table(items: list[dict[str, Any]], now: datetime | None = None) -> Table:
    table = Table(title=None, show_lines=False, header_style="bold")
    for name in ("id", "site", "hostname", "status"):
        table.add_column(name, no_wrap=True)
    for name in ("cpu", "mem", "disk"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("last seen", no_wrap=True)
    for item in items:
        health = item.get("health") or {}
        table.add_row(
            Text(str(item.get("id", ""))),
            Text(str(item.get("site", ""))),
            Text(str(item.get("hostname", ""))),
            styled(str(item.get("status", ""))),
            percent(health.get("cpu_percent")),
            percent(health.get("memory_percent")),
            percent(health.get("disk_percent")),
            ago(item.get("last_seen"), now),
        )
    return table


def is_table(data: Any) -> TypeGuard[dict[str, Any]]:
    """Is this a run's structured data of the shape {"columns": [...], "rows": [[...]]}?"""
    return (
        isinstance(data, dict)
        and isinstance(data.get("columns"), list)
        and isinstance(data.get("rows"), list)
        and all(isinstance(r, list) for r in data["rows"])
    )


def cell(value: Any, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float) and column in BYTE_COLUMNS:
        return human_bytes(value)
    if isinstance(value, float):
        text = f"{value:.1f}"
        return text + "%" if column.endswith("percent") else text
    if isinstance(value, int) and column.endswith("percent"):
        return f"{value}%"
    if isinstance(value, list | dict):
        return ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)
    return str(value)


def fit_widths(
    natural: list[int], shrinkable: list[bool], room: int, floor: int = 8
) -> list[int] | None:
    """Column widths that fit `room` characters of content: the widest
    shrinkable (text) columns give way first, none below `floor`; numbers
    keep their width. None when they cannot fit. Pure."""
    widths = list(natural)
    excess = sum(widths) - room
    while excess > 0:
        candidates = [
            i for i, w in enumerate(widths) if shrinkable[i] and w > min(floor, natural[i])
        ]
        if not candidates:
            return None
        widest = max(candidates, key=lambda i: widths[i])
        widths[widest] -= 1
        excess -= 1
    return widths


def heading(column: str) -> str:
    """`memory_percent` -> `memory %`, `rx_bytes` -> `rx bytes`."""
    return column.replace("_percent", " %").replace("_", " ")


def data_table(data: dict[str, Any], width: int) -> Table | None:
    """A run's tabular data with text columns cut short (with …) to fit
    `width`; None when even that cannot fit."""
    columns = [str(c) for c in data["columns"]]
    rows: list[list[Any]] = data["rows"]
    padded = [[*row, *[None] * len(columns)][: len(columns)] for row in rows]
    cells = [[cell(v, c) for v, c in zip(row, columns, strict=True)] for row in padded]
    numeric = [
        any(r[i] is not None for r in padded)
        and all(
            r[i] is None or (isinstance(r[i], int | float) and not isinstance(r[i], bool))
            for r in padded
        )
        for i in range(len(columns))
    ]
    headings = [heading(c) for c in columns]
    natural = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headings)]
    room = width - 3 * len(columns) - 1  # borders and padding
    widths = fit_widths(natural, [not n for n in numeric], room)
    if widths is None:
        return None
    table = Table(header_style="bold")
    for name, num, w in zip(headings, numeric, widths, strict=True):
        table.add_column(
            name, justify="right" if num else "left", no_wrap=True, overflow="ellipsis", width=w
        )
    for row_cells in cells:
        table.add_row(*(Text(c) for c in row_cells))
    return table


class RunView:
    """A run's output as it streams, then its result.

    On a terminal: a transient live preview of the last lines while it runs,
    then a table when the result has tabular data (and the table fits the
    terminal), else the whole stdout as the agent wrote it.
    Elsewhere: stdout and stderr written through as they arrive."""

    def __init__(self, label: str, out: Console, err: Console) -> None:
        self.label = label
        self.out = out
        self.err = err
        self.terminal = out.is_terminal
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._tail: list[str] = []
        self._live: Live | None = None

    def __enter__(self) -> RunView:
        if self.terminal:
            self._live = Live(
                self._preview(),
                console=self.out,
                transient=True,
                refresh_per_second=8,
                vertical_overflow="crop",
            )
            self._live.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._stop()
        if exc_type is not None:
            self._flush()  # the stream broke: keep what did arrive

    def _stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _preview(self) -> Group:
        return Group(
            Spinner("dots", text=Text(f"running {self.label}")),
            Text("".join(self._tail)[-4000:].rstrip("\n")),
        )

    def output(self, stream: str, data: str) -> None:
        if not self.terminal:
            target = sys.stdout if stream == "stdout" else sys.stderr
            target.write(data)
            target.flush()
            return
        (self.stdout if stream == "stdout" else self.stderr).append(data)
        self._tail = [*self._tail, *data.splitlines(keepends=True)][-PREVIEW_LINES:]
        if self._live is not None:
            self._live.update(self._preview())

    def finish(self, result: dict[str, Any]) -> None:
        self._stop()
        if not self.terminal:
            return
        data = result.get("data")
        table = data_table(data, self.out.width) if is_table(data) else None
        if table is not None:
            self.out.print(table)
        else:
            self._flush(stderr=False)
        self._flush(stdout=False)

    def _flush(self, *, stdout: bool = True, stderr: bool = True) -> None:
        if stdout and self.stdout:
            self.out.file.write("".join(self.stdout))
            self.out.file.flush()
            self.stdout = []
        if stderr and self.stderr:
            self.err.file.write("".join(self.stderr))
            self.err.file.flush()
            self.stderr = []


class JobProgress:
    """Items of a job reaching their final status: a live bar on a terminal,
    else one line per item as it finishes."""

    def __init__(
        self, err: Console, total: int, hosts: dict[str, str], *, quiet: bool = False
    ) -> None:
        self.err = err
        self.quiet = quiet
        self.total = total
        self.hosts = hosts
        self.status: dict[str, str] = {}
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> JobProgress:
        if self.err.is_terminal and not self.quiet:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"),
                TimeElapsedColumn(),
                console=self.err,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("job", total=self.total, counts="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def done(self) -> int:
        return sum(1 for s in self.status.values() if s in FINAL)

    def counts(self) -> str:
        found = Counter(self.status.values())
        return " ".join(f"{n} {s}" for s, n in sorted(found.items()))

    def item(self, agent_id: str, status: str) -> None:
        before = self.status.get(agent_id)
        if before == status or (before in FINAL and status not in FINAL):
            return
        self.status[agent_id] = status
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done(), counts=self.counts())
            return
        if status in FINAL and not self.quiet:
            host = self.hosts.get(agent_id)
            name = f"{agent_id} ({host})" if host else agent_id
            self.err.print(Text(f"[{self.done()}/{self.total}] {name}: {status}"))


def job_table(job: dict[str, Any]) -> Table:
    table = Table(header_style="bold")
    for name in ("agent", "hostname", "status"):
        table.add_column(name, no_wrap=True)
    table.add_column("exit", justify="right")
    table.add_column("finished", no_wrap=True)
    table.add_column("reason")
    for item in job.get("items") or []:
        result = item.get("result") or {}
        code = result.get("exit_code")
        when = parse_time(result.get("finished_at"))
        table.add_row(
            Text(str(item.get("agent_id", ""))),
            Text(str(item.get("hostname") or "")),
            styled(str(item.get("status", ""))),
            "" if code is None else str(code),
            when.astimezone().strftime("%H:%M:%S") if when else "",
            Text(str(result.get("reason") or "")),
        )
    return table


def counts_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no items"
