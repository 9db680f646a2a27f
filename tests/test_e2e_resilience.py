"""Resilience end to end: HQ killed and restarted, dead links, a full spool,
misbehaving agents. Real processes where a crash or a freeze is the point."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import asyncssh
from sqlalchemy import select
from structlog.testing import capture_logs

from agent.config import ConfigDir
from agent.enroll import enroll
from agent.spool import Spool
from server.config.datadir import DataDir
from server.config.settings import load_settings
from server.control import admin
from server.store.db import make_engine, sessionmaker
from server.store.models import HealthRecord
from tests.support import ApiClient, free_port, spawn, start_agent, wait_until


async def test_hq_killed_and_restarted_loses_nothing(db_url, tmp_path, hq_factory):
    """kill -9 HQ while the agent keeps sampling: every report arrives exactly once."""
    data = tmp_path / "hq"
    http, ssh = free_port(), free_port()
    settings = load_settings(data, db=db_url, http=f"127.0.0.1:{http}", ssh=f"127.0.0.1:{ssh}")
    await admin.init(settings, admin_password="x" * 16)
    argv = (
        "fieldlink",
        "serve",
        "--data-dir",
        str(data),
        "--db",
        db_url,
        "--http",
        f"127.0.0.1:{http}",
        "--ssh",
        f"127.0.0.1:{ssh}",
    )
    serve = await spawn(tmp_path / "serve.log", *argv)
    datadir = DataDir(data)
    await wait_until(datadir.read_serve_info, timeout=30, what="HQ up")
    token = await admin.enroll_token(settings, site="shop-1", uses=1, ttl="1h")
    cdir = ConfigDir(tmp_path / "agent")
    cfg = await asyncio.to_thread(enroll, token, cdir)
    cdir.save(cfg.model_copy(update={"keepalive_interval": 1.0, "backoff_cap": 1.0}))
    from agent.daemon import Daemon

    daemon = Daemon(cdir, interval=0.05)
    task = asyncio.create_task(daemon.run(install_signals=False))
    engine = make_engine(db_url)
    sessions = sessionmaker(engine)

    async def seqs() -> list[int]:
        async with sessions() as session:
            return list(
                await session.scalars(
                    select(HealthRecord.seq)
                    .where(HealthRecord.agent_id == cfg.agent_id)
                    .order_by(HealthRecord.seq)
                )
            )

    try:
        await wait_until(seqs, timeout=20, what="first reports")
        serve.send_signal(signal.SIGKILL)
        await serve.wait()

        def spooled() -> int:  # the agent keeps sampling into its spool
            return Spool(cdir.spool_file, 1000).stats().pending

        await wait_until(lambda: spooled() > 5, timeout=30, what="reports spooled")
        serve = await spawn(tmp_path / "serve2.log", *argv)

        def up_again() -> bool:
            text = (tmp_path / "serve2.log").read_text()
            assert serve.returncode is None, text[-3000:]
            return "hq_started" in text

        await wait_until(up_again, timeout=60, what="HQ up again")

        async def drained():
            stats = Spool(cdir.spool_file, 1000).stats()
            got = await seqs()
            return stats.pending == 0 and got and got[-1] >= stats.last_seq - 1

        await wait_until(drained, timeout=30, what="spool drained after restart")
    finally:
        daemon.stop()
        await task
        serve.send_signal(signal.SIGTERM)
        await serve.wait()
    got = await seqs()
    await engine.dispose()
    assert got == list(range(1, len(got) + 1)), "a report was lost or stored twice"
    assert len(got) >= Spool(cdir.spool_file, 1000).stats().last_seq - 1


async def test_dead_link_marks_offline_within_three_keepalives(sqlite_hq, tmp_path):
    """A frozen agent is marked offline within 3 keepalive intervals; online after thawing."""
    handle = await start_agent(sqlite_hq, tmp_path / "agent", run=False)
    proc = await spawn(
        tmp_path / "agent.log",
        "fieldlink-agent",
        "run",
        "--config-dir",
        str(handle.dir.path),
        "--interval",
        "0.5",
    )
    api = ApiClient(sqlite_hq.url, sqlite_hq.fingerprint, sqlite_hq.admin_token)

    async def status() -> str:
        return (await api.ok("GET", f"/api/v1/agents/{handle.agent_id}"))["status"]

    try:
        await wait_until(
            lambda: sqlite_hq.hq.parts.links.get(handle.agent_id),
            timeout=20,
            what="online",
        )
        assert await status() == "online"
        os.kill(proc.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        await wait_until(
            lambda: sqlite_hq.hq.parts.links.get(handle.agent_id) is None,
            timeout=10,
            interval=0.05,
            what="dead link noticed",
        )
        took = time.monotonic() - frozen
        keepalive = sqlite_hq.settings.keepalive_interval
        # the last report may have just arrived when frozen; allow one report interval
        assert took <= 3 * keepalive + 0.5 + 0.5, f"offline only after {took:.1f}s"
        assert await status() == "offline"
        os.kill(proc.pid, signal.SIGCONT)

        async def back() -> bool:
            return await status() == "online"

        await wait_until(back, timeout=20, what="online again")
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        await api.close()


async def _impostor(hq, handle, payload: bytes) -> tuple[list[dict], bool]:
    """Connect with an enrolled agent's real key, then send `payload` on telemetry."""
    key = asyncssh.read_private_key(handle.dir.key_file)
    cfg = handle.dir.load()

    async def process(proc: asyncssh.SSHServerProcess) -> None:
        proc.stdout.write(payload)
        await proc.stdin.read()

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return False

    with capture_logs() as logs:
        conn = await asyncssh.connect_reverse(
            "127.0.0.1",
            hq.hq.parts.ssh_port,
            server_host_keys=[key],
            process_factory=process,
            server_factory=Server,
            encoding=None,
            config=None,
        )
        try:
            await asyncio.wait_for(conn.wait_closed(), timeout=10)
            closed = True
        except TimeoutError:
            closed = False
            conn.close()
    del cfg
    return logs, closed


async def test_malformed_frames_close_the_agent_not_hq(sqlite_hq, agent_factory):
    """Garbage or an oversized frame closes that agent's connection; HQ carries on."""
    handle = await agent_factory(sqlite_hq, run=False)
    logs, closed = await _impostor(sqlite_hq, handle, b"this is not json\n")
    assert closed
    assert any(e["event"] == "agent_frame_rejected" for e in logs)
    logs, closed = await _impostor(sqlite_hq, handle, b"x" * (2 * 1024 * 1024))
    assert closed
    assert any(
        "exceeds" in e.get("error", "") for e in logs if e["event"] == "agent_frame_rejected"
    )
    async with sqlite_hq.client() as api:
        assert (await api.get("/healthz"))[0] == 200
    # the real agent still connects and reports
    await handle.start()
    await wait_until(lambda: sqlite_hq.hq.parts.links.get(handle.agent_id), what="agent")


async def test_full_spool_drops_are_visible(sqlite_hq, agent_factory):
    """With HQ away and a tiny spool, drops are counted and shown at HQ and in status."""
    handle = await agent_factory(sqlite_hq, interval=0.02, spool_max_frames=10)
    gw = sqlite_hq.hq.parts.gateway
    await wait_until(lambda: gw.registry.get(handle.agent_id), what="connected")
    await sqlite_hq.stop()
    await wait_until(  # the agent samples every 0.02 s into a spool of 10 frames
        lambda: Spool(handle.dir.spool_file, 10).stats().dropped > 0,
        timeout=30,
        what="drops in the spool",
    )
    await sqlite_hq.restart()

    async def dropped():
        async with sqlite_hq.client(sqlite_hq.admin_token) as api:
            body = await api.ok("GET", f"/api/v1/agents/{handle.agent_id}")
        return body["spool_dropped"]

    count = await wait_until(dropped, timeout=20, what="drop count at HQ")
    assert count > 0
    await handle.stop()
    import contextlib
    import io

    from agent.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["status", "--config-dir", str(handle.dir.path)]) == 0
    assert "spool dropped" in out.getvalue()
    assert "dropped" in err.getvalue()


async def test_health_older_than_retention_is_pruned(sqlite_hq, agent_factory):
    """HQ prunes raw health beyond the retention window."""
    from datetime import timedelta

    from sqlalchemy import func, update

    from server.store.models import utcnow

    handle = await agent_factory(sqlite_hq)
    sessions = sqlite_hq.sessions

    async def count() -> int:
        async with sessions() as session:
            return int(
                await session.scalar(
                    select(func.count())
                    .select_from(HealthRecord)
                    .where(HealthRecord.agent_id == handle.agent_id)
                )
                or 0
            )

    await wait_until(lambda: count(), what="reports")
    await handle.stop()
    async with sessions.begin() as session:
        await session.execute(update(HealthRecord).values(sampled_at=utcnow() - timedelta(days=8)))
    before = await count()
    assert await sqlite_hq.hq.prune_once() == before
    assert await count() == 0


async def test_stop_frees_the_database_from_a_write_cancelled_half_way(sqlite_hq, agent_factory):
    """A background write cancelled in the middle of its statement at shutdown
    (SQLite keeps such a connection's write lock until it is garbage collected):
    HQ still marks its agents offline on the way out, and the file is free."""
    from sqlalchemy import text

    from server.store.models import Agent

    handle = await agent_factory(sqlite_hq)
    hq = sqlite_hq.hq

    async def online() -> bool | None:
        async with sqlite_hq.sessions() as session:
            return await session.scalar(select(Agent.online).where(Agent.id == handle.agent_id))

    await wait_until(online, what="the agent online")
    await handle.stop()
    await wait_until(lambda: _not(online), what="the agent offline")
    async with sqlite_hq.sessions.begin() as session:  # as if the link were still up
        await session.execute(text("UPDATE agents SET online = 1"))
        await session.execute(text("CREATE TABLE scratch (v TEXT)"))
    writing = asyncio.Event()

    async def slow_write() -> None:  # the ingestor's kind of write, only bigger
        async with hq.parts.sessions.begin() as session:
            writing.set()
            while True:  # a statement is running whenever HQ cancels this
                await session.execute(
                    text("INSERT INTO scratch (v) VALUES (:v)"), [{"v": "x" * 200}] * 20000
                )

    hq._spawn(slow_write(), "slow-write")
    await writing.wait()
    with capture_logs() as logs:
        await sqlite_hq.stop()
    assert not [e for e in logs if e["event"] == "agents_not_marked_offline"], logs
    engine = make_engine(sqlite_hq.settings.db_url())
    try:
        async with sessionmaker(engine).begin() as session:
            assert await session.scalar(select(Agent.online)) is False
            await session.execute(text("UPDATE sites SET name = name"))
    finally:
        await engine.dispose()


async def _not(probe: Any) -> bool:
    return not await probe()
