"""One diagnostic's round trip: API -> HQ -> agent -> HQ -> API, on loopback.

    .venv/bin/python bench/run_roundtrip.py [--runs 300] [--warmup 30]

Starts a real HQ as its own process (`fieldlink init` + `fieldlink serve`,
SQLite in a temporary data dir) and a real agent as its own process
(`fieldlink-agent enroll` + `fieldlink-agent run`). Then, over one kept-alive
HTTPS connection pinned to HQ's certificate, as the `admin` user's bearer
token, it sends `--runs` sequential `POST /api/v1/agents/{id}/run` of

    {"name": "net.tcp_check", "params": {"host": "127.0.0.1", "port": P}}

where P is a port this script listens on (a thread accepts and closes). The
agent's own work is one loopback TCP connect, well under a millisecond, so
the figure is the path itself: HTTPS request, authentication, permission and
parameter checks, one `fieldlink-run` SSH channel to the agent, the agent's
request handling and policy check, its output and result frames, and HQ
storing the result with its audit entry before it answers.

Figures: client-side time per run (p50 / p99 / mean), the agent's own
started_at -> finished_at, and for comparison an authenticated
`GET /api/v1/agents/{id}/catalog` on the same connection (HTTPS + auth + one
database read, no agent). Goal (issue 4): p50 <= 20 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from benchlib import (
    AgentProcess,
    HQProcess,
    Watch,
    fmt,
    fmt_ms,
    print_table,
    raise_nofile,
    summary_ms,
    write_json,
)

GOAL_P50_MS = 20.0
ENTRY = "net.tcp_check"


@contextlib.contextmanager
def tcp_target() -> Iterator[int]:
    """A loopback port that accepts connections (and closes them), for net.tcp_check."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        stop.set()
        thread.join(2)
        sock.close()


def _seconds(result: dict[str, Any]) -> float | None:
    if not result.get("started_at") or not result.get("finished_at"):
        return None
    started = datetime.fromisoformat(result["started_at"])
    finished = datetime.fromisoformat(result["finished_at"])
    return (finished - started).total_seconds()


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    with tempfile.TemporaryDirectory(prefix="fl-bench-rt-") as tmp, tcp_target() as port:
        root = Path(tmp)
        hq = HQProcess(root / "hq")
        agent = AgentProcess(root / "agent")
        api = None
        try:
            hq.init()
            hq.start()
            api = hq.api(hq.admin_token())
            agent.enroll(hq, "bench")
            agent.start(interval=15)
            agent.wait_ready(api)
            path = f"/api/v1/agents/{agent.agent_id}/run"
            body = {"name": ENTRY, "params": {"host": "127.0.0.1", "port": port}}
            print(
                f"HQ pid {hq.pid}, agent pid {agent.pid} ({agent.agent_id}); "
                f"{args.warmup} warm-up runs, then {args.runs} runs of {ENTRY} ...",
                flush=True,
            )
            for _ in range(args.warmup):
                result = api.ok("POST", path, body)
                if result["status"] != "ok":
                    raise RuntimeError(f"warm-up run not ok: {result}")
            connects = api.connects
            hq_watch, agent_watch = Watch(hq.pid), Watch(agent.pid)
            hq_watch.start()
            agent_watch.start()
            times: list[float] = []
            agent_times: list[float] = []
            statuses: dict[str, int] = {}
            started = time.perf_counter()
            for _ in range(args.runs):
                t = time.perf_counter()
                result = api.ok("POST", path, body)
                times.append(time.perf_counter() - t)
                statuses[result["status"]] = statuses.get(result["status"], 0) + 1
                seconds = _seconds(result)
                if seconds is not None:
                    agent_times.append(seconds)
            wall = time.perf_counter() - started
            hq_watch.stop()
            agent_watch.stop()
            reconnects = api.connects - connects
            baseline: list[float] = []
            for _ in range(args.runs):
                t = time.perf_counter()
                api.ok("GET", f"/api/v1/agents/{agent.agent_id}/catalog")
                baseline.append(time.perf_counter() - t)
        finally:
            if api is not None:
                api.close()
            agent.stop()
            hq.stop()

    rt = summary_ms(times)
    result_: dict[str, Any] = {
        "entry": ENTRY,
        "runs": args.runs,
        "warmup": args.warmup,
        "statuses": statuses,
        "reconnects": reconnects,
        "roundtrip_ms": rt,
        "agent_ms": summary_ms(agent_times),
        "baseline_get_ms": summary_ms(baseline),
        "runs_per_second": args.runs / wall,
        "hq_cpu_ms_per_run": 1000 * hq_watch.cpu_seconds / args.runs,
        "agent_cpu_ms_per_run": 1000 * agent_watch.cpu_seconds / args.runs,
        "goal_p50_ms": GOAL_P50_MS,
    }
    result_["p50_ok"] = rt["p50"] is not None and rt["p50"] <= GOAL_P50_MS
    return result_


def report(r: dict[str, Any]) -> None:
    print_table(
        f"Run round trip: {r['runs']} sequential POST /api/v1/agents/{{id}}/run of {r['entry']} "
        f"(real HQ, real agent, loopback, one kept-alive HTTPS connection)",
        [
            ("round trip p50 / p99 / mean", fmt_ms(r["roundtrip_ms"])),
            ("agent started -> finished", fmt_ms(r["agent_ms"]) + "  (agent's own clock)"),
            ("GET .../catalog (no agent)", fmt_ms(r["baseline_get_ms"]) + "  (HTTPS + auth + DB)"),
            ("runs per second", fmt(r["runs_per_second"])),
            ("HQ CPU per run", fmt(r["hq_cpu_ms_per_run"], " ms")),
            ("agent CPU per run", fmt(r["agent_cpu_ms_per_run"], " ms")),
            ("statuses", ", ".join(f"{k} {v}" for k, v in r["statuses"].items())),
            ("reconnects while timing", str(r["reconnects"])),
            (f"goal p50 <= {GOAL_P50_MS:g} ms", "met" if r["p50_ok"] else "MISSED"),
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="run_roundtrip.py",
        description="One diagnostic's round trip API -> HQ -> agent -> HQ -> API with a real "
        "HQ and a real agent, each its own process, on loopback: p50 / p99 / mean.",
        epilog="Goal (issue 4): p50 <= 20 ms on loopback.",
    )
    parser.add_argument("--runs", type=int, default=300, help="timed runs (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed runs first (default 30)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 1:
        parser.error("--runs and --warmup must be positive")
    result = run(args)
    report(result)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
