"""Actions: entries that change the machine's state (tier "action", allowed
only while the policy's `allow_actions` is true).

- `service.restart`: `systemctl restart -- UNIT`, then the unit's new state.
- `process.kill`: a signal from a fixed set; never PID 1, the agent itself
  or its parent.
- `disk.cleanup`: regular files neither read nor written for a while (atime
  and mtime) in one of the policy's `cleanup_dirs`; a dry run unless asked;
  never follows a symlink (files are removed relative to an open directory
  descriptor) and stays on one file system.
- `net.flush_dns`: flush the local DNS cache where one is installed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import threading
import time
from datetime import UTC, datetime
from typing import Any, Literal

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
    Unit,
    human_bytes,
    render_table,
    table,
    which,
)
from agent.catalog.service import require_systemd, unit_properties
from agent.runner import describe_exit

# --- service.restart ----------------------------------------------------------


class RestartParams(Params):
    unit: Unit


async def service_restart(ctx: Context, params: RestartParams) -> Outcome:
    require_systemd("service.restart")
    res = await ctx.exec(["systemctl", "restart", "--no-pager", "--", params.unit])
    props = await unit_properties(ctx, params.unit)
    state = props.get("active_state", "unknown")
    await ctx.line(f"{params.unit}: {state} ({props.get('sub_state', '?')})")
    if res.exit_code != 0:
        return Outcome(
            data=props,
            status="failed",
            reason=f"systemctl restart {params.unit} {describe_exit(res.exit_code)}; "
            f"the unit is now {state}",
            exit_code=res.exit_code,
        )
    return Outcome(data=props, exit_code=0)


# --- process.kill -------------------------------------------------------------

Signal = Literal["TERM", "KILL", "HUP", "INT", "QUIT", "USR1", "USR2", "STOP", "CONT"]
_ENDING = {"TERM", "KILL", "INT", "QUIT"}


class KillParams(Params):
    pid: int = Field(ge=1, le=2**22)
    signal: Signal = "TERM"


def _gone(proc: psutil.Process) -> bool:
    try:
        return bool(proc.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _signal(pid: int, name: str) -> tuple[psutil.Process, str, str | None]:
    """Look the process up and signal it: (process, its name, its user)."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            pname = proc.name()
            try:
                user: str | None = proc.username()
            except (KeyError, psutil.Error):
                user = None
    except psutil.NoSuchProcess:
        raise Problem(f"there is no process with pid {pid}") from None
    except psutil.AccessDenied:
        raise Problem(f"the agent may not inspect pid {pid}") from None
    try:
        proc.send_signal(signal.Signals[f"SIG{name}"])  # checks the pid was not reused
    except psutil.NoSuchProcess:
        raise Problem(f"process {pid} ({pname}) exited before the signal was sent") from None
    except psutil.AccessDenied:
        raise Problem(f"the agent may not signal pid {pid} ({pname}, user {user})") from None
    return proc, pname, user


async def process_kill(ctx: Context, params: KillParams) -> Outcome:
    pid = params.pid
    if pid in (1, 2):
        raise Refused(f"pid {pid} is {'init' if pid == 1 else 'the kernel'}; refusing to signal it")
    if pid == os.getpid():
        raise Refused(f"pid {pid} is the Fieldlink agent itself; refusing to signal it")
    if pid == os.getppid():
        raise Refused(f"pid {pid} is the Fieldlink agent's parent; refusing to signal it")
    proc, name, user = await ctx.thread(_signal, pid, params.signal)
    exited: bool | None = None
    if params.signal in _ENDING:
        exited = False
        for _ in range(100):  # up to 5 s
            if await ctx.thread(_gone, proc):
                exited = True
                break
            await asyncio.sleep(0.05)
    data = {"pid": pid, "name": name, "user": user, "signal": params.signal, "exited": exited}
    outcome = f"sent SIG{params.signal} to {pid} ({name}, user {user})"
    if exited is True:
        outcome += "; it has exited"
    elif exited is False:
        outcome += "; it is still running after 5 s (send KILL to force it)"
    await ctx.line(outcome)
    return Outcome(data=data)


# --- disk.cleanup -------------------------------------------------------------


class CleanupParams(Params):
    dir: AbsPath = Field(description="one of the policy's cleanup_dirs")
    dry_run: bool = Field(default=True, description="only report what would be deleted")
    min_age_hours: float | None = Field(
        default=None, ge=0, description="at least the policy's cleanup_min_age_hours"
    )


_SKIP_TOP = ("systemd-private-", ".X11-unix", ".ICE-unix", ".font-unix", "lost+found")
_SAMPLE = 20


def _cleanup(top: str, cutoff: float, delete: bool, stop: threading.Event) -> dict[str, Any]:
    device = os.lstat(top).st_dev
    files = freed = errors = 0
    incomplete = False
    biggest: list[tuple[int, str, float]] = []
    for dirpath, dirnames, filenames, dirfd in os.fwalk(top, follow_symlinks=False):
        if stop.is_set():
            incomplete = True
            break
        keep = []
        for name in dirnames:
            if dirpath == top and name.startswith(_SKIP_TOP):
                continue
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except OSError:
                errors += 1
                continue
            if stat.S_ISDIR(st.st_mode) and st.st_dev == device:
                keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except OSError:
                errors += 1
                continue
            if not stat.S_ISREG(st.st_mode):
                continue  # symlinks, sockets, fifos, devices: never touched
            if max(st.st_atime, st.st_mtime) >= cutoff:
                continue  # read or written recently
            if delete:
                try:
                    os.unlink(name, dir_fd=dirfd)
                except OSError:
                    errors += 1
                    continue
            files += 1
            freed += st.st_blocks * 512 if st.st_blocks else st.st_size
            biggest.append((st.st_size, os.path.join(dirpath, name), st.st_mtime))
            if len(biggest) > 4 * _SAMPLE:
                biggest = sorted(biggest, reverse=True)[:_SAMPLE]
    rows = [
        [path, size, datetime.fromtimestamp(mtime, UTC).isoformat(timespec="seconds")]
        for size, path, mtime in sorted(biggest, reverse=True)[:_SAMPLE]
    ]
    return {
        "files": files,
        "bytes": freed,
        "errors": errors,
        "incomplete": incomplete,
        "largest": table(["path", "bytes", "modified"], rows),
    }


def _cleanup_dir(path: str, allowed: list[str]) -> str:
    """`path` resolved, if it is one of `allowed` (resolved too) and exists."""
    real = os.path.realpath(path)
    if real not in {os.path.realpath(d) for d in allowed}:
        raise Refused(
            f"{path} is not one of this machine's cleanup_dirs ({', '.join(allowed) or 'none'})"
        )
    if not os.path.isdir(real):
        raise Problem(f"{path} does not exist on this machine")
    return real


async def disk_cleanup(ctx: Context, params: CleanupParams) -> Outcome:
    real = await ctx.thread(_cleanup_dir, params.dir, list(ctx.policy.cleanup_dirs))
    floor = ctx.policy.cleanup_min_age_hours
    hours = params.min_age_hours if params.min_age_hours is not None else floor
    if hours < floor:
        raise Refused(
            f"min_age_hours {hours:g} is below this machine's cleanup_min_age_hours ({floor:g})"
        )
    cutoff = time.time() - hours * 3600
    found = await ctx.thread(_cleanup, real, cutoff, not params.dry_run, ctx.stop)
    data = {"dir": real, "dry_run": params.dry_run, "min_age_hours": hours, **found}
    rows = [[r[0], human_bytes(r[1]), r[2]] for r in found["largest"]["rows"]]
    await ctx.write(render_table(["path", "bytes", "modified"], rows, "(no old files)"))
    size = human_bytes(found["bytes"])
    if params.dry_run:
        await ctx.line(
            f"dry run: would free {size} in {found['files']} file(s) older than {hours:g} h "
            f"in {real}; run again with dry_run=false to delete them"
        )
    else:
        await ctx.line(f"freed {size} in {found['files']} file(s) older than {hours:g} h in {real}")
    if found["errors"]:
        await ctx.line(f"{found['errors']} file(s) could not be read or removed")
    return Outcome(data=data)


# --- net.flush_dns ------------------------------------------------------------

_FLUSHERS = [
    ["resolvectl", "flush-caches"],
    ["systemd-resolve", "--flush-caches"],
    ["nscd", "--invalidate=hosts"],
]


async def net_flush_dns(ctx: Context, _params: NoParams) -> Outcome:
    for argv in _FLUSHERS:
        if which(argv[0]) is None:
            continue
        res = await ctx.exec(argv)
        data = {"tool": argv[0], "flushed": res.exit_code == 0}
        if res.exit_code != 0:
            detail = res.stderr.strip() or describe_exit(res.exit_code)
            return Outcome(
                data=data,
                status="failed",
                reason=f"{' '.join(argv)} failed: {detail}",
                exit_code=res.exit_code,
            )
        await ctx.line(f"flushed the DNS cache with {' '.join(argv)}")
        return Outcome(data=data, exit_code=0)
    raise Problem(
        "no local DNS cache to flush: none of resolvectl, systemd-resolve or nscd is "
        "installed (this machine may not cache DNS at all)"
    )


ENTRIES = [
    Entry(
        "service.restart",
        "Restart a systemd unit and report its new state",
        RestartParams,
        "action",
        timeout=120,
        output_cap=64 * KIB,
        run=service_restart,
    ),
    Entry(
        "process.kill",
        "Send a signal (TERM by default) to a process; never init or the agent",
        KillParams,
        "action",
        timeout=15,
        output_cap=16 * KIB,
        run=process_kill,
    ),
    Entry(
        "disk.cleanup",
        "Delete old files from a configured temp directory (a dry run unless dry_run=false)",
        CleanupParams,
        "action",
        timeout=300,
        output_cap=64 * KIB,
        run=disk_cleanup,
    ),
    Entry(
        "net.flush_dns",
        "Flush the local DNS cache (systemd-resolved or nscd)",
        NoParams,
        "action",
        timeout=30,
        output_cap=16 * KIB,
        run=net_flush_dns,
    ),
]
