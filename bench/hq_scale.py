"""HQ scale: N simulated agents on real reverse SSH against a real HQ process.

    .venv/bin/python bench/hq_scale.py [N] [--interval 15] [--processes 4]
                                       [--duration 90] [--db sqlite|URL]

What it does:

1. `fieldlink init` in a temporary data dir (SQLite there, or a fresh
   temporary database on the PostgreSQL server named by `--db`), then N
   agent identities: N ed25519 keys made here and N `agents` rows inserted
   with HQ's own SQLAlchemy models before HQ starts, so HQ loads them as
   enrolled keys. (Enrolling 2,000 over HTTPS works too but measures
   enrollment, not the steady state this benchmark is about; the enrollment
   path has its own end-to-end tests.)
2. `fieldlink serve` as its own process on OS-chosen loopback ports; its idle
   RSS and CPU are the baseline.
3. K worker processes (`--processes`), N/K simulated agents each. Every
   simulated agent does what `fieldlink-agent run` does on the wire:
   `asyncssh.connect_reverse` with its own key and the agent's connection
   options, accepts only HQ's pinned client key, serves the `telemetry`
   subsystem with a hello and then `Health` frames built with
   `shared.protocol` (one real HealthReport sampled on this machine, with
   its own seq and sampled_at) every interval, spread evenly over the
   interval across the fleet, re-sends unacked frames after a reconnect and
   applies HQ's acks. It also serves the `fieldlink-run` subsystem as the
   agent does (one RunRequest in; RunOutput, then one RunResult out; see
   `SimAgent._serve_run`), which `job_fanout.py` uses. Connections are
   ramped: at most `--connect-concurrency` handshakes in flight per worker,
   with backoff and jitter on failure, like real agents.
4. Once all N are connected: `--warmup` seconds, then a `--duration`
   window in which it measures the HQ process with psutil (CPU percent of
   one core = CPU seconds / wall seconds; RSS sampled every second) and
   ingest lag two ways: HQ's own `fieldlink_ingest_lag_seconds` histogram
   (sampled_at -> committed, interpolated inside buckets, as Prometheus
   does) and, exactly, on the agents' side (sampled_at -> ack received).

Figures: time to connect all N; HQ CPU and RSS at steady state; HQ memory
per connected agent = (steady RSS - idle RSS) / N; p50/p99 ingest lag.
Goal (issue 2): N = 2,000 at a 15 s interval within 25 % of one core and
<= 150 kB of HQ memory per agent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import queue
import random
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import asyncssh
from benchlib import (
    MB,
    HQProcess,
    Watch,
    fmt,
    histogram_quantile,
    percentile,
    print_table,
    raise_nofile,
    write_json,
)
from pydantic import ValidationError

from agent import catalog
from agent.policy import Policy, check_run
from shared import protocol as p
from shared.version import PROTOCOL_VERSION, __version__

GOAL_CPU_PERCENT = 25.0
GOAL_KB_PER_AGENT = 150.0
KB = 1000
LAG = "fieldlink_ingest_lag_seconds"

# The agent's connection settings (agent/link.py and agent/config.py defaults).
AGENT_KEEPALIVE = 20.0  # the agent's default (agent/config.py)


# =====================================================================================
# Worker process: many simulated agents on one event loop
# =====================================================================================


class _PinnedHQ(asyncssh.SSHServer):
    """The agent's auth policy: only HQ's pinned client key may log in."""

    def __init__(self, pinned: asyncssh.SSHKey) -> None:
        self._pinned = pinned

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return bool(key.public_data == self._pinned.public_data)


class Worker:
    """One worker process's share of the fleet, and its counters."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.host: str = spec["host"]
        self.port: int = spec["port"]
        self.interval: float = spec["interval"]
        self.total: int = spec["total"]
        self.hq_key = asyncssh.import_public_key(spec["hq_public_key"])
        self.report = p.HealthReport.model_validate_json(spec["report"])
        self.hello = p.Hello.model_validate_json(spec["hello"])
        self.gate = asyncio.Semaphore(spec["connect_concurrency"])
        self.policy = Policy()  # what `fieldlink-agent enroll` writes
        self.stopping = False
        self.t0 = 0.0
        self.agents = [
            SimAgent(self, ident["index"], ident["agent_id"], ident["key"])
            for ident in spec["identities"]
        ]
        self.unconnected = len(self.agents)
        self.all_connected = asyncio.Event()
        if not self.agents:
            self.all_connected.set()
        self.connect_failures = 0
        self.disconnects = 0
        self.frames_sent = 0
        self.frames_resent = 0
        self.acked = 0
        self.other_frames = 0
        # (sampled_at, seconds to ack) for every acked frame
        self.lags: list[tuple[float, float]] = []
        # (agent_id, request read, result written, status) for every run served
        self.runs: list[tuple[str, float, float, str]] = []

    def first_telemetry(self) -> None:
        self.unconnected -= 1
        if self.unconnected == 0:
            self.all_connected.set()


class SimAgent:
    """One simulated agent: the wire behaviour of `fieldlink-agent run`."""

    def __init__(self, worker: Worker, index: int, agent_id: str, key_text: str) -> None:
        self.w = worker
        self.index = index
        self.agent_id = agent_id
        self.key = asyncssh.import_private_key(key_text)
        facts = worker.hello.facts.model_copy(update={"hostname": f"sim-{index:05d}"})
        self.hello = p.encode(
            worker.hello.model_copy(update={"agent_id": agent_id, "facts": facts})
        )
        self.seq = 0
        self.pending: dict[int, tuple[float, bytes]] = {}  # the spool: seq -> (sampled_at, frame)
        self.channel: asyncssh.SSHServerProcess[bytes] | None = None
        self.conn: asyncssh.SSHServerConnection | None = None
        self.sampler: asyncio.Task[None] | None = None

    # --- connection, as agent.link.Link.run ---------------------------------------------

    async def run(self) -> None:
        ceiling = 1.0
        while not self.w.stopping:
            try:
                async with self.w.gate:
                    self.conn = await asyncio.wait_for(self._connect(), timeout=60)
            except (OSError, asyncssh.Error, TimeoutError):
                self.w.connect_failures += 1
                await asyncio.sleep(random.uniform(ceiling / 2, ceiling))
                ceiling = min(ceiling * 2, 60.0)
                continue
            ceiling = 1.0
            await self.conn.wait_closed()
            self.conn = None
            if self.w.stopping:
                return
            self.w.disconnects += 1
            await asyncio.sleep(random.uniform(0.5, 1.0))

    async def _connect(self) -> asyncssh.SSHServerConnection:
        return await asyncssh.connect_reverse(
            self.w.host,
            self.w.port,
            server_factory=lambda: _PinnedHQ(self.w.hq_key),
            server_host_keys=[self.key],
            process_factory=self._process,
            encoding=None,
            allow_pty=False,
            agent_forwarding=False,
            x11_forwarding=False,
            keepalive_interval=AGENT_KEEPALIVE,
            keepalive_count_max=2,
            login_timeout=30,
            config=None,
        )

    # --- the telemetry subsystem, as agent.link.Telemetry ---------------------------------

    async def _process(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        if process.subsystem == p.RUN_SUBSYSTEM:
            await self._serve_run(process)
            return
        if process.subsystem != p.TELEMETRY_SUBSYSTEM:
            process.stderr.write(b"fieldlink-agent: not offered\n")
            process.exit(127)
            return
        if self.sampler is None:
            self.sampler = asyncio.create_task(self._sample_loop())
            self.w.first_telemetry()
        if self.channel is not None:
            self.channel.close()
        self.channel = process
        try:
            process.stdout.write(self.hello)
            for seq in sorted(self.pending):
                process.stdout.write(self.pending[seq][1])
                self.w.frames_resent += 1
            decoder = p.FrameDecoder(limit=64 * 1024)
            while True:
                data = await process.stdin.read(65536)
                if not data:
                    break
                now = time.time()
                for line in decoder.feed(data):
                    frame = p.decode_hq_frame(line)
                    if not isinstance(frame, p.Ack) or frame.kind != "health":
                        self.w.other_frames += 1  # ticket lists, receipts: not ours to act on
                        continue
                    for seq in frame.seqs:
                        item = self.pending.pop(seq, None)
                        if item is not None:
                            self.w.acked += 1
                            self.w.lags.append((item[0], now - item[0]))
        except (asyncssh.Error, OSError, p.FrameError):
            pass
        finally:
            if self.channel is process:
                self.channel = None
            process.exit(0)

    # --- the fieldlink-run subsystem, as agent.run.RunService ------------------------------

    async def _serve_run(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """One run per channel, on the wire as the real agent: read one
        RunRequest line, check the entry and its parameters with the agent's
        own catalog models and the default policy, answer one RunOutput line
        and one RunResult, close. The entry itself is not run: the answer is
        what `net.tcp_check` says about a port that accepts."""
        started = datetime.now(UTC)
        decoder = p.FrameDecoder(limit=256 * 1024)
        request: p.RunRequest | None = None
        try:
            async with asyncio.timeout(10):
                while request is None:
                    data = await process.stdin.read(65536)
                    if not data:
                        break
                    lines = decoder.feed(data)
                    if lines:
                        request = p.decode_run_request(lines[0])
        except (TimeoutError, asyncssh.Error, OSError, p.FrameError):
            request = None
        if request is None:
            process.exit(0)
            return
        received = time.time()
        result = self._answer(request, started)
        try:
            if result.status == "ok":
                data = result.data or {}
                line = f"{data.get('host')}:{data.get('port')}: connected in 0.1 ms\n"
                process.stdout.write(p.encode(p.RunOutput(stream="stdout", data=line)))
            process.stdout.write(p.encode(result))
            await process.stdout.drain()
        except (asyncssh.Error, OSError, BrokenPipeError):
            pass
        self.w.runs.append((self.agent_id, received, time.time(), result.status))
        process.exit(0)

    def _answer(self, request: p.RunRequest, started: datetime) -> p.RunResult:
        def result(status: p.RunStatus, **kw: Any) -> p.RunResult:
            finished = datetime.now(UTC)
            return p.RunResult(status=status, started_at=started, finished_at=finished, **kw)

        entry = catalog.get(request.name)
        if entry is None:
            return result("refused", reason=f"no catalog entry named {request.name!r}")
        try:
            params = entry.params.model_validate(request.params)
        except ValidationError as exc:
            return result("refused", reason=f"invalid parameters: {exc.errors()[0]['msg']}")
        denied = check_run(self.w.policy, entry.tier, shell=entry.wants_shell(params))
        if denied is not None:
            return result("refused", reason=denied)
        fields = params.model_dump()
        return result(
            "ok",
            data={
                "host": fields.get("host"),
                "port": fields.get("port"),
                "address": fields.get("host"),
                "connected": True,
                "seconds": 0.0001,
                "error": None,
            },
        )

    async def _sample_loop(self) -> None:
        """A report every interval at this agent's own phase, like the real
        sampler; frames go to the spool first and out if the channel is up."""
        interval = self.w.interval
        phase = self.w.t0 + interval * self.index / self.w.total
        k = math.ceil((time.time() - phase) / interval)
        while True:
            await asyncio.sleep(max(0.0, phase + k * interval - time.time()))
            k += 1
            sampled_at = datetime.now(UTC)
            self.seq += 1
            frame = p.encode(
                p.Health(seq=self.seq, sampled_at=sampled_at, spool_dropped=0, report=self.w.report)
            )
            self.pending[self.seq] = (sampled_at.timestamp(), frame)
            channel = self.channel
            if channel is not None:
                with contextlib.suppress(asyncssh.Error, OSError):
                    channel.stdout.write(frame)
                    self.w.frames_sent += 1

    async def stop(self) -> None:
        if self.sampler is not None:
            self.sampler.cancel()
        if self.conn is not None:
            self.conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.conn.wait_closed(), timeout=5)


def _emit(event: str, **data: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


async def worker_main(spec: dict[str, Any]) -> None:
    worker = Worker(spec)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    _emit("ready", agents=len(worker.agents))

    line = (await stdin.readline()).decode().split()
    if not line or line[0] != "go":
        return
    worker.t0 = float(line[1])
    await asyncio.sleep(max(0.0, worker.t0 - time.time()))
    tasks = [asyncio.create_task(agent.run()) for agent in worker.agents]

    async def report_connected() -> None:
        await worker.all_connected.wait()
        _emit("all_connected", t=time.time(), failures=worker.connect_failures)

    reporter = asyncio.create_task(report_connected())
    while True:  # "stop" (or EOF: the controller went away) ends the run
        command = (await stdin.readline()).decode().strip()
        if command == "runs":  # the runs served since the last ask
            _emit("runs", runs=worker.runs)
            worker.runs = []
            continue
        break
    worker.stopping = True
    reporter.cancel()
    await asyncio.gather(*(agent.stop() for agent in worker.agents))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    _emit(
        "result",
        connect_failures=worker.connect_failures,
        disconnects=worker.disconnects,
        frames_sent=worker.frames_sent,
        frames_resent=worker.frames_resent,
        other_frames=worker.other_frames,
        acked=worker.acked,
        unacked=sum(len(a.pending) for a in worker.agents),
        lags=worker.lags,
        runs=worker.runs,
    )


# =====================================================================================
# Controller
# =====================================================================================


def realistic_sample() -> tuple[str, str]:
    """One real health report, and a hello as the agent makes it on this machine
    (facts, its catalog and the default policy's summary), as JSON."""
    from agent import catalog
    from agent.policy import Policy
    from agent.sampler import Sampler, collect_facts

    sampler = Sampler()
    time.sleep(1.0)
    report = sampler.sample()
    hello = p.Hello(
        protocol=PROTOCOL_VERSION,
        agent_id="template",
        version=__version__,
        facts=collect_facts(),
        spool_dropped=0,
        catalog=catalog.advertise(),
        policy=Policy().summary(),
    )
    return report.model_dump_json(by_alias=True), hello.model_dump_json(by_alias=True)


async def _create_identities(db_url: str, n: int) -> list[dict[str, Any]]:
    """N ed25519 keys and N enrolled agents, straight into HQ's database."""
    from sqlalchemy import insert

    from server.store import people
    from server.store.db import make_engine, sessionmaker
    from server.store.models import Agent, new_id, utcnow

    engine = make_engine(db_url)
    identities: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    now = utcnow()
    try:
        async with sessionmaker(engine).begin() as session:
            site, _ = await people.get_or_create_site(session, "bench-scale")
            for index in range(n):
                key = asyncssh.generate_private_key("ssh-ed25519")
                agent_id = new_id("ag")
                rows.append(
                    {
                        "id": agent_id,
                        "site_id": site.id,
                        "hostname": f"sim-{index:05d}",
                        "public_key": key.export_public_key("openssh").decode().strip(),
                        "key_fingerprint": key.get_fingerprint("sha256"),
                        "tags": [],
                        "enrolled_at": now,
                    }
                )
                identities.append(
                    {
                        "index": index,
                        "agent_id": agent_id,
                        "key": key.export_private_key("openssh").decode(),
                    }
                )
            for i in range(0, n, 500):
                await session.execute(insert(Agent), rows[i : i + 500])
    finally:
        await engine.dispose()
    return identities


async def _pg_database(url: str, create: bool, name: str) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    base = make_url(url)
    dsn = base.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        if create:
            await conn.execute(f'CREATE DATABASE "{name}"')
        else:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


class WorkerProc:
    """A worker subprocess; a thread turns its stdout lines into events."""

    def __init__(self, spec_path: Path, log: IO[bytes]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))
        self.events.put({"event": "exit"})

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()

    def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"worker {self.proc.pid}: no {name!r} in {timeout:.0f}s")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if event["event"] == name:
                return event
            if event["event"] == "exit":
                raise RuntimeError(f"worker {self.proc.pid} exited before {name!r}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _poll_connected(hq: HQProcess) -> int:
    try:
        return int(hq.metrics().value("fieldlink_agents_connected"))
    except (OSError, RuntimeError):
        return -1


def run(args: argparse.Namespace) -> dict[str, Any]:
    nofile = raise_nofile()
    n, k = args.n, max(1, min(args.processes, args.n))
    report_json, hello_json = realistic_sample()
    with contextlib.ExitStack() as stack:
        if args.workdir:
            root = Path(args.workdir).resolve()
            root.mkdir(parents=True, exist_ok=False)
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fl-bench-scale-")))
        pg_name: str | None = None
        db_url: str | None = None
        if args.db != "sqlite":
            if not args.db.startswith("postgresql"):
                raise SystemExit("--db takes `sqlite` or a postgresql+asyncpg:// URL")
            pg_name = f"flbench_{secrets.token_hex(4)}"
            asyncio.run(_pg_database(args.db, True, pg_name))
            db_url = args.db.rsplit("/", 1)[0] + f"/{pg_name}"
        pending = max(500, 2 * k * args.connect_concurrency)
        hq = HQProcess(
            root / "hq",
            db=db_url,
            env={"FIELDLINK_MAX_PENDING_HANDSHAKES": str(pending)},
        )
        if args.hq_command:
            hq.command = shlex.split(args.hq_command)
        workers: list[WorkerProc] = []
        try:
            hq.init()
            from server.config.settings import load_settings

            t = time.monotonic()
            identities = asyncio.run(_create_identities(load_settings(hq.data_dir).db_url(), n))
            setup_s = time.monotonic() - t
            print(f"{n} agent identities made and inserted in {setup_s:.1f} s", flush=True)
            hq.start()
            hq.get("/healthz")
            hq.metrics()
            time.sleep(3.0)
            idle = Watch(hq.pid)
            idle.start()
            for _ in range(5):
                time.sleep(1.0)
                idle.sample()
            idle.stop()
            print(
                f"HQ pid {hq.pid} idle: RSS {statistics.median(idle.rss) / MB:.1f} MB, "
                f"CPU {idle.cpu_percent:.2f} %",
                flush=True,
            )

            hq_public_key = (hq.data_dir / "keys" / "hq_ssh_key").read_bytes()
            hq_public = (
                asyncssh.import_private_key(hq_public_key).export_public_key("openssh").decode()
            )
            log = open(root / "workers.log", "wb")  # noqa: SIM115 - closed with the temp dir
            for w in range(k):
                spec = {
                    "host": "127.0.0.1",
                    "port": hq.ssh_port,
                    "interval": args.interval,
                    "total": n,
                    "hq_public_key": hq_public,
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
            ramp = Watch(hq.pid)
            ramp.start()
            for worker in workers:
                worker.send(f"go {t0!r}")
            print(f"{k} workers connecting {n} agents ...", flush=True)
            done_at: list[float] = []
            connected = 0
            last_print = 0.0
            deadline = time.monotonic() + args.connect_timeout
            while len(done_at) < k and time.monotonic() < deadline:
                for worker in workers:
                    with contextlib.suppress(queue.Empty):
                        event = worker.events.get_nowait()
                        if event["event"] == "all_connected":
                            done_at.append(event["t"])
                        elif event["event"] == "exit":
                            raise RuntimeError(f"a worker exited; see {root / 'workers.log'}")
                if time.monotonic() - last_print > 2.0:
                    connected = _poll_connected(hq)
                    print(f"  {time.time() - t0:5.1f} s: {connected} connected", flush=True)
                    last_print = time.monotonic()
                time.sleep(0.05)
            all_in = len(done_at) == k
            connect_s = max(done_at) - t0 if all_in else None
            ramp.stop()
            connected = _poll_connected(hq)
            rss_connected = Watch(hq.pid)
            rss_connected.sample()
            print(
                f"connected: {connected} of {n}"
                + (f" in {connect_s:.1f} s" if connect_s is not None else " (timed out)"),
                flush=True,
            )
            refused = {
                dict(labels).get("reason", "?"): value
                for (name, labels), value in hq.metrics().samples.items()
                if name == "fieldlink_agent_connections_refused_total"
            }

            print(
                f"warm-up {args.warmup:.0f} s, then measuring {args.duration:.0f} s ...", flush=True
            )
            time.sleep(args.warmup)
            m0 = hq.metrics()
            steady = Watch(hq.pid)
            load = [Watch(worker.proc.pid) for worker in workers]
            w0 = time.time()
            steady.start()
            for watch in load:
                watch.start()
            while time.time() - w0 < args.duration:
                time.sleep(1.0)
                steady.sample()
            steady.stop()
            for watch in load:
                watch.stop()
            w1 = time.time()
            m1 = hq.metrics()
            connected_end = int(m1.value("fieldlink_agents_connected"))

            for worker in workers:
                worker.send("stop")
            results = [worker.wait_event("result", 120) for worker in workers]
        finally:
            for worker in workers:
                worker.kill()
            hq.stop()
            if pg_name is not None:
                asyncio.run(_pg_database(args.db, False, pg_name))

    lags = [lag for r in results for sampled, lag in r["lags"] if w0 <= sampled <= w1]
    idle_rss = statistics.median(idle.rss)
    steady_rss = statistics.median(steady.rss)
    ingested = m1.value("fieldlink_health_reports_ingested_total") - m0.value(
        "fieldlink_health_reports_ingested_total"
    )
    result: dict[str, Any] = {
        "agents": n,
        "interval": args.interval,
        "processes": k,
        "db": "sqlite" if pg_name is None else "postgresql",
        "nofile": nofile[0],
        "max_pending_handshakes": pending,
        "setup_seconds": setup_s,
        "connect_seconds": connect_s,
        "connected": connected,
        "connected_end": connected_end,
        "connect_failures": sum(r["connect_failures"] for r in results),
        "connect_cpu_percent": ramp.cpu_percent,
        "connect_cpu_ms_per_agent": 1000 * ramp.cpu_seconds / max(connected, 1),
        "refused": refused,
        "disconnects": sum(r["disconnects"] for r in results),
        "other_frames": sum(r["other_frames"] for r in results),
        "idle_rss_mb": idle_rss / MB,
        "idle_cpu_percent": idle.cpu_percent,
        "window_seconds": steady.wall_seconds,
        "hq_cpu_percent": steady.cpu_percent,
        "hq_rss_mb": steady_rss / MB,
        "hq_rss_max_mb": max(steady.rss) / MB,
        "hq_rss_connected_mb": rss_connected.rss[0] / MB,
        "hq_rss_window_start_mb": steady.rss[0] / MB,
        "hq_rss_window_end_mb": steady.rss[-1] / MB,
        "kb_per_agent": (steady_rss - idle_rss) / max(connected_end, 1) / KB,
        "reports_ingested": ingested,
        "reports_expected": n * steady.wall_seconds / args.interval,
        "lag_hq_p50": histogram_quantile(0.5, m0.buckets(LAG), m1.buckets(LAG)),
        "lag_hq_p99": histogram_quantile(0.99, m0.buckets(LAG), m1.buckets(LAG)),
        "lag_ack_p50": percentile(lags, 0.5),
        "lag_ack_p99": percentile(lags, 0.99),
        "lag_ack_max": max(lags, default=None),
        "lag_samples": len(lags),
        "unacked_at_end": sum(r["unacked"] for r in results),
        "workers_cpu_percent": sum(w.cpu_percent for w in load),
        "goal_cpu_percent": GOAL_CPU_PERCENT,
        "goal_kb_per_agent": GOAL_KB_PER_AGENT,
    }
    result["cpu_ok"] = result["hq_cpu_percent"] <= GOAL_CPU_PERCENT
    result["memory_ok"] = result["kb_per_agent"] <= GOAL_KB_PER_AGENT
    return result


def report(r: dict[str, Any]) -> None:
    def ms(value: float | None) -> str:
        return fmt(None if value is None else value * 1000, " ms")

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    refused = ", ".join(f"{k} {v:.0f}" for k, v in r["refused"].items()) or "none"
    print_table(
        f"HQ scale: {r['agents']} agents, {r['interval']:g} s interval, {r['processes']} worker "
        f"processes, {r['db']}, window {r['window_seconds']:.0f} s",
        [
            ("time to connect all", fmt(r["connect_seconds"], " s")),
            ("connected (start/end)", f"{r['connected']} / {r['connected_end']}"),
            (
                "HQ CPU while connecting",
                f"{r['connect_cpu_percent']:.0f} % of one core, "
                f"{r['connect_cpu_ms_per_agent']:.1f} ms per agent",
            ),
            ("connect retries, refusals", f"{r['connect_failures']}, {refused}"),
            ("disconnects in run", str(r["disconnects"])),
            ("other HQ frames (tickets...)", str(r["other_frames"])),
            ("HQ idle", f"RSS {r['idle_rss_mb']:.1f} MB, CPU {r['idle_cpu_percent']:.2f} %"),
            ("HQ CPU (steady)", fmt(r["hq_cpu_percent"], " % of one core")),
            ("HQ RSS (steady median/max)", f"{r['hq_rss_mb']:.1f} / {r['hq_rss_max_mb']:.1f} MB"),
            (
                "HQ RSS all connected/window",
                f"{r['hq_rss_connected_mb']:.1f} MB; {r['hq_rss_window_start_mb']:.1f} -> "
                f"{r['hq_rss_window_end_mb']:.1f} MB",
            ),
            ("HQ memory per agent", fmt(r["kb_per_agent"], " kB (steady - idle RSS) / N")),
            (
                "reports stored in window",
                f"{r['reports_ingested']:.0f} (expected ~{r['reports_expected']:.0f})",
            ),
            (
                "ingest lag p50 / p99 (HQ)",
                f"{ms(r['lag_hq_p50'])} / {ms(r['lag_hq_p99'])}  "
                "sampled_at -> committed, histogram",
            ),
            (
                "ack lag p50 / p99 / max",
                f"{ms(r['lag_ack_p50'])} / {ms(r['lag_ack_p99'])} / {ms(r['lag_ack_max'])}  "
                f"sampled_at -> ack at agent, {r['lag_samples']} frames",
            ),
            ("load generator CPU", fmt(r["workers_cpu_percent"], " % (all workers)")),
            (f"goal CPU <= {GOAL_CPU_PERCENT:g} %", verdict(r["cpu_ok"])),
            (f"goal <= {GOAL_KB_PER_AGENT:g} kB per agent", verdict(r["memory_ok"])),
        ],
    )
    if r["agents"] != 2000 or r["interval"] != 15:
        print("  (the goal is stated for N = 2000 at a 15 s interval)")


def add_fleet_options(parser: argparse.ArgumentParser) -> None:
    """Options of every benchmark that runs a simulated fleet against HQ."""
    parser.add_argument(
        "--db",
        default="sqlite",
        help="sqlite (default), or a postgresql+asyncpg:// URL of a server where a temporary "
        "database is created and dropped",
    )
    parser.add_argument(
        "--connect-concurrency",
        type=int,
        default=25,
        help="handshakes in flight per worker while ramping up (default 25)",
    )
    parser.add_argument(
        "--connect-timeout", type=float, default=300.0, help="give up connecting after (300 s)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hq_scale.py",
        description="N simulated agents (real reverse SSH, real frames, several worker "
        "processes) against a real HQ process; prints connect time, HQ CPU and memory per "
        "agent at steady state and ingest lag.",
        epilog="Goal: N = 2000 at 15 s within 25 %% of one core and <= 150 kB HQ memory per agent.",
    )
    parser.add_argument("n", nargs="?", type=int, default=2000, help="agents (default 2000)")
    parser.add_argument("--interval", type=float, default=15.0, help="report interval (15)")
    parser.add_argument(
        "--processes", type=int, default=4, help="worker processes for the agents (default 4)"
    )
    parser.add_argument(
        "--duration", type=float, default=90.0, help="steady-state window in s (default 90)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds after all connected before the window (default interval + 5)",
    )
    add_fleet_options(parser)
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    parser.add_argument(
        "--workdir",
        metavar="DIR",
        help="keep HQ's data dir and the logs in DIR (new) instead of a temporary directory",
    )
    parser.add_argument(
        "--hq-command",
        metavar="CMD",
        help="start HQ with CMD instead of this venv's `fieldlink` (e.g. a profiling "
        "wrapper); `serve --data-dir ...` is appended",
    )
    parser.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        raise_nofile()
        asyncio.run(worker_main(json.loads(Path(args.worker).read_text())))
        return 0
    if args.n < 1 or args.processes < 1 or args.duration <= 0:
        parser.error("N, --processes and --duration must be positive")
    if args.warmup is None:
        args.warmup = args.interval + 5.0
    result = run(args)
    report(result)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
