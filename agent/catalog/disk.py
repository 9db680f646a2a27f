"""Disk diagnostics: usage per file system, and the largest files and
directories under a path inside the policy's file roots.

Walks never follow symlinks, stay on one file system, stop when the run ends
(the context's stop event) and give up after a bounded number of entries,
saying so in `incomplete`.
"""

from __future__ import annotations

import heapq
import os
import stat
import threading
from datetime import UTC, datetime
from typing import Any

import psutil
from pydantic import Field

from agent.catalog.base import (
    KIB,
    AbsPath,
    Context,
    Entry,
    NoParams,
    Outcome,
    Params,
    Problem,
    Refused,
    human_bytes,
    render_table,
    resolve_under,
    table,
)

_SKIP_FS = {"squashfs", "iso9660", "udf", "tmpfs", "devtmpfs", "overlay", "proc", "sysfs"}
MAX_WALK = 500_000  # entries a walk looks at before it stops and says so

# --- disk.usage ---------------------------------------------------------------

_USAGE_COLUMNS = [
    "mount",
    "device",
    "fstype",
    "total",
    "used",
    "free",
    "percent",
    "inodes_percent",
]


def _usage() -> list[list[Any]]:
    rows: list[list[Any]] = []
    seen: set[str] = set()
    for part in psutil.disk_partitions(all=False):
        if part.mountpoint in seen or part.device.startswith("/dev/loop"):
            continue
        if part.fstype in _SKIP_FS and part.mountpoint != "/":
            continue
        seen.add(part.mountpoint)
        try:
            usage = psutil.disk_usage(part.mountpoint)
            st = os.statvfs(part.mountpoint)
        except OSError:
            continue
        inodes = round(100.0 * (st.f_files - st.f_ffree) / st.f_files, 1) if st.f_files else None
        rows.append(
            [
                part.mountpoint,
                part.device,
                part.fstype,
                usage.total,
                usage.used,
                usage.free,
                usage.percent,
                inodes,
            ]
        )
    if "/" not in seen:  # containers: the root may not be listed as a partition
        usage = psutil.disk_usage("/")
        rows.insert(0, ["/", "-", "-", usage.total, usage.used, usage.free, usage.percent, None])
    return rows


async def disk_usage(ctx: Context, _params: NoParams) -> Outcome:
    rows = await ctx.thread(_usage)
    shown = [[*r[:3], *(human_bytes(v) for v in r[3:6]), f"{r[6]}%", r[7]] for r in rows]
    await ctx.write(render_table(_USAGE_COLUMNS, shown))
    return Outcome(data=table(_USAGE_COLUMNS, rows))


# --- disk.largest -------------------------------------------------------------


class LargestParams(Params):
    path: AbsPath | None = Field(
        default=None,
        description="a directory under one of the policy's file_roots (default: the first root)",
    )
    n: int = Field(default=20, ge=1, le=200)


def _walk(top: str, n: int, stop: threading.Event) -> dict[str, Any]:
    """The n largest files under `top` and the size of each directly below it."""
    if not os.path.isdir(top):
        raise Problem(f"{top} is not a directory on this machine")
    device = os.lstat(top).st_dev
    files: list[tuple[int, str, float]] = []  # min-heap of the n largest
    children: dict[str, list[int]] = {}  # name -> [bytes, files]
    scanned = total = errors = 0
    incomplete = False
    stack: list[tuple[str, str | None]] = [(top, None)]
    while stack:
        if stop.is_set() or scanned >= MAX_WALK:
            incomplete = True
            break
        path, child = stack.pop()
        try:
            with os.scandir(path) as it:
                for entry in it:
                    scanned += 1
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        errors += 1
                        continue
                    key = child if child is not None else entry.name
                    if stat.S_ISDIR(st.st_mode):
                        if st.st_dev == device:
                            stack.append((entry.path, key))
                            children.setdefault(key, [0, 0])
                        continue
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    size = st.st_blocks * 512 if st.st_blocks else st.st_size
                    total += size
                    slot = children.setdefault(key, [0, 0])
                    slot[0] += size
                    slot[1] += 1
                    item = (size, entry.path, st.st_mtime)
                    if len(files) < n:
                        heapq.heappush(files, item)
                    elif item > files[0]:
                        heapq.heapreplace(files, item)
        except OSError:
            errors += 1
    biggest = sorted(files, reverse=True)
    dirs = sorted(children.items(), key=lambda kv: kv[1][0], reverse=True)[:n]
    return {
        "path": top,
        "files": table(
            ["path", "bytes", "modified"],
            [[p, s, _iso(m)] for s, p, m in biggest],
        ),
        "dirs": table(
            ["path", "bytes", "files"],
            [[os.path.join(top, name), v[0], v[1]] for name, v in dirs],
        ),
        "scanned_entries": scanned,
        "scanned_bytes": total,
        "errors": errors,
        "incomplete": incomplete,
    }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


async def disk_largest(ctx: Context, params: LargestParams) -> Outcome:
    roots = ctx.policy.file_roots
    if params.path is None and not roots:
        raise Refused("this machine's policy allows no file roots (file_roots = [])")
    path = params.path if params.path is not None else roots[0]
    real = await ctx.thread(resolve_under, path, roots)
    data = await ctx.thread(_walk, real, params.n, ctx.stop)
    files, dirs = data["files"], data["dirs"]
    await ctx.line(f"largest files under {real}:")
    rows = [[r[0], human_bytes(r[1]), r[2]] for r in files["rows"]]
    await ctx.write(render_table(files["columns"], rows, "(no files)"))
    await ctx.line(f"largest entries directly under {real}:")
    rows = [[r[0], human_bytes(r[1]), r[2]] for r in dirs["rows"]]
    await ctx.write(render_table(dirs["columns"], rows, "(nothing)"))
    note = " (stopped early: incomplete)" if data["incomplete"] else ""
    await ctx.line(
        f"{data['scanned_entries']} entries, {human_bytes(data['scanned_bytes'])} scanned{note}"
    )
    return Outcome(data=data)


ENTRIES = [
    Entry(
        "disk.usage",
        "Space and inode use of each mounted file system",
        NoParams,
        "diagnostic",
        timeout=15,
        output_cap=64 * KIB,
        run=disk_usage,
    ),
    Entry(
        "disk.largest",
        "The largest files and subdirectories under a path in the allowed file roots",
        LargestParams,
        "diagnostic",
        timeout=120,
        output_cap=256 * KIB,
        run=disk_largest,
    ),
]
