"""Health sampling with psutil: the machine's facts once, a report every interval.

`Sampler.sample()` is blocking (psutil reads /proc) and keeps the previous
counters to turn them into rates; the daemon calls it in a worker thread.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from datetime import UTC, datetime
from typing import Any

import psutil

from shared import protocol as p
from shared.version import __version__

_SKIP_FS = {"squashfs", "iso9660", "udf"}
_TOP_N = 5


def _os_pretty_name() -> str:
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect_facts() -> p.Facts:
    ips: list[str] = []
    for name, addrs in psutil.net_if_addrs().items():
        if name == "lo":
            continue
        for addr in addrs:
            if addr.family in (socket.AF_INET, socket.AF_INET6):
                ips.append(addr.address.split("%", 1)[0])
    return p.Facts(
        hostname=socket.gethostname(),
        os=_os_pretty_name(),
        os_family=platform.system().lower(),
        kernel=platform.release(),
        arch=platform.machine(),
        cpu_model=_cpu_model(),
        cpu_cores=psutil.cpu_count(logical=True) or 1,
        cpu_physical_cores=psutil.cpu_count(logical=False),
        memory_total=psutil.virtual_memory().total,
        ips=ips,
        boot_time=datetime.fromtimestamp(psutil.boot_time(), UTC),
        agent_version=__version__,
        python_version=platform.python_version(),
    )


def _rate(now: float, before: float, seconds: float) -> float:
    return round(max(now - before, 0.0) / seconds, 1) if seconds > 0 else 0.0


class Sampler:
    """Keeps counters between samples so I/O figures come out as rates."""

    def __init__(self) -> None:
        psutil.cpu_percent(percpu=True)  # prime: the next call measures since now
        self._t = time.monotonic()
        self._disk = psutil.disk_io_counters()
        self._net = psutil.net_io_counters(pernic=True)
        self._procs: dict[int, psutil.Process] = {}
        self._top(prime=True)

    def _disks(self) -> list[p.Disk]:
        disks: list[p.Disk] = []
        seen: set[str] = set()
        for part in psutil.disk_partitions(all=False):
            if part.fstype in _SKIP_FS or part.mountpoint in seen:
                continue
            if part.device.startswith("/dev/loop"):
                continue
            seen.add(part.mountpoint)
            try:
                usage = psutil.disk_usage(part.mountpoint)
                st = os.statvfs(part.mountpoint)
            except OSError:
                continue
            inodes_total = st.f_files or None
            inodes_used = (st.f_files - st.f_ffree) if st.f_files else None
            disks.append(
                p.Disk(
                    mount=part.mountpoint,
                    device=part.device,
                    fstype=part.fstype,
                    total=usage.total,
                    used=usage.used,
                    free=usage.free,
                    percent=usage.percent,
                    inodes_total=inodes_total,
                    inodes_used=inodes_used,
                    inodes_percent=round(100.0 * inodes_used / inodes_total, 1)
                    if inodes_total and inodes_used is not None
                    else None,
                )
            )
        return disks

    def _top(self, prime: bool = False) -> tuple[list[p.Process], list[p.Process], int]:
        """Top processes by CPU and memory. psutil measures a process's CPU
        between two calls on the same Process object, so we keep them."""
        current: dict[int, psutil.Process] = {}
        rows: list[dict[str, Any]] = []
        for pid in psutil.pids():
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = psutil.Process(pid)
                cpu = proc.cpu_percent(None)
                current[pid] = proc
                if prime:
                    continue
                with proc.oneshot():
                    mem = proc.memory_info().rss
                    rows.append(
                        {"pid": pid, "proc": proc, "cpu": cpu, "rss": mem},
                    )
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        self._procs = current
        if prime:
            return [], [], len(current)
        total_mem = psutil.virtual_memory().total or 1

        def describe(row: dict[str, Any]) -> p.Process:
            proc: psutil.Process = row["proc"]
            try:
                name = proc.name()
                user = proc.username()
            except (psutil.Error, KeyError):
                name, user = "?", None
            return p.Process(
                pid=row["pid"],
                name=name,
                user=user,
                cpu_percent=round(row["cpu"], 1),
                memory_percent=round(100.0 * row["rss"] / total_mem, 2),
                rss=row["rss"],
            )

        by_cpu = sorted(rows, key=lambda r: r["cpu"], reverse=True)[:_TOP_N]
        by_mem = sorted(rows, key=lambda r: r["rss"], reverse=True)[:_TOP_N]
        return [describe(r) for r in by_cpu], [describe(r) for r in by_mem], len(current)

    def sample(self) -> p.HealthReport:
        now = time.monotonic()
        dt = now - self._t
        per_core = psutil.cpu_percent(percpu=True)
        load = os.getloadavg()
        vm = psutil.virtual_memory()
        sw = psutil.swap_memory()

        disk = psutil.disk_io_counters()
        if disk is not None and self._disk is not None:
            disk_io = p.DiskIO(
                read_bytes_per_s=_rate(disk.read_bytes, self._disk.read_bytes, dt),
                write_bytes_per_s=_rate(disk.write_bytes, self._disk.write_bytes, dt),
                read_ops_per_s=_rate(disk.read_count, self._disk.read_count, dt),
                write_ops_per_s=_rate(disk.write_count, self._disk.write_count, dt),
            )
        else:
            disk_io = p.DiskIO(
                read_bytes_per_s=0, write_bytes_per_s=0, read_ops_per_s=0, write_ops_per_s=0
            )
        self._disk = disk

        net = psutil.net_io_counters(pernic=True)
        stats = psutil.net_if_stats()
        interfaces: list[p.Interface] = []
        totals = dict.fromkeys(("rx", "tx", "rxp", "txp", "ein", "eout", "din", "dout"), 0.0)
        for name, counters in net.items():
            before = self._net.get(name, counters)
            st = stats.get(name)
            interfaces.append(
                p.Interface(
                    name=name,
                    up=bool(st and st.isup),
                    speed_mbps=st.speed if st else 0,
                    mtu=st.mtu if st else 0,
                    rx_bytes_per_s=_rate(counters.bytes_recv, before.bytes_recv, dt),
                    tx_bytes_per_s=_rate(counters.bytes_sent, before.bytes_sent, dt),
                )
            )
            if name == "lo":
                continue
            totals["rx"] += max(counters.bytes_recv - before.bytes_recv, 0)
            totals["tx"] += max(counters.bytes_sent - before.bytes_sent, 0)
            totals["rxp"] += max(counters.packets_recv - before.packets_recv, 0)
            totals["txp"] += max(counters.packets_sent - before.packets_sent, 0)
            totals["ein"] += counters.errin
            totals["eout"] += counters.errout
            totals["din"] += counters.dropin
            totals["dout"] += counters.dropout
        self._net = net
        net_io = p.NetIO(
            rx_bytes_per_s=_rate(totals["rx"], 0, dt),
            tx_bytes_per_s=_rate(totals["tx"], 0, dt),
            rx_packets_per_s=_rate(totals["rxp"], 0, dt),
            tx_packets_per_s=_rate(totals["txp"], 0, dt),
            errors_in=int(totals["ein"]),
            errors_out=int(totals["eout"]),
            drops_in=int(totals["din"]),
            drops_out=int(totals["dout"]),
        )

        temps: list[p.Temperature] = []
        read_temps = getattr(psutil, "sensors_temperatures", None)
        if read_temps is not None:
            try:
                for sensor, entries in read_temps().items():
                    for i, entry in enumerate(entries):
                        temps.append(
                            p.Temperature(
                                sensor=sensor,
                                label=entry.label or f"{sensor}{i}",
                                current=entry.current,
                                high=entry.high,
                                critical=entry.critical,
                            )
                        )
            except (OSError, RuntimeError):
                pass

        top_cpu, top_mem, nprocs = self._top()
        self._t = now
        return p.HealthReport(
            cpu=p.Cpu(
                percent=round(sum(per_core) / len(per_core), 1) if per_core else 0.0,
                per_core=per_core,
                count=len(per_core),
            ),
            load=p.Load(m1=load[0], m5=load[1], m15=load[2]),
            memory=p.Memory(
                total=vm.total, available=vm.available, used=vm.used, percent=vm.percent
            ),
            swap=p.Swap(total=sw.total, used=sw.used, percent=sw.percent),
            disks=self._disks(),
            disk_io=disk_io,
            net_io=net_io,
            interfaces=interfaces,
            uptime_seconds=round(time.time() - psutil.boot_time(), 1),
            process_count=nprocs,
            top_cpu=top_cpu,
            top_memory=top_mem,
            temperatures=temps,
        )
