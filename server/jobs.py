"""Jobs: one catalog entry over many agents (a site, tags, a list).

Items for connected agents run at once with bounded concurrency; items for
offline agents wait in the database (a durable queue) and run when their
agent connects, until the job's TTL passes (then `expired`, never silently
dropped). An item is claimed with a conditional update, so it runs once even
when reconnects race. Items left `running` by an HQ that died are marked
`interrupted` at start-up, never `ok`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from server.audit import Actor
from server.context import Services
from server.gateway.registry import AgentLink
from server.itsm.runs import TicketView
from server.runs import Prepared, execute
from server.store.models import Job, JobItem, RunRecord, utcnow

log = structlog.get_logger(__name__)

FINAL = frozenset({"ok", "failed", "timeout", "refused", "interrupted", "expired", "offline"})
MAX_CONCURRENT = 64
SWEEP_SECONDS = 5.0


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
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self._sem = asyncio.Semaphore(MAX_CONCURRENT)
        self._subs: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- events ------------------------------------------------------------------

    def _publish(self, job_id: str, event: dict[str, Any]) -> None:
        for queue in self._subs.get(job_id, ()):
            queue.put_nowait(event)

    def subscribe(self, job_id: str) -> Subscription:
        """This job's events from now on: registered before this returns, so
        nothing published while the caller reads a snapshot is missed."""
        return Subscription(self._subs, job_id)

    # --- running -------------------------------------------------------------------

    def _spawn(self, item_id: int) -> None:
        task = asyncio.create_task(self._run_item(item_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self, item_ids: list[int]) -> None:
        for item_id in item_ids:
            self._spawn(item_id)

    async def on_agent_connected(self, link: AgentLink) -> None:
        async with self.svc.sessions() as session:
            rows = await session.scalars(
                select(JobItem.id)
                .join(Job, Job.id == JobItem.job_id)
                .where(JobItem.agent_id == link.agent_id, JobItem.status == "queued")
                .order_by(JobItem.id)
            )
            ids = list(rows)
        if ids:
            log.info("queued_items_dispatched", agent_id=link.agent_id, count=len(ids))
        self.start(ids)

    async def _run_item(self, item_id: int) -> None:
        async with self._sem:
            now = utcnow()
            expired = finished = False
            prep: Prepared | None = None
            async with self.svc.sessions.begin() as session:
                item = await session.get(JobItem, item_id)
                if item is None or self.svc.gateway.registry.get(item.agent_id) is None:
                    return  # stays queued until the agent connects here
                job = await session.get(Job, item.job_id)
                assert job is not None
                if job.expires_at <= now:
                    claimed = await session.execute(
                        update(JobItem)
                        .where(JobItem.id == item_id, JobItem.status == "queued")
                        .values(status="expired", updated_at=now)
                    )
                    expired = bool(getattr(claimed, "rowcount", 0))
                    finished = expired and await self._maybe_finish(session, job.id)
                else:
                    claimed = await session.execute(
                        update(JobItem)
                        .where(JobItem.id == item_id, JobItem.status == "queued")
                        .values(status="running", updated_at=now)
                    )
                    if not getattr(claimed, "rowcount", 0):
                        return  # someone else has it
                    prep = Prepared(
                        agent_id=item.agent_id,
                        site_id=item.site_id,
                        name=job.name,
                        tier=job.tier,
                        params=job.params,
                        ticket=await self._ticket(session, job.ticket_id),
                        timeout=job.timeout,
                        actor=Actor("user", job.created_by, job.created_by_name, "job"),
                        user_id=job.created_by,
                        job_id=job.id,
                    )
            # events go out once committed, so a listener that reads the job sees them
            if prep is None:
                if expired:
                    self._publish(job.id, {"agent_id": item.agent_id, "status": "expired"})
                if finished:
                    self._publish(job.id, {"done": True})
                return
            self._publish(job.id, {"agent_id": item.agent_id, "status": "running"})
            status = "interrupted"

            async def item_done(session: AsyncSession, record: RunRecord) -> None:
                # in the transaction that stores the result: never one without the other
                nonlocal status, finished
                status = record.status if record.status != "offline" else "interrupted"
                await session.execute(
                    update(JobItem)
                    .where(JobItem.id == item_id)
                    .values(status=status, result_id=record.id, updated_at=utcnow())
                )
                finished = await self._maybe_finish(session, job.id)

            record = await execute(self.svc, prep, also=item_done)
            self._publish(
                job.id, {"agent_id": item.agent_id, "status": status, "result_id": record.id}
            )
            if finished:
                self._publish(job.id, {"done": True})

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

    # --- housekeeping -------------------------------------------------------------------

    async def recover(self) -> None:
        """At start-up: runs this HQ was doing when it died did not finish."""
        async with self.svc.sessions.begin() as session:
            await session.execute(
                update(JobItem)
                .where(JobItem.status == "running")
                .values(status="interrupted", updated_at=utcnow())
            )

    async def sweep(self) -> int:
        """Expire queued items of jobs past their TTL."""
        now = utcnow()
        async with self.svc.sessions.begin() as session:
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
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
