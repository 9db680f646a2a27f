"""Agent footprint: one real agent reporting to a real HQ; its RSS and CPU.

Starts HQ as its own process (`fieldlink init` + `fieldlink serve` on
OS-chosen loopback ports, SQLite in a temporary data dir), enrolls an agent
with `fieldlink admin enroll-token` + `fieldlink-agent enroll`, runs
`fieldlink-agent run --interval I` as a separate process for `--seconds`,
and measures that process with psutil:

- steady-state RSS: sampled every second after `--warmup` seconds (median
  and max of the window; the goal is checked against the max), plus USS and
  the kernel's high-water mark (VmHWM) for the whole run;
- CPU percent of one core over the window after warm-up:
  (user + system CPU seconds) / wall seconds.

Goal (issue 2): RSS <= 50 MB and CPU <= 0.5 % at a 15 s interval.

When RSS is over the goal (or with `--explain`), it also reports what the
agent imports: marginal RSS per top-level package in import order, and
`python -X importtime` totals, so the costly imports can be named.

    .venv/bin/python bench/agent_footprint.py [--seconds 75] [--interval 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchlib import (
    FIELDLINK,
    FIELDLINK_AGENT,
    MB,
    HQProcess,
    Watch,
    fmt,
    print_table,
    raise_nofile,
    run_cli,
    write_json,
)

GOAL_RSS_MB = 50.0
GOAL_CPU_PERCENT = 0.5

# What the agent process imports on `fieldlink-agent run`, in that order.
AGENT_IMPORTS = ("agent.cli", "agent.daemon")

# Run in a fresh interpreter: wrap every module loader so that the growth of
# RSS while a module is created and executed, minus what its own imports
# added, is charged to that module's top-level package (the memory analogue
# of `-X importtime`'s "self" column). Then import what the agent imports.
_PROBE = r"""
import json, os, sys
from importlib.abc import MetaPathFinder

PAGE = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE

cost, stack = {}, []
def measured(name, fn):
    before = rss()
    stack.append(0)
    try:
        return fn()
    finally:
        children = stack.pop()
        total = rss() - before
        top = name.split(".")[0]
        cost[top] = cost.get(top, 0) + total - children
        if stack:
            stack[-1] += total

class Loader:
    def __init__(self, inner):
        self.inner = inner
    def create_module(self, spec):
        return measured(spec.name, lambda: self.inner.create_module(spec))
    def exec_module(self, module):
        measured(module.__name__, lambda: self.inner.exec_module(module))
    def __getattr__(self, name):
        return getattr(self.inner, name)

class Finder(MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = Loader(spec.loader)
                return spec
        return None

start = rss()
sys.meta_path.insert(0, Finder())
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps({"start": start, "end": rss(), "cost": cost}))
"""


def _agent_cmd(args: argparse.Namespace, *rest: str) -> list[str]:
    if args.agent_python:
        return [args.agent_python, "-m", "agent.cli", *rest]
    return [FIELDLINK_AGENT, *rest]


def _vm_hwm(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def explain_imports(python: str) -> dict[str, Any]:
    """What the agent's imports cost: RSS by top-level package and import time."""
    code = "; ".join(f"import {m}" for m in AGENT_IMPORTS)
    done = subprocess.run(
        [python, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),
    )
    self_us: dict[str, int] = {}
    modules: dict[str, int] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        head, _cumulative, name = line.split("|", 2)
        self_time = head.split(":", 1)[1].strip()
        name = name.strip()
        top = name.split(".")[0]
        self_us[top] = self_us.get(top, 0) + int(self_time)
        modules[top] = modules.get(top, 0) + 1
    probe = subprocess.run(
        [python, "-c", _PROBE, *AGENT_IMPORTS],
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),
    )
    measured = json.loads(probe.stdout)
    stdlib = set(sys.stdlib_module_names)
    packages = [
        {
            "package": top,
            "rss_mb": measured["cost"].get(top, 0) / MB,
            "import_ms": self_us[top] / 1000,
            "modules": modules[top],
            "stdlib": top in stdlib,
        }
        for top in self_us
    ]
    packages.sort(key=lambda row: row["rss_mb"], reverse=True)
    return {
        "python_start_mb": measured["start"] / MB,
        "after_imports_mb": measured["end"] / MB,
        "import_ms": sum(self_us.values()) / 1000,
        "modules": sum(modules.values()),
        "packages": packages,
    }


def print_explanation(info: dict[str, Any], top: int = 15) -> None:
    print("\nWhat the agent imports (fresh interpreter, `import agent.cli, agent.daemon`)")
    print(
        f"  interpreter at start {info['python_start_mb']:.1f} MB; after the agent's imports "
        f"{info['after_imports_mb']:.1f} MB; {info['modules']} modules, "
        f"{info['import_ms']:.0f} ms import time"
    )
    print(f"  {'package':<22} {'RSS MB':>7} {'import ms':>10} {'modules':>8}")
    for row in info["packages"][:top]:
        kind = " (stdlib)" if row["stdlib"] else ""
        print(
            f"  {row['package'] + kind:<22} {row['rss_mb']:>7.1f} "
            f"{row['import_ms']:>10.1f} {row['modules']:>8}"
        )
    print("  (RSS: growth while the package's own modules loaded, not counting what they imported)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    with tempfile.TemporaryDirectory(prefix="fl-bench-agent-") as tmp:
        root = Path(tmp)
        hq = HQProcess(root / "hq")
        agent_proc: subprocess.Popen[bytes] | None = None
        try:
            hq.init()
            hq.start()
            token = run_cli(
                [
                    FIELDLINK,
                    "admin",
                    "--data-dir",
                    str(hq.data_dir),
                    "enroll-token",
                    "--site",
                    "bench",
                ]
            ).strip()
            agent_dir = root / "agent"
            # The agent runs outside the repository, so `-m agent.cli` with --agent-python
            # imports the agent from that interpreter's environment, not from the checkout.
            run_cli(_agent_cmd(args, "enroll", token, "--config-dir", str(agent_dir)), cwd=root)
            log_path = root / "agent.log"
            with open(log_path, "wb") as log:
                agent_proc = subprocess.Popen(
                    _agent_cmd(
                        args,
                        "run",
                        "--config-dir",
                        str(agent_dir),
                        "--interval",
                        str(args.interval),
                        "--log-format",
                        "json",
                    ),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=root,
                )
            print(
                f"agent pid {agent_proc.pid} running for {args.seconds:.0f} s "
                f"(interval {args.interval:g} s, warm-up {args.warmup:.0f} s) ...",
                flush=True,
            )
            started = time.monotonic()
            watch = Watch(agent_proc.pid, uss=True)
            while time.monotonic() - started < args.warmup:
                time.sleep(0.5)
            watch.start()
            while time.monotonic() - started < args.seconds:
                time.sleep(1.0)
                if agent_proc.poll() is not None:
                    raise RuntimeError(f"the agent exited early; see {log_path}")
                watch.sample()
            watch.stop()
            total_cpu = sum(watch.proc.cpu_times()[:2])
            total_wall = time.monotonic() - started
            hwm = _vm_hwm(agent_proc.pid)
            threads = watch.proc.num_threads()
            status = json.loads(
                run_cli(
                    _agent_cmd(args, "status", "--config-dir", str(agent_dir), "--json"), cwd=root
                )
            )
            ingested = hq.metrics().value("fieldlink_health_reports_ingested_total")
        finally:
            if agent_proc is not None and agent_proc.poll() is None:
                agent_proc.terminate()
                try:
                    agent_proc.wait(15)
                except subprocess.TimeoutExpired:
                    agent_proc.kill()
            hq.stop()

    result: dict[str, Any] = {
        "seconds": round(total_wall, 1),
        "interval": args.interval,
        "window_seconds": round(watch.wall_seconds, 1),
        "rss_median_mb": statistics.median(watch.rss) / MB,
        "rss_max_mb": max(watch.rss) / MB,
        "uss_median_mb": statistics.median(watch.uss_values) / MB,
        "rss_peak_mb": hwm / MB if hwm else None,
        "cpu_percent": watch.cpu_percent,
        "cpu_percent_whole_run": 100.0 * total_cpu / total_wall,
        "threads": threads,
        "reports_sent": status.get("last_seq"),
        "reports_ingested": ingested,
        "spool_pending": status.get("spool_pending"),
        "link": status.get("link"),
        "goal_rss_mb": GOAL_RSS_MB,
        "goal_cpu_percent": GOAL_CPU_PERCENT,
    }
    result["rss_ok"] = result["rss_max_mb"] <= GOAL_RSS_MB
    result["cpu_ok"] = result["cpu_percent"] <= GOAL_CPU_PERCENT
    return result


def report(result: dict[str, Any]) -> None:
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print_table(
        f"Agent footprint (fieldlink-agent run --interval {result['interval']:g}, "
        f"{result['seconds']:.0f} s, window {result['window_seconds']:.0f} s after warm-up)",
        [
            ("RSS steady (median)", fmt(result["rss_median_mb"], " MB")),
            ("RSS steady (max)", fmt(result["rss_max_mb"], " MB")),
            ("RSS peak (VmHWM)", fmt(result["rss_peak_mb"], " MB")),
            ("USS steady (median)", fmt(result["uss_median_mb"], " MB")),
            ("CPU, window", fmt(result["cpu_percent"], " % of one core", 3)),
            ("CPU, whole run", fmt(result["cpu_percent_whole_run"], " % of one core", 3)),
            ("threads", str(result["threads"])),
            (
                "reports sent / stored",
                f"{result['reports_sent']} / {result['reports_ingested']:.0f}",
            ),
            ("spool pending, link", f"{result['spool_pending']}, {result['link']}"),
            (
                f"goal RSS <= {GOAL_RSS_MB:g} MB",
                verdict(result["rss_ok"]),
            ),
            (
                f"goal CPU <= {GOAL_CPU_PERCENT:g} %",
                verdict(result["cpu_ok"])
                + ("" if result["interval"] == 15 else " (goal is at 15 s)"),
            ),
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="agent_footprint.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Goal: RSS <= 50 MB and CPU <= 0.5 %% of one core at a 15 s interval.",
    )
    parser.add_argument(
        "--seconds", type=float, default=75.0, help="how long the agent runs (default 75, min 60)"
    )
    parser.add_argument(
        "--interval", type=float, default=15.0, help="agent report interval in s (default 15)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=15.0,
        help="seconds after start before the measuring window opens (default 15)",
    )
    parser.add_argument(
        "--explain",
        choices=["auto", "always", "never"],
        default="auto",
        help="report what the agent imports: when RSS misses the goal (auto), always or never",
    )
    parser.add_argument(
        "--agent-python",
        metavar="PYTHON",
        help="run the agent with this interpreter (`PYTHON -m agent.cli`), e.g. from a venv "
        "holding only the agent's dependencies; default this venv's fieldlink-agent",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = parser.parse_args(argv)
    if args.warmup >= args.seconds:
        parser.error("--warmup must be shorter than --seconds")
    if args.seconds < 60:
        print("note: the issue asks for at least 60 s; this is a short run", file=sys.stderr)

    result = run(args)
    report(result)
    if args.explain == "always" or (args.explain == "auto" and not result["rss_ok"]):
        info = explain_imports(args.agent_python or sys.executable)
        print_explanation(info)
        result["imports"] = info
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
