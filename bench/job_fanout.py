"""A job over N simulated agents: POST /api/v1/jobs until every item is final.

    .venv/bin/python bench/job_fanout.py [N] [--jobs 3] [--processes 2]
                                         [--interval 15] [--db sqlite|URL]

1. `fieldlink init`, N agent identities inserted with HQ's own models (as
   `hq_scale.py` does), `fieldlink serve` as its own process.
2. N simulated agents from `hq_scale.py` in `--processes` worker processes:
   real reverse SSH, a hello with the real catalog, Health frames every
   `--interval` seconds, and the `fieldlink-run` subsystem served on the
   wire as the agent serves it (one RunRequest in, the entry and parameters
   checked with the agent's own catalog models and default policy, one
   RunOutput line and one RunResult out). The entry is not run: the
   simulated answer costs the agent side almost nothing, so the figure is
   HQ's (and the wire's).
3. Once all N are connected and HQ has settled, `--jobs` times in a row, as
   the `admin` user over kept-alive pinned HTTPS connections:
   - `POST /api/v1/jobs {"target": {"site": "bench-scale"}, "name": "net.tcp_check", ...}`
     (every one of the N agents);
   - then follows `GET /api/v1/jobs/{id}/events` (server-sent events) until
     `done`, and checks `GET /api/v1/jobs/{id}`: status done, N items ok.

Figures, per job: time from sending the POST to the `done` event (the
goal), the POST's own answer time, when each agent got its request and
answered (the agents' clocks, since the POST), each item's time at HQ from
its `running` event to its final one (items that finished before the event
stream was open are not in that one), and HQ's CPU over the job.
Goal (issue 4): a 1,000-agent job complete in <= 3 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncssh
import psutil
from benchlib import (
    BIN,
    HQProcess,
    Watch,
    fmt,
    fmt_ms,
    print_table,
    raise_nofile,
    summary_ms,
    write_json,
)
from hq_scale import (
    WorkerProc,
    _create_identities,
    _poll_connected,
    add_fleet_options,
    realistic_sample,
)

GOAL_SECONDS = 3.0
ENTRY = "net.tcp_check"
SITE = "bench-scale"  # the site hq_scale's identities are inserted on
UNFINISHED = ("queued", "running")


def settle(hq: HQProcess, below: float = 30.0, timeout: float = 60.0) -> float:
    """Wait until HQ's CPU over one second is under `below` % (the connect
    storm's hellos are stored); returns the last reading."""
    proc = psutil.Process(hq.pid)
    deadline = time.monotonic() + timeout
    proc.cpu_percent(None)
    reading = 100.0
    while time.monotonic() < deadline:
        time.sleep(1.0)
        reading = proc.cpu_percent(None)
        if reading < below:
            break
    return reading


def follow(
    hq: HQProcess, token: str, job_id: str, n: int
) -> tuple[float, dict[str, str], dict[str, dict[str, float]]]:
    """Read the job's event stream until `done`. The stream opens with one
    `item` event per item (a snapshot), then the live ones. Returns the wall
    time of `done`, agent_id -> status in the snapshot, and agent_id ->
    {status: wall time its live event arrived}."""
    api = hq.api(token, timeout=120)
    snapshot: dict[str, str] = {}
    live: dict[str, dict[str, float]] = {}
    try:
        resp = api.send("GET", f"/api/v1/jobs/{job_id}/events")
        if resp.status != 200:
            raise RuntimeError(f"events -> {resp.status}: {resp.read()[:200]!r}")
        event = ""
        while True:
            line = resp.readline()
            if not line:
                raise RuntimeError("the event stream ended before `done`")
            now = time.time()
            text = line.decode().rstrip("\n")
            if text.startswith("event: "):
                event = text[7:]
            elif text.startswith("data: "):
                data = json.loads(text[6:])
                if event == "done":
                    return now, snapshot, live
                if event != "item":
                    continue
                if len(snapshot) < n:
                    snapshot[data["agent_id"]] = data["status"]
                else:
                    live.setdefault(data["agent_id"], {}).setdefault(data["status"], now)
    finally:
        api.close()


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of `pid` (the main thread's id is the pid)."""
    return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}


def one_job(
    hq: HQProcess, token: str, workers: list[WorkerProc], n: int, pids: list[int]
) -> dict[str, Any]:
    api = hq.api(token, timeout=120)
    body = {
        "target": {"site": SITE},
        "name": ENTRY,
        "params": {"host": "127.0.0.1", "port": 443},
        "ttl": 600,
    }
    hq_watch = Watch(hq.pid)
    load = [Watch(pid) for pid in pids]
    try:
        api.ok("GET", "/api/v1/me")  # the connection is open before the clock starts
        hq_watch.start()
        for watch in load:
            watch.start()
        threads0 = thread_cpu(hq.pid)
        t_post = time.time()
        job = api.ok("POST", "/api/v1/jobs", body)
        t_answer = time.time()
        done_at, snapshot, seen = follow(hq, token, job["id"], n)
        hq_watch.stop()
        for watch in load:
            watch.stop()
        threads1 = thread_cpu(hq.pid)
        final = api.ok("GET", f"/api/v1/jobs/{job['id']}")
    finally:
        api.close()
    for worker in workers:
        worker.send("runs")
    served: list[list[Any]] = []
    for worker in workers:
        served += worker.wait_event("runs", 60)["runs"]
    received = [r[1] - t_post for r in served]
    answered = [r[2] - t_post for r in served]
    final_at = {
        agent: min(t for s, t in states.items() if s not in UNFINISHED)
        for agent, states in seen.items()
        if any(s not in UNFINISHED for s in states)
    }
    at_hq = [
        final_at[agent] - states["running"]
        for agent, states in seen.items()
        if "running" in states and agent in final_at
    ]
    return {
        "job_id": job["id"],
        "items": len(final["items"]),
        "status": final["status"],
        "counts": final["counts"],
        "complete_seconds": done_at - t_post,
        "post_answer_seconds": t_answer - t_post,
        "finished_before_stream": sum(1 for s in snapshot.values() if s not in UNFINISHED),
        "request_at_agent_ms": summary_ms(received),
        "answered_by_agent_ms": summary_ms(answered),
        "final_since_post_ms": summary_ms([t - t_post for t in final_at.values()]),
        "item_at_hq_ms": summary_ms(at_hq),
        "runs_served": len(served),
        "hq_cpu_seconds": hq_watch.cpu_seconds,
        "hq_main_thread_cpu_seconds": threads1.get(hq.pid, 0.0) - threads0.get(hq.pid, 0.0),
        "hq_cpu_percent": hq_watch.cpu_percent,
        "load_cpu_percent": sum(w.cpu_percent for w in load),
    }


def profiler(path: str, pid: int, index: int) -> subprocess.Popen[bytes]:
    """py-spy sampling HQ while one job runs (FILE-1.svg, FILE-2.svg, ...; a
    name ending in .txt gets collapsed stacks instead of a flame graph)."""
    base = Path(path)
    out = base.with_name(f"{base.stem}-{index + 1}{base.suffix or '.svg'}")
    fmt_ = "raw" if out.suffix == ".txt" else "flamegraph"
    # --gil: only samples holding the GIL, i.e. where HQ spends CPU, not where it waits
    argv = [str(BIN / "py-spy"), "record", "-p", str(pid), "-r", "100", "--gil"]
    spy = subprocess.Popen(
        [*argv, "-f", fmt_, "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # attached before the job starts
    return spy


def run(args: argparse.Namespace) -> dict[str, Any]:
    nofile = raise_nofile()
    n, k = args.n, max(1, min(args.processes, args.n))
    report_json, hello_json = realistic_sample()
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fl-bench-job-")))
        db_url: str | None = None
        pg_name: str | None = None
        if args.db != "sqlite":
            import secrets

            from hq_scale import _pg_database

            if not args.db.startswith("postgresql"):
                raise SystemExit("--db takes `sqlite` or a postgresql+asyncpg:// URL")
            pg_name = f"flbench_{secrets.token_hex(4)}"
            asyncio.run(_pg_database(args.db, True, pg_name))
            db_url = args.db.rsplit("/", 1)[0] + f"/{pg_name}"
        pending = max(500, 2 * k * args.connect_concurrency)
        env = {"FIELDLINK_MAX_PENDING_HANDSHAKES": str(pending)}
        hq = HQProcess(root / "hq", db=db_url, env=env)
        workers: list[WorkerProc] = []
        jobs: list[dict[str, Any]] = []
        try:
            hq.init()
            from server.config.settings import load_settings

            identities = asyncio.run(_create_identities(load_settings(hq.data_dir).db_url(), n))
            hq.start()
            token = hq.admin_token()
            hq_key = asyncssh.import_private_key((hq.data_dir / "keys" / "hq_ssh_key").read_bytes())
            log = stack.enter_context(open(root / "workers.log", "wb"))
            for w in range(k):
                spec = {
                    "host": "127.0.0.1",
                    "port": hq.ssh_port,
                    "interval": args.interval,
                    "total": n,
                    "hq_public_key": hq_key.export_public_key("openssh").decode(),
                    "report": report_json,
                    "hello": hello_json,
                    "connect_concurrency": args.connect_concurrency,
                    "identities": identities[w::k],
                }
                spec_path = root / f"worker-{w}.json"
                spec_path.write_text(json.dumps(spec))
                workers.append(WorkerProc(spec_path, log))
            for worker in workers:
                worker.wait_event("ready", 120)
            t0 = time.time() + 0.5
            for worker in workers:
                worker.send(f"go {t0!r}")
            print(f"HQ pid {hq.pid}; {k} workers connecting {n} agents ...", flush=True)
            pending_workers = set(range(k))
            deadline = time.monotonic() + args.connect_timeout
            last_print = 0.0
            while pending_workers and time.monotonic() < deadline:
                for i in list(pending_workers):
                    with contextlib.suppress(queue.Empty):
                        event = workers[i].events.get(timeout=0.05)
                        if event["event"] == "all_connected":
                            pending_workers.discard(i)
                        elif event["event"] == "exit":
                            raise RuntimeError(f"a worker exited; see {root / 'workers.log'}")
                if time.monotonic() - last_print > 5.0:
                    now = time.time() - t0
                    print(f"  {now:5.1f} s: {_poll_connected(hq)} connected", flush=True)
                    last_print = time.monotonic()
            if pending_workers:
                raise RuntimeError(f"not all {n} agents connected in {args.connect_timeout:.0f} s")
            connect_s = time.time() - t0
            cpu = settle(hq)
            time.sleep(args.warmup)
            connected = _poll_connected(hq)
            print(
                f"{connected} of {n} connected in {connect_s:.1f} s; HQ CPU settled at "
                f"{cpu:.0f} %; {args.jobs} job(s) of {ENTRY} over all of them ...",
                flush=True,
            )
            for i in range(args.jobs):
                spy = profiler(args.profile, hq.pid, i) if args.profile else None
                job = one_job(hq, token, workers, n, [w.proc.pid for w in workers])
                if spy is not None:
                    spy.send_signal(signal.SIGINT)  # py-spy writes its file and exits
                    spy.wait(60)
                jobs.append(job)
                print(
                    f"  job {i + 1}: {job['complete_seconds']:.2f} s to done, "
                    f"{job['counts']}, HQ CPU {job['hq_cpu_seconds']:.2f} s",
                    flush=True,
                )
                time.sleep(args.pause)
            for worker in workers:
                worker.send("stop")
            for worker in workers:
                with contextlib.suppress(TimeoutError, RuntimeError):
                    worker.wait_event("result", 60)
        finally:
            for worker in workers:
                worker.kill()
            hq.stop()
            if pg_name is not None:
                from hq_scale import _pg_database

                asyncio.run(_pg_database(args.db, False, pg_name))

    completes = [j["complete_seconds"] for j in jobs]
    result: dict[str, Any] = {
        "agents": n,
        "connected": connected,
        "processes": k,
        "interval": args.interval,
        "db": "sqlite" if pg_name is None else "postgresql",
        "nofile": nofile[0],
        "connect_seconds": connect_s,
        "jobs": jobs,
        "complete_seconds_median": statistics.median(completes),
        "complete_seconds_best": min(completes),
        "complete_seconds_worst": max(completes),
        "goal_seconds": GOAL_SECONDS,
    }
    result["complete_ok"] = result["complete_seconds_median"] <= GOAL_SECONDS
    return result


def report(r: dict[str, Any]) -> None:
    for i, j in enumerate(r["jobs"], 1):
        ok = j["counts"].get("ok", 0)
        print_table(
            f"Job {i} of {len(r['jobs'])}: {ENTRY} over {r['agents']} simulated agents "
            f"({r['db']}, {r['processes']} worker processes, telemetry every {r['interval']:g} s)",
            [
                ("POST -> done event", fmt(j["complete_seconds"], " s", 2)),
                ("POST answered", fmt(1000 * j["post_answer_seconds"], " ms", 0)),
                ("items, status", f"{j['items']} items, {ok} ok, job {j['status']}"),
                ("request at agent, since POST", fmt_ms(j["request_at_agent_ms"], 0)),
                ("answered by agent, since POST", fmt_ms(j["answered_by_agent_ms"], 0)),
                ("item final (live events), since POST", fmt_ms(j["final_since_post_ms"], 0)),
                ("item running -> final at HQ", fmt_ms(j["item_at_hq_ms"], 0)),
                ("items final before events opened", str(j["finished_before_stream"])),
                (
                    "HQ CPU over the job",
                    f"{j['hq_cpu_seconds']:.2f} s ({j['hq_cpu_percent']:.0f} % of one core), "
                    f"event loop thread {j['hq_main_thread_cpu_seconds']:.2f} s",
                ),
                ("load generator CPU", fmt(j["load_cpu_percent"], " % (all workers)", 0)),
            ],
        )
    print_table(
        f"Job fan-out: {r['agents']} agents, {len(r['jobs'])} job(s)",
        [
            ("connect all", fmt(r["connect_seconds"], " s")),
            (
                "POST -> all final: median (best-worst)",
                f"{r['complete_seconds_median']:.2f} s ({r['complete_seconds_best']:.2f}-"
                f"{r['complete_seconds_worst']:.2f} s)",
            ),
            (f"goal <= {GOAL_SECONDS:g} s (median)", "met" if r["complete_ok"] else "MISSED"),
        ],
    )
    if r["agents"] != 1000:
        print("  (the goal is stated for 1,000 agents)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="job_fanout.py",
        description="A job over N simulated agents (real reverse SSH, real frames, the "
        "fieldlink-run subsystem) against a real HQ process: time from POST /api/v1/jobs to "
        "every item final, and per-item times.",
        epilog="Goal (issue 4): a 1,000-agent job complete in <= 3 s.",
    )
    parser.add_argument("n", nargs="?", type=int, default=1000, help="agents (default 1000)")
    parser.add_argument("--jobs", type=int, default=3, help="jobs run one after another (3)")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between jobs (2)")
    parser.add_argument(
        "--processes", type=int, default=2, help="worker processes for the agents (default 2)"
    )
    parser.add_argument(
        "--interval", type=float, default=15.0, help="the agents' report interval (15)"
    )
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds after HQ settles, before the jobs (3)"
    )
    add_fleet_options(parser)
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="sample HQ with py-spy during each job: FILE-1.svg, ... (flame graphs; "
        "FILE.txt gives collapsed stacks)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = parser.parse_args(argv)
    if args.n < 1 or args.jobs < 1 or args.processes < 1:
        parser.error("N, --jobs and --processes must be positive")
    result = run(args)
    report(result)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
