"""`log.tail`: the last lines of a systemd unit's journal or of a log file.

A file must lie under one of the policy's file roots once symlinks and `..`
are resolved, and is opened without following a symlink at the last step.
An optional regular expression (length-limited, no nested quantifiers) is
applied here in Python to the last `SCAN_LINES` lines, never handed to a tool.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from typing import Any, Self

from pydantic import Field, model_validator

from agent.catalog.base import (
    MIB,
    AbsPath,
    Context,
    Entry,
    Outcome,
    Params,
    Pattern,
    Problem,
    Unit,
    resolve_under,
    systemd_running,
)
from agent.runner import describe_exit

SCAN_LINES = 20_000  # lines a pattern is applied to
MAX_SCAN_BYTES = 32 * MIB  # bytes read back from the end of a file at most
MAX_LINE = 8192  # characters kept of one line
_BLOCK = 64 * 1024


class TailParams(Params):
    unit: Unit | None = Field(default=None, description="a systemd unit's journal")
    path: AbsPath | None = Field(default=None, description="a file under the allowed file roots")
    lines: int = Field(default=50, ge=1, le=5000)
    pattern: Pattern | None = Field(default=None, description="keep only lines matching this")

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.unit is None) == (self.path is None):
            raise ValueError("give exactly one of unit or path")
        return self


def _tail_file(path: str, want: int, stop: threading.Event) -> tuple[list[str], int]:
    """The last `want` lines of a regular file: (lines, bytes read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise Problem(f"cannot open {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Problem(f"{path} is not a regular file")
        pos = st.st_size
        blocks: list[bytes] = []
        newlines = 0
        while pos > 0 and newlines <= want and st.st_size - pos < MAX_SCAN_BYTES:
            if stop.is_set():
                break
            step = min(_BLOCK, pos)
            pos -= step
            block = os.pread(fd, step, pos)
            newlines += block.count(b"\n")
            blocks.append(block)
    finally:
        os.close(fd)
    raw = b"".join(reversed(blocks))
    parts = raw.split(b"\n")
    if raw.endswith(b"\n"):
        parts.pop()
    if pos > 0 and parts:
        parts = parts[1:]  # the first one is (probably) a partial line
    lines = [part[:MAX_LINE].decode(errors="replace") for part in parts[-want:]]
    return lines, len(raw)


def _filter(lines: list[str], pattern: str | None, want: int) -> list[str]:
    if pattern is None:
        return lines[-want:]
    rx = re.compile(pattern)
    return [line for line in lines if rx.search(line)][-want:]


async def _journal(ctx: Context, params: TailParams, unit: str) -> tuple[list[str], int]:
    scan = SCAN_LINES if params.pattern else params.lines
    argv = ["journalctl", f"--unit={unit}", "-n", str(scan), "--no-pager", "-o", "short-iso"]
    res = await ctx.exec(argv, stream=False)
    if res.exit_code != 0:
        detail = res.stderr.strip() or describe_exit(res.exit_code)
        raise Problem(f"journalctl failed: {detail}", exit_code=res.exit_code)
    lines = [
        line[:MAX_LINE]
        for line in res.stdout.splitlines()
        if line and not line.startswith("-- ")  # "-- No entries --", "-- Boot ... --"
    ]
    return lines, len(lines)


async def log_tail(ctx: Context, params: TailParams) -> Outcome:
    data: dict[str, Any] = {"pattern": params.pattern}
    if params.path is not None:
        real = await ctx.thread(resolve_under, params.path, ctx.policy.file_roots)
        want = SCAN_LINES if params.pattern else params.lines
        lines, read = await ctx.thread(_tail_file, real, want, ctx.stop)
        data.update(source="file", path=real, scanned_lines=len(lines), scanned_bytes=read)
    else:
        assert params.unit is not None
        lines, scanned = await _journal(ctx, params, params.unit)
        data.update(source="journal", unit=params.unit, scanned_lines=scanned)
    shown = await ctx.thread(_filter, lines, params.pattern, params.lines)
    data["lines"] = len(shown)
    for line in shown:
        await ctx.line(line)
    if not shown:
        what = f"the journal of {params.unit}" if params.unit else data["path"]
        why = " matching the pattern" if params.pattern else ""
        extra = ""
        if params.unit and not systemd_running():
            extra = "; systemd is not running on this machine, so units write no journal"
        await ctx.line(f"(no lines{why} in {what}{extra})")
    return Outcome(data=data)


ENTRIES = [
    Entry(
        "log.tail",
        "The last lines of a unit's journal or of a log file, optionally filtered by a regex",
        TailParams,
        "diagnostic",
        timeout=30,
        output_cap=MIB,
        run=log_tail,
    ),
]
