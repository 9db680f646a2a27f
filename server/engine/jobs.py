"""Jobs: one catalog entry over many agents (a site, tags, a list).

Items for connected agents run at once with bounded concurrency; items for
offline agents wait in the database (a durable queue) and run when their
agent connects, until the job's TTL passes (then `expired`, never silently
dropped). Items are claimed with a conditional update, so each runs once even
when reconnects race; results are stored in batches by one writer. Items
left `running` by an HQ that died are marked `interrupted` at start-up,
never `ok`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

import structlog
from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.base.audit import Actor
from server.engine.runs import Prepared, Runs, store_many
from server.itsm.runs import TicketView
from server.links.registry import AgentLink, Registry
from server.store.models import Job, JobItem, RunRecord, utcnow

log = structlog.get_logger(__name__)

FINAL = frozenset(
    {"ok", "failed", "timeout", "refused", "interrupted", "expired", "offline", "cancelled"}
)
MAX_CONCURRENT = 64
SWEEP_SECONDS = 5.0
WRITE_BATCH = 200
WRITE_LINGER = 0.02
STOP_FLUSH_SECONDS = 10.0


class Subscription:
    """One listener's queue of a job's events; `async for` them, then `aclose()`."""

    def __init__(self, subs: dict[str, set[asyncio.Queue[dict[str, Any]]]], job_id: str) -> None:
        self._subs = subs
        self._job_id = job_id
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        subs.setdefault(job_id, set()).add(self._queue)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self._queue.get()

    async def aclose(self) -> None:
        subs = self._subs.get(self._job_id)
        if subs is not None:
            subs.discard(self._queue)
            if not subs:
                del self._subs[self._job_id]


class Jobs:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], links: Registry, runs: Runs
    ) -> None:
        self._sessions = sessions
        self._links = links
        self._runs = runs
        self._sem = asyncio.Semaphore(MAX_CONCURRENT)
        self._subs: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._done: asyncio.Queue[tuple[int, Prepared, RunRecord]] = asyncio.Queue()

    # --- events ------------------------------------------------------------------

    def _publish(self, job_id: str, event: dict[str, Any]) -> None:
        for queue in self._subs.get(job_id, ()):
            queue.put_nowait(event)

    def subscribe(self, job_id: str) -> Subscription:
        """This job's events from now on: registered before this returns, so
        nothing published while the caller reads a snapshot is missed."""
        return Subscription(self._subs, job_id)

    # --- running -------------------------------------------------------------------
    #
    # Items are claimed in one statement per dispatch, run with bounded
    # concurrency, and their results stored by one writer in batches (results,
    # audit entries, item statuses and the job's end in the same transaction).

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self, item_ids: list[int]) -> None:
        if item_ids:
            self._spawn(self._dispatch(item_ids))

    async def on_agent_connected(self, link: AgentLink) -> None:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(JobItem.id)
                .where(JobItem.agent_id == link.agent_id, JobItem.status == "queued")
                .order_by(JobItem.id)
            )
            ids = list(rows)
        if ids:
            log.info("queued_items_dispatched", agent_id=link.agent_id, count=len(ids))
        self.start(ids)

    async def _dispatch(self, item_ids: list[int]) -> None:
        """Claim what can run now (agents connected here), expire what is past
        its job's TTL, leave the rest queued."""
        now = utcnow()
        registry = self._links
        preps: dict[int, Prepared] = {}
        expired: list[tuple[str, str]] = []
        finished: list[str] = []
        async with self._sessions.begin() as session:
            rows = (
                await session.execute(
                    select(JobItem.id, JobItem.agent_id, JobItem.site_id, Job)
                    .join(Job, Job.id == JobItem.job_id)
                    .where(JobItem.id.in_(item_ids), JobItem.status == "queued")
                )
            ).all()
            late = [r for r in rows if r[3].expires_at <= now]
            ready = [r for r in rows if r[3].expires_at > now and registry.get(r[1])]
            if late:
                gone = await _move_queued(session, [r[0] for r in late], "expired", now)
                expired = [(r[3].id, r[1]) for r in late if r[0] in gone]
                for job_id in {job for job, _ in expired}:
                    if await self._maybe_finish(session, job_id):
                        finished.append(job_id)
            if ready:
                # the rest was taken by a racing dispatch
                claimed = await _move_queued(session, [r[0] for r in ready], "running", now)
                tickets: dict[str | None, TicketView | None] = {}
                for item_id, agent_id, site_id, job in ready:
                    if item_id not in claimed:
                        continue
                    if job.ticket_id not in tickets:
                        tickets[job.ticket_id] = await self._ticket(session, job.ticket_id)
                    preps[item_id] = Prepared(
                        agent_id=agent_id,
                        site_id=site_id,
                        name=job.name,
                        tier=job.tier,
                        params=job.params,
                        ticket=tickets[job.ticket_id],
                        timeout=job.timeout,
                        actor=Actor("user", job.created_by, job.created_by_name, "job"),
                        user_id=job.created_by,
                        job_id=job.id,
                    )
        # events go out once committed, so a listener that reads the job sees them
        for job_id, agent_id in expired:
            self._publish(job_id, {"agent_id": agent_id, "status": "expired"})
        for job_id in finished:
            self._publish(job_id, {"done": True})
        for item_id, prep in preps.items():
            assert prep.job_id is not None
            self._publish(prep.job_id, {"agent_id": prep.agent_id, "status": "running"})
            self._spawn(self._run(item_id, prep))

    async def _run(self, item_id: int, prep: Prepared) -> None:
        async with self._sem:
            record = await self._runs.perform(prep)
        await self._done.put((item_id, prep, record))

    async def writer(self) -> None:
        """Stores finished items in batches; runs for HQ's lifetime."""
        while True:
            batch = [await self._done.get()]
            await asyncio.sleep(WRITE_LINGER)  # let a wave of results share a transaction
            while not self._done.empty() and len(batch) < WRITE_BATCH:
                batch.append(self._done.get_nowait())
            try:
                await self._write(batch)
            finally:
                for _ in batch:
                    self._done.task_done()

    async def _write(self, batch: list[tuple[int, Prepared, RunRecord]]) -> None:
        try:
            await self._store(batch)
        except Exception:
            if len(batch) == 1:
                log.exception("job_result_not_stored", item_id=batch[0][0])
                return
            # one bad result must not cost the others theirs: store them one by one
            log.exception("job_results_batch_failed", items=len(batch))
            for one in batch:
                await self._write([one])

    async def _store(self, batch: list[tuple[int, Prepared, RunRecord]]) -> None:
        now = utcnow()
        statuses = {
            item_id: record.status if record.status != "offline" else "interrupted"
            for item_id, _, record in batch
        }
        finished: list[str] = []
        async with self._sessions.begin() as session:
            await store_many(session, [(record, prep) for _, prep, record in batch])
            items = cast(Table, JobItem.__table__)  # Core: an executemany, one statement
            await session.execute(
                update(items)
                .where(items.c.id == bindparam("b_id"))
                .values(
                    status=bindparam("b_status"), result_id=bindparam("b_result"), updated_at=now
                ),
                [
                    {"b_id": item_id, "b_status": statuses[item_id], "b_result": record.id}
                    for item_id, _, record in batch
                ],
            )
            for job_id in {prep.job_id for _, prep, _ in batch if prep.job_id}:
                if await self._maybe_finish(session, job_id):
                    finished.append(job_id)
        for item_id, prep, record in batch:
            assert prep.job_id is not None
            self._publish(
                prep.job_id,
                {"agent_id": prep.agent_id, "status": statuses[item_id], "result_id": record.id},
            )
        for job_id in finished:
            self._publish(job_id, {"done": True})

    async def _ticket(self, session: Any, ticket_id: str | None) -> TicketView | None:
        if ticket_id is None:
            return None
        from server.store.models import Ticket

        ticket = await session.get(Ticket, ticket_id)
        if ticket is None:
            return None
        return TicketView(ticket.id, ticket.number, ticket.site_id, ticket.status)

    async def _maybe_finish(self, session: Any, job_id: str) -> bool:
        """Mark the job finished when no item is left to run; True if it is.
        The caller publishes `done` after committing (and after the items' events)."""
        left = await session.scalar(
            select(func.count())
            .select_from(JobItem)
            .where(JobItem.job_id == job_id, JobItem.status.in_(("queued", "running")))
        )
        if not left:
            await session.execute(
                update(Job)
                .where(Job.id == job_id, Job.finished_at.is_(None))
                .values(finished_at=utcnow())
            )
            return True
        return False

    async def cancel(self, job_id: str) -> int:
        """Cancel the job's items still queued (those running finish); how many."""
        async with self._sessions.begin() as session:
            count, announce = await self.cancel_in(session, job_id)
        announce()
        return count

    async def cancel_in(self, session: AsyncSession, job_id: str) -> tuple[int, Callable[[], None]]:
        """Cancel the job's queued items in the caller's transaction: how many,
        and what to call once it is committed (it tells the job's listeners)."""
        rows = (
            await session.execute(
                select(JobItem.id, JobItem.agent_id).where(
                    JobItem.job_id == job_id, JobItem.status == "queued"
                )
            )
        ).all()
        agents = {r[0]: r[1] for r in rows}
        gone = await _move_queued(session, list(agents), "cancelled", utcnow()) if rows else set()
        finished = await self._maybe_finish(session, job_id)

        def announce() -> None:
            for item_id in gone:
                self._publish(job_id, {"agent_id": agents[item_id], "status": "cancelled"})
            if finished:
                self._publish(job_id, {"done": True})

        return len(gone), announce

    # --- housekeeping -------------------------------------------------------------------

    async def recover(self) -> None:
        """At start-up: runs this HQ was doing when it died did not finish."""
        async with self._sessions.begin() as session:
            await session.execute(
                update(JobItem)
                .where(JobItem.status == "running")
                .values(status="interrupted", updated_at=utcnow())
            )

    async def sweep(self) -> int:
        """Expire queued items of jobs past their TTL."""
        now = utcnow()
        async with self._sessions.begin() as session:
            rows = (
                await session.execute(
                    select(JobItem.id, JobItem.job_id, JobItem.agent_id)
                    .join(Job, Job.id == JobItem.job_id)
                    .where(JobItem.status == "queued", Job.expires_at <= now)
                )
            ).all()
            if not rows:
                return 0
            await session.execute(
                update(JobItem)
                .where(JobItem.id.in_([r[0] for r in rows]), JobItem.status == "queued")
                .values(status="expired", updated_at=now)
            )
            finished = [j for j in {r[1] for r in rows} if await self._maybe_finish(session, j)]
        for _, job_id, agent_id in rows:
            self._publish(job_id, {"agent_id": agent_id, "status": "expired"})
        for job_id in finished:
            self._publish(job_id, {"done": True})
        return len(rows)

    async def sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("job_sweep_failed", error=str(exc))

    async def stop(self) -> None:
        """Items still running stay `running` (marked `interrupted` at the next
        start); results already in are stored before HQ goes."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(self._done.join(), STOP_FLUSH_SECONDS)
        except TimeoutError:
            log.warning("job_results_not_flushed", pending=self._done.qsize())


async def _move_queued(
    session: AsyncSession, item_ids: list[int], status: str, now: datetime
) -> set[int]:
    """Move those of `item_ids` still queued to `status`; the ids moved."""
    res = await session.execute(
        update(JobItem)
        .where(JobItem.id.in_(item_ids), JobItem.status == "queued")
        .values(status=status, updated_at=now)
        .returning(JobItem.id)
    )
    return set(res.scalars())
