"""Diagnostics about the machine as a whole: summary, top processes, sensors,
time synchronisation and pending OS updates.

psutil work runs in a worker thread; tools (timedatectl, chronyc, ntpq, apt,
dnf) run as fixed argv lists where installed, and each entry says plainly
what it could not find.
"""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime
from typing import Any, Literal

import psutil
from pydantic import Field

from agent.catalog.base import (
    KIB,
    MIB,
    Context,
    Entry,
    NoParams,
    Outcome,
    Params,
    Problem,
    human_bytes,
    render_pairs,
    render_table,
    systemd_running,
    table,
    which,
)
from agent.sampler import collect_facts

# --- system.summary -----------------------------------------------------------


def _summary() -> dict[str, Any]:
    facts = collect_facts()
    vm = psutil.virtual_memory()
    sw = psutil.swap_memory()
    load = os.getloadavg()
    try:
        root = psutil.disk_usage("/")
        root_percent: float | None = root.percent
    except OSError:
        root_percent = None
    users = sorted({u.name for u in psutil.users()})
    return {
        "hostname": facts.hostname,
        "os": facts.os,
        "kernel": facts.kernel,
        "arch": facts.arch,
        "cpu_model": facts.cpu_model,
        "cpu_cores": facts.cpu_cores,
        "boot_time": facts.boot_time.isoformat(),
        "uptime_seconds": round(time.time() - psutil.boot_time()),
        "load_1m": round(load[0], 2),
        "load_5m": round(load[1], 2),
        "load_15m": round(load[2], 2),
        "memory_total": vm.total,
        "memory_available": vm.available,
        "memory_percent": vm.percent,
        "swap_total": sw.total,
        "swap_percent": sw.percent,
        "root_disk_percent": root_percent,
        "process_count": len(psutil.pids()),
        "users": users,
        "ips": facts.ips,
    }


def _uptime(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h {rest // 60}m"


async def system_summary(ctx: Context, _params: NoParams) -> Outcome:
    data = await ctx.thread(_summary)
    pairs = [
        ("hostname", data["hostname"]),
        ("os", data["os"]),
        ("kernel", f"{data['kernel']} ({data['arch']})"),
        ("cpu", f"{data['cpu_model']} x{data['cpu_cores']}"),
        ("uptime", f"{_uptime(data['uptime_seconds'])} (since {data['boot_time']})"),
        ("load", f"{data['load_1m']} {data['load_5m']} {data['load_15m']}"),
        (
            "memory",
            f"{data['memory_percent']}% used, {human_bytes(data['memory_available'])} free "
            f"of {human_bytes(data['memory_total'])}",
        ),
        ("swap", f"{data['swap_percent']}% of {human_bytes(data['swap_total'])}"),
        ("root disk", f"{data['root_disk_percent']}% used"),
        ("processes", data["process_count"]),
        ("users", ", ".join(data["users"]) or "nobody logged in"),
        ("addresses", ", ".join(data["ips"]) or "-"),
    ]
    await ctx.write(render_pairs(pairs))
    return Outcome(data=data)


# --- process.top --------------------------------------------------------------

_PROC_COLUMNS = ["pid", "user", "name", "cpu_percent", "memory_percent", "rss", "status", "command"]


class TopParams(Params):
    sort: Literal["cpu", "memory"] = "cpu"
    n: int = Field(default=10, ge=1, le=200)


def _prime() -> list[psutil.Process]:
    procs = []
    for proc in psutil.process_iter():
        try:
            proc.cpu_percent(None)
            procs.append(proc)
        except psutil.Error:
            continue
    return procs


def _measure(procs: list[psutil.Process], sort: str, n: int) -> list[list[Any]]:
    total = psutil.virtual_memory().total or 1
    rows: list[list[Any]] = []
    for proc in procs:
        try:
            with proc.oneshot():
                cpu = proc.cpu_percent(None)
                rss = proc.memory_info().rss
                try:
                    user = proc.username()
                except (KeyError, psutil.Error):
                    user = None
                cmd = " ".join(proc.cmdline())[:160]
                rows.append(
                    [
                        proc.pid,
                        user,
                        proc.name(),
                        round(cpu, 1),
                        round(100.0 * rss / total, 2),
                        rss,
                        proc.status(),
                        cmd,
                    ]
                )
        except psutil.Error:
            continue
    key = 3 if sort == "cpu" else 5
    rows.sort(key=lambda r: (r[key], r[5]), reverse=True)
    return rows[:n]


async def process_top(ctx: Context, params: TopParams) -> Outcome:
    import asyncio

    procs = await ctx.thread(_prime)
    await asyncio.sleep(0.5)  # CPU use is measured over this half second
    rows = await ctx.thread(_measure, procs, params.sort, params.n)
    shown = [[*r[:5], human_bytes(r[5]), *r[6:]] for r in rows]
    await ctx.write(render_table(_PROC_COLUMNS, shown))
    return Outcome(data={**table(_PROC_COLUMNS, rows), "sort": params.sort})


# --- hardware.sensors ---------------------------------------------------------


def _sensors() -> dict[str, Any]:
    temps: list[list[Any]] = []
    fans: list[list[Any]] = []
    battery: dict[str, Any] | None = None
    read_temps = getattr(psutil, "sensors_temperatures", None)
    if read_temps is not None:
        for sensor, entries in read_temps().items():
            for i, t in enumerate(entries):
                temps.append([sensor, t.label or f"{sensor}{i}", t.current, t.high, t.critical])
    read_fans = getattr(psutil, "sensors_fans", None)
    if read_fans is not None:
        for sensor, entries in read_fans().items():
            for i, f in enumerate(entries):
                fans.append([sensor, f.label or f"{sensor}{i}", f.current])
    read_battery = getattr(psutil, "sensors_battery", None)
    if read_battery is not None:
        bat = read_battery()
        if bat is not None:
            left = bat.secsleft if isinstance(bat.secsleft, int) and bat.secsleft >= 0 else None
            battery = {
                "percent": round(bat.percent, 1),
                "plugged": bat.power_plugged,
                "seconds_left": left,
            }
    return {
        "temperatures": table(["sensor", "label", "celsius", "high", "critical"], temps),
        "fans": table(["sensor", "label", "rpm"], fans),
        "battery": battery,
    }


async def hardware_sensors(ctx: Context, _params: NoParams) -> Outcome:
    data = await ctx.thread(_sensors)
    temps, fans, bat = data["temperatures"], data["fans"], data["battery"]
    await ctx.line("temperatures:")
    none = "(no temperature sensors visible)"
    await ctx.write(render_table(temps["columns"], temps["rows"], none))
    await ctx.line("fans:")
    await ctx.write(render_table(fans["columns"], fans["rows"], "(no fan sensors visible)"))
    if bat is None:
        await ctx.line("battery: none")
    else:
        plugged = "plugged in" if bat["plugged"] else "on battery"
        await ctx.line(f"battery: {bat['percent']}%, {plugged}")
    return Outcome(data=data)


# --- time.sync ----------------------------------------------------------------

_TIME_ERROR = 5  # adjtimex() result when the kernel clock is not synchronised


def _kernel_clock() -> dict[str, Any]:
    """The kernel's own view (adjtimex, read-only): synchronised? error bounds?"""
    import ctypes

    class Timex(ctypes.Structure):
        _fields_ = [
            ("modes", ctypes.c_uint),
            ("offset", ctypes.c_long),
            ("freq", ctypes.c_long),
            ("maxerror", ctypes.c_long),
            ("esterror", ctypes.c_long),
            ("status", ctypes.c_int),
            ("_rest", ctypes.c_char * 256),  # the remaining fields, unread
        ]

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        tx = Timex()  # modes = 0: read only
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return {"kernel_synchronized": None, "kernel_max_error_seconds": None}
    if state < 0:
        return {"kernel_synchronized": None, "kernel_max_error_seconds": None}
    return {
        "kernel_synchronized": state != _TIME_ERROR,
        "kernel_max_error_seconds": tx.maxerror / 1e6,
    }


def _field(text: str, pattern: str) -> str | None:
    found = re.search(pattern, text, re.MULTILINE)
    return found.group(1).strip() if found else None


async def _timedatectl(ctx: Context) -> dict[str, Any] | None:
    if not systemd_running() or which("timedatectl") is None:
        return None
    res = await ctx.exec(["timedatectl", "show"], stream=False)
    if res.exit_code != 0:
        return None
    return {
        "source": "timedatectl",
        "synchronized": _field(res.stdout, r"^NTPSynchronized=(\w+)") == "yes",
        "ntp_service": _field(res.stdout, r"^NTP=(\w+)") == "yes",
        "timezone": _field(res.stdout, r"^Timezone=(.+)$"),
    }


async def _chrony(ctx: Context) -> dict[str, Any] | None:
    if which("chronyc") is None:
        return None
    res = await ctx.exec(["chronyc", "-n", "tracking"], stream=False)
    if res.exit_code != 0:
        return None
    offset = None
    found = re.search(r"^System time\s*:\s*([\d.]+) seconds (fast|slow)", res.stdout, re.M)
    if found:
        offset = float(found.group(1)) * (1 if found.group(2) == "fast" else -1)
    leap = _field(res.stdout, r"^Leap status\s*:(.+)$")
    return {
        "source": "chrony",
        "synchronized": leap is not None and leap != "Not synchronised",
        "offset_seconds": offset,
        "server": _field(res.stdout, r"^Reference ID\s*:(.+)$"),
    }


async def _ntpq(ctx: Context) -> dict[str, Any] | None:
    if which("ntpq") is None:
        return None
    res = await ctx.exec(["ntpq", "-pn"], stream=False)
    if res.exit_code != 0:
        return None
    for line in res.stdout.splitlines():
        if line.startswith("*"):
            cols = line[1:].split()
            offset = float(cols[8]) / 1000 if len(cols) > 8 else None
            return {
                "source": "ntpd",
                "synchronized": True,
                "offset_seconds": offset,
                "server": cols[0],
            }
    return {"source": "ntpd", "synchronized": False, "offset_seconds": None}


async def time_sync(ctx: Context, _params: NoParams) -> Outcome:
    now = datetime.now(UTC)
    data: dict[str, Any] = {
        "clock_utc": now.isoformat(),
        "timezone": time.strftime("%Z"),
        "synchronized": None,
        "offset_seconds": None,
        "source": None,
    }
    data.update(await ctx.thread(_kernel_clock))
    for probe in (_chrony, _ntpq, _timedatectl):
        found = await probe(ctx)
        if found is not None:
            data.update(found)
            break
    pairs: list[tuple[str, Any]] = [
        ("clock (UTC)", data["clock_utc"]),
        ("timezone", data["timezone"]),
        ("kernel says synchronised", data["kernel_synchronized"]),
    ]
    if data["source"] is None:
        data["note"] = (
            "no time service answered (chronyc and ntpq are not installed, and timedatectl "
            "needs a running systemd): synchronisation state and offset unknown"
        )
        pairs.append(("time service", data["note"]))
    else:
        pairs += [
            ("time service", data["source"]),
            ("synchronised", data["synchronized"]),
            ("offset (s)", data["offset_seconds"] if data["offset_seconds"] is not None else "?"),
        ]
    await ctx.write(render_pairs(pairs))
    return Outcome(data=data)


# --- os.updates ---------------------------------------------------------------

_UPDATE_COLUMNS = ["package", "version", "current", "source", "arch"]
_APT_LINE = re.compile(r"^([^/\s]+)/(\S+)\s+(\S+)\s+(\S+)(?:\s+\[upgradable from: ([^\]]+)\])?")
_MAX_ROWS = 5000


def _apt_lists_time() -> str | None:
    try:
        mtime = os.stat("/var/lib/apt/lists").st_mtime
    except OSError:
        return None
    return datetime.fromtimestamp(mtime, UTC).isoformat(timespec="seconds")


async def _apt(ctx: Context) -> Outcome:
    res = await ctx.exec(["apt", "list", "--upgradable"], stream=False)
    if res.exit_code != 0:
        raise Problem(f"apt list {_tail(res.stderr)}", exit_code=res.exit_code)
    rows: list[list[Any]] = []
    for line in res.stdout.splitlines():
        found = _APT_LINE.match(line)
        if found:
            name, suite, version, arch, current = found.groups()
            rows.append([name, version, current, suite, arch])
    return await _report(ctx, "apt", rows, _apt_lists_time(), res.truncated)


async def _dnf(ctx: Context) -> Outcome:
    res = await ctx.exec(["dnf", "-q", "-C", "check-update"], stream=False)
    if res.exit_code not in (0, 100):
        raise Problem(f"dnf check-update {_tail(res.stderr)}", exit_code=res.exit_code)
    rows: list[list[Any]] = []
    for line in res.stdout.splitlines():
        if line.startswith("Obsoleting"):
            break
        cols = line.split()
        if len(cols) == 3 and "." in cols[0]:
            name, _, arch = cols[0].rpartition(".")
            rows.append([name, cols[1], None, cols[2], arch])
    return await _report(ctx, "dnf", rows, None, res.truncated)


def _tail(text: str) -> str:
    last = [line for line in text.strip().splitlines() if line.strip()][-3:]
    return "failed: " + (" / ".join(last) if last else "no error message")


async def _report(
    ctx: Context, manager: str, rows: list[list[Any]], lists_time: str | None, cut: bool
) -> Outcome:
    count = len(rows)
    rows = rows[:_MAX_ROWS]
    await ctx.write(render_table(_UPDATE_COLUMNS, rows, "(no pending updates)"))
    when = f" (package lists from {lists_time}; not refreshed by this check)" if lists_time else ""
    await ctx.line(f"{count} package(s) can be upgraded, per {manager}{when}")
    data = {
        **table(_UPDATE_COLUMNS, rows),
        "manager": manager,
        "count": count,
        "lists_updated": lists_time,
        "incomplete": cut or count > _MAX_ROWS,
    }
    return Outcome(data=data)


async def os_updates(ctx: Context, _params: NoParams) -> Outcome:
    if which("apt") is not None:
        return await _apt(ctx)
    if which("dnf") is not None:
        return await _dnf(ctx)
    raise Problem("os.updates knows apt and dnf, and neither is installed on this machine")


ENTRIES = [
    Entry(
        "system.summary",
        "Host name, OS, uptime, load, memory, swap, root disk, logged-in users",
        NoParams,
        "diagnostic",
        timeout=15,
        output_cap=64 * KIB,
        run=system_summary,
    ),
    Entry(
        "process.top",
        "Top processes by CPU (measured over half a second) or memory",
        TopParams,
        "diagnostic",
        timeout=20,
        output_cap=256 * KIB,
        run=process_top,
    ),
    Entry(
        "hardware.sensors",
        "Temperatures, fans and battery, where the hardware reports them",
        NoParams,
        "diagnostic",
        timeout=15,
        output_cap=64 * KIB,
        run=hardware_sensors,
    ),
    Entry(
        "time.sync",
        "The clock, and whether and how well it is synchronised (chrony, ntpd, systemd)",
        NoParams,
        "diagnostic",
        timeout=20,
        output_cap=64 * KIB,
        run=time_sync,
    ),
    Entry(
        "os.updates",
        "Packages with pending updates (apt or dnf, from the local package lists)",
        NoParams,
        "diagnostic",
        timeout=120,
        output_cap=MIB,
        run=os_updates,
    ),
]
