"""A log the agent cannot write never stalls it (issue 17, item 9), end to end
with a real HQ restarted under a real agent process whose log (its stderr) is
on a full disk, and the sink itself with a real full device."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shared.logs import SafeSink
from tests.support import HQHandle, start_agent, wait_until
from tests.test_agent_hardening import fill, small_disk, status_json


async def agent_logging_to(log_fd: int, cdir: Path) -> asyncio.subprocess.Process:
    """`fieldlink-agent run` as its own process, stdout and stderr on `log_fd`."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent.cli",
        "run",
        "--config-dir",
        str(cdir),
        "--log-format",
        "json",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log_fd,
        stderr=log_fd,
    )


def top_up(path: Path) -> None:
    """Append newlines to `path` until its disk takes no more."""
    with path.open("ab", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\n")
        except OSError:
            pass


async def relinks_after_hq_restarts(
    hq: HQHandle, agent_id: str, proc: asyncio.subprocess.Process, bound: float
) -> float:
    """Restart HQ; seconds until the agent's link is back (fails past `bound`)."""

    def linked() -> Any:
        assert proc.returncode is None, f"the agent exited with {proc.returncode}"
        return hq.hq.parts.links.get(agent_id)

    await wait_until(linked, timeout=30, what="linked")
    await hq.restart()
    started = time.monotonic()
    await wait_until(linked, timeout=bound, what="the link back after HQ's restart")
    return time.monotonic() - started


@pytest.mark.timeout(180)
async def test_the_link_returns_with_the_log_on_a_full_disk(sqlite_hq, tmp_path):
    """The agent's log file on a tmpfs that fills up while it runs (the issue's
    case): HQ restarts twice and the link is back within 20 s each time, the
    agent still runs, counts the log lines it could not write, and `status`
    says so; once there is room again, the log says how many were lost."""
    hq = sqlite_hq
    agent = await start_agent(hq, tmp_path / "agent", run=False)
    with small_disk(tmp_path / "disk", "1m") as disk:
        log = disk / "agent.log"
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        proc = await agent_logging_to(fd, agent.dir.path)
        os.close(fd)
        try:
            await wait_until(lambda: log.stat().st_size > 0, timeout=30, what="a first log line")
            filler = fill(disk / "filler")
            top_up(log)  # the log's own last page too: no log line fits anywhere
            for _ in range(2):
                await relinks_after_hq_restarts(hq, agent.agent_id, proc, bound=20)
            status = await status_json(agent.dir.path)
            assert status["link"] == "connected"
            assert status["log_dropped"] > 0, status
            filler.unlink()
            await relinks_after_hq_restarts(hq, agent.agent_id, proc, bound=20)
            await wait_until(
                lambda: "log_lines_dropped" in log.read_text(), timeout=30, what="the gap noted"
            )
        finally:
            if proc.returncode is None:
                proc.terminate()
                assert await proc.wait() == 0


@pytest.mark.timeout(120)
async def test_the_agent_runs_with_its_log_on_dev_full(sqlite_hq, tmp_path):
    """Every log write failing from the start (/dev/full): the agent starts,
    links, and is back within 20 s of an HQ restart; SIGTERM still ends it
    with status 0."""
    hq = sqlite_hq
    agent = await start_agent(hq, tmp_path / "agent", run=False)
    fd = os.open("/dev/full", os.O_WRONLY)
    proc = await agent_logging_to(fd, agent.dir.path)
    os.close(fd)
    try:
        await relinks_after_hq_restarts(hq, agent.agent_id, proc, bound=20)
    finally:
        if proc.returncode is None:
            proc.terminate()
            assert await proc.wait() == 0


def test_the_sink_never_raises_or_blocks():
    """A sink on a real full device (/dev/full) and on a pipe nobody reads:
    `write` returns at once every time, lines that cannot go are counted, and
    once the pipe is read again the log says how many were lost."""
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        sink = SafeSink(full, max_lines=100, retry=0.05)
        for i in range(1000):
            sink.write(f"line {i}")
        sink.flush()
        assert sink.dropped == 1000 and sink.error == "No space left on device"
        sink.close()
    finally:
        os.close(full)

    r, w = os.pipe()
    try:
        os.set_blocking(w, False)
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(w, b"x" * 4096)
        os.set_blocking(w, True)  # now a write to it would wait for a reader
        sink = SafeSink(w, max_lines=100, retry=0.05)
        started = time.monotonic()
        for i in range(10_000):
            sink.write(f"line {i}")
        assert time.monotonic() - started < 2.0
        assert sink.dropped >= 9_800  # the queue held the rest

        got = bytearray()
        os.set_blocking(r, False)

        def read_until(what: bytes) -> None:
            deadline = time.monotonic() + 20
            while what not in got:
                assert time.monotonic() < deadline, (what, bytes(got[-200:]))
                try:
                    got.extend(os.read(r, 1 << 20))
                except BlockingIOError:
                    time.sleep(0.01)

        read_until(b"line 1\n")  # the writer goes on once the pipe is read
        sink.write("after")
        read_until(b"after")
        assert b'"event": "log_lines_dropped"' in got
        sink.close()
    finally:
        os.close(r)
        os.close(w)
