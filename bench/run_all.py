"""Run Fieldlink's benchmarks in sequence and print a summary (`make bench`).

    .venv/bin/python bench/run_all.py            # a few minutes
    .venv/bin/python bench/run_all.py --quick    # a short smoke run (~1 minute)

1. agent_footprint.py: one real agent at a 15 s interval for 75 s.
2. hq_scale.py: 2,000 simulated agents at a 15 s interval, 90 s steady-state
   window (SQLite unless --db names a PostgreSQL server).

Each benchmark runs as its own process and prints its own figures; this
script then prints them side by side with the goals from issue 2. Missing a
goal is reported, not failed: the exit status is non-zero only when a
benchmark could not run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _run(script: str, args: list[str], json_path: Path) -> dict[str, Any] | None:
    argv = [sys.executable, str(HERE / script), *args, "--json", str(json_path)]
    print(f"\n=== {script} {' '.join(args)}", flush=True)
    started = time.monotonic()
    done = subprocess.run(argv, check=False)
    print(f"=== {script}: {time.monotonic() - started:.0f} s, exit {done.returncode}", flush=True)
    if done.returncode != 0 or not json_path.exists():
        return None
    data: dict[str, Any] = json.loads(json_path.read_text())
    return data


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:,.0f} ms"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="run_all.py",
        description="Run the agent footprint and HQ scale benchmarks and print a summary.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short smoke run: 20 s agent, 200 agents at 5 s for 15 s (figures not comparable "
        "with the goals)",
    )
    parser.add_argument(
        "--only", choices=["agent", "scale"], help="run just one of the two benchmarks"
    )
    parser.add_argument(
        "--db",
        default="sqlite",
        help="HQ database for the scale benchmark: sqlite (default) or a postgresql+asyncpg URL",
    )
    parser.add_argument(
        "--agents", type=int, default=None, help="agents for the scale benchmark (default 2000)"
    )
    args = parser.parse_args(argv)

    if args.quick:
        agent_args = ["--seconds", "20", "--warmup", "8", "--explain", "never"]
        scale_args = [str(args.agents or 200), "--interval", "5", "--processes", "2"]
        scale_args += ["--duration", "15", "--warmup", "5"]
    else:
        agent_args = ["--seconds", "75", "--interval", "15"]
        scale_args = [str(args.agents or 2000), "--interval", "15", "--processes", "4"]
        scale_args += ["--duration", "90"]
    scale_args += ["--db", args.db]

    failed = False
    agent: dict[str, Any] | None = None
    scale: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="fl-bench-") as tmp:
        if args.only in (None, "agent"):
            agent = _run("agent_footprint.py", agent_args, Path(tmp) / "agent.json")
            failed |= agent is None
        if args.only in (None, "scale"):
            scale = _run("hq_scale.py", scale_args, Path(tmp) / "scale.json")
            failed |= scale is None

    rows: list[tuple[str, str, str, str]] = []
    if agent is not None:
        rows += [
            (
                "agent RSS (steady, max)",
                f"{agent['rss_max_mb']:.1f} MB",
                "<= 50 MB",
                _verdict(agent["rss_ok"]),
            ),
            (
                f"agent CPU at {agent['interval']:g} s",
                f"{agent['cpu_percent']:.3f} %",
                "<= 0.5 % at 15 s",
                _verdict(agent["cpu_ok"]),
            ),
        ]
    if scale is not None:
        n, interval = scale["agents"], scale["interval"]
        rows += [
            ("HQ: time to connect all", f"{scale['connect_seconds'] or 0:.1f} s", "", ""),
            (
                f"HQ CPU, {n} agents at {interval:g} s",
                f"{scale['hq_cpu_percent']:.1f} %",
                "<= 25 % (2000 at 15 s)",
                _verdict(scale["cpu_ok"]),
            ),
            (
                "HQ memory per agent",
                f"{scale['kb_per_agent']:.0f} kB",
                "<= 150 kB",
                _verdict(scale["memory_ok"]),
            ),
            (
                "ingest lag p50 / p99 (HQ)",
                f"{_ms(scale['lag_hq_p50'])} / {_ms(scale['lag_hq_p99'])}",
                "",
                "",
            ),
            (
                "ack lag p50 / p99 (agents)",
                f"{_ms(scale['lag_ack_p50'])} / {_ms(scale['lag_ack_p99'])}",
                "",
                "",
            ),
        ]
    if rows:
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        title = "Summary" + (" (--quick: not comparable with the goals)" if args.quick else "")
        print(f"\n{title}\n{'-' * len(title)}")
        for row in rows:
            print("  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    if failed:
        print("\nat least one benchmark did not run to the end; see its output above")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
