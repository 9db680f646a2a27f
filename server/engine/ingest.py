"""Health ingest: telemetry readers hand frames to one writer that commits
them in batches and then acks them, so an ack always means "stored".

The queue is bounded: a slow database slows the readers, which slows the SSH
channels (flow control), which makes agents keep frames in their spools.

Agents report at their own phase, so frames arrive spread out; the writer
lingers a moment after the first frame of a batch so that one transaction
carries many frames instead of one (a transaction per frame was most of HQ's
CPU at 2,000 agents, see docs/benchmarks.md). That adds at most `linger`
seconds to the time before an ack.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.base.metrics import Metrics
from server.store import fleet
from shared import protocol as p

log = structlog.get_logger(__name__)

AckSink = Callable[[list[int]], None]


@dataclass(frozen=True)
class _Item:
    agent_id: str
    frame: p.Health
    ack: AckSink


class Ingestor:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        metrics: Metrics,
        *,
        batch: int = 500,
        queue_size: int = 5000,
        linger: float = 0.05,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._batch = batch
        self._linger = linger
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(queue_size)
        self.listeners: list[Callable[[list[fleet.Ingest]], None]] = []

    async def submit(self, agent_id: str, frame: p.Health, ack: AckSink) -> None:
        await self._queue.put(_Item(agent_id, frame, ack))

    async def run(self) -> None:
        while True:
            items = [await self._queue.get()]
            if self._linger > 0 and self._queue.qsize() < self._batch - 1:
                await asyncio.sleep(self._linger)
            while len(items) < self._batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            try:
                await self._commit(items)
            finally:
                for _ in items:
                    self._queue.task_done()

    async def drain(self, timeout: float) -> bool:
        """Wait until every frame handed in is committed (at shutdown, before the
        writer is cancelled: a transaction cancelled half-way can leave SQLite
        locked). False if that took longer than `timeout`."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            log.warning("ingest_not_drained", pending=self._queue.qsize())
            return False
        return True

    async def _commit(self, items: list[_Item]) -> None:
        batch = [fleet.Ingest(it.agent_id, it.frame) for it in items]
        delay = 0.5
        while True:
            try:
                async with self._sessions.begin() as session:
                    inserted = await fleet.store_health(session, batch)
                break
            except Exception as exc:  # database down: keep the frames, retry
                log.warning("ingest_commit_failed", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        now = time.time()
        for it in items:
            self._metrics.ingest_lag.observe(max(0.0, now - it.frame.sampled_at.timestamp()))
        self._metrics.reports_ingested.inc(inserted)
        by_sink: dict[int, tuple[AckSink, list[int]]] = {}
        for it in items:
            by_sink.setdefault(id(it.ack), (it.ack, []))[1].append(it.frame.seq)
        for sink, seqs in by_sink.values():
            sink(seqs)
        for listener in self.listeners:
            try:
                listener(batch)
            except Exception:
                log.exception("ingest_listener_failed")
