"""Run Fieldlink's benchmarks in sequence and print a summary (`make bench`).

    .venv/bin/python bench/run_all.py            # about 7 minutes
    .venv/bin/python bench/run_all.py --quick    # a short smoke run (~2 minutes)

1. agent_footprint.py: one real agent at a 15 s interval for 75 s.
2. hq_scale.py: 2,000 simulated agents at a 15 s interval, 90 s steady-state
   window (SQLite unless --db names a PostgreSQL server).
3. run_roundtrip.py: 300 sequential runs of one diagnostic through HQ's API
   to a real agent.
4. job_fanout.py: two jobs, each over 1,000 simulated agents.
5. shell_echo.py: 500 keystrokes echoed through HQ, then ~200 MB of shell
   output.

Each benchmark runs as its own process and prints its own figures; this
script then prints them side by side with the goals from issues 2, 4 and 6.
Missing a goal is reported, not failed: the exit status is non-zero only
when a benchmark could not run.
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
BENCHMARKS = ("agent", "scale", "roundtrip", "fanout", "shell")


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


def _s(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="run_all.py",
        description="Run the benchmarks (agent footprint, HQ scale, run round trip, job "
        "fan-out, shell echo and throughput) and print a summary.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short smoke run: 20 s agent, 200 agents at 5 s for 15 s, 50 runs, a job over 200 "
        "agents, 100 keystrokes and 20 MB (figures not comparable with the goals)",
    )
    parser.add_argument(
        "--only", choices=list(BENCHMARKS), action="append", help="run just these (repeatable)"
    )
    parser.add_argument(
        "--db",
        default="sqlite",
        help="HQ database for the scale and fan-out benchmarks: sqlite (default) or a "
        "postgresql+asyncpg URL",
    )
    parser.add_argument(
        "--agents", type=int, default=None, help="agents for the scale benchmark (default 2000)"
    )
    args = parser.parse_args(argv)

    if args.quick:
        agent_args = ["--seconds", "20", "--warmup", "8", "--explain", "never"]
        scale_args = [str(args.agents or 200), "--interval", "5", "--processes", "2"]
        scale_args += ["--duration", "15", "--warmup", "5"]
        roundtrip_args = ["--runs", "50", "--warmup", "10"]
        fanout_args = ["200", "--jobs", "1"]
        shell_args = ["--keys", "100", "--mb", "20"]
    else:
        agent_args = ["--seconds", "75", "--interval", "15"]
        scale_args = [str(args.agents or 2000), "--interval", "15", "--processes", "4"]
        scale_args += ["--duration", "90"]
        roundtrip_args = ["--runs", "300"]
        fanout_args = ["1000", "--jobs", "2"]
        shell_args = ["--keys", "500", "--mb", "200"]
    scale_args += ["--db", args.db]
    fanout_args += ["--db", args.db]
    plan = {
        "agent": ("agent_footprint.py", agent_args),
        "scale": ("hq_scale.py", scale_args),
        "roundtrip": ("run_roundtrip.py", roundtrip_args),
        "fanout": ("job_fanout.py", fanout_args),
        "shell": ("shell_echo.py", shell_args),
    }

    failed = False
    got: dict[str, dict[str, Any] | None] = dict.fromkeys(BENCHMARKS)
    with tempfile.TemporaryDirectory(prefix="fl-bench-") as tmp:
        for key in BENCHMARKS:
            if args.only and key not in args.only:
                continue
            script, script_args = plan[key]
            got[key] = _run(script, script_args, Path(tmp) / f"{key}.json")
            failed |= got[key] is None
    agent, scale = got["agent"], got["scale"]
    roundtrip, fanout, shell = got["roundtrip"], got["fanout"], got["shell"]

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
    if roundtrip is not None:
        rt = roundtrip["roundtrip_ms"]
        rows += [
            (
                f"run round trip p50 / p99 ({roundtrip['entry']})",
                f"{rt['p50']:.1f} / {rt['p99']:.1f} ms",
                "p50 <= 20 ms",
                _verdict(roundtrip["p50_ok"]),
            ),
        ]
    if fanout is not None:
        last = fanout["jobs"][-1]
        rows += [
            (
                f"job over {fanout['agents']} agents: POST -> done",
                f"{fanout['complete_seconds_median']:.1f} s (median of {len(fanout['jobs'])})",
                "<= 3 s (1000 agents)",
                _verdict(fanout["complete_ok"]),
            ),
            (
                "job: agent answered since POST p50 / p99",
                f"{_ms(_s(last['answered_by_agent_ms']['p50']))} / "
                f"{_ms(_s(last['answered_by_agent_ms']['p99']))}",
                "",
                "",
            ),
            (
                "job: item running -> final at HQ p50 / p99",
                f"{_ms(_s(last['item_at_hq_ms']['p50']))} / "
                f"{_ms(_s(last['item_at_hq_ms']['p99']))}",
                "",
                "",
            ),
        ]
    if shell is not None:
        echo = shell["echo_ms"]
        rows += [
            (
                "shell echo p50 / p99",
                f"{echo['p50']:.1f} / {echo['p99']:.1f} ms",
                "p50 <= 10 ms",
                _verdict(shell["echo_ok"]),
            ),
            (
                "shell output",
                f"{shell['output_mb_per_s']:.1f} MB/s",
                ">= 20 MB/s",
                _verdict(shell["output_ok"]),
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
