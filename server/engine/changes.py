"""Changes: planned work on machines, approved by others, run as staged jobs.

A change names one catalog entry (or `exec`) with its parameters and the
machines it touches (sites, tags, agents, resolved when it is requested).
Approvers holding `changes:approve` on every site it touches decide: one
refusal rejects; `approvals_required` approvals approve; nobody decides on
their own change. Started, it runs as jobs (`server.engine.jobs`, the same fan-out
as `POST /api/v1/jobs`) in stages:

    pilot job -> health gate -> rest job(s) -> review

The gate passes when every pilot item is `ok` and no alert has fired on a
pilot machine since the pilot started, for `gate_seconds` after the pilot
finished. Any pilot item not `ok` halts the change; in the rest, failures
above `failure_threshold` percent of a stage's items halt it. Halting
cancels the queued items and moves the change to `review`, where a person
closes it as successful, failed or rolled back (optionally running the
backout action on the machines it ran on).

All state is in the database; `ChangeRunner` (one background task in HQ)
advances changes in progress, so they carry on after an HQ restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import timedelta

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.base.audit import Actor
from server.engine import jobs as jobs_mod
from server.ops.changes import (
    BAD,
    OPEN_ITEMS,
    add_event,
    audit,
    halt,
    live_agents,
    open_stage,
    stage_counts,
)
from server.store.models import Alert, AlertRule, Change, JobItem, utcnow

log = structlog.get_logger(__name__)

TICK_SECONDS = 1.0


class ChangeRunner:
    """Advances changes in progress: stage results, the gate, halting."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], jobs: jobs_mod.Jobs) -> None:
        self._sessions = sessions
        self._jobs = jobs
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.advance_all()
            except Exception as exc:
                log.warning("changes_advance_failed", error=repr(exc))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_SECONDS)

    async def advance_all(self) -> None:
        async with self._sessions() as session:
            ids = list(
                await session.scalars(select(Change.id).where(Change.state == "in_progress"))
            )
        for change_id in ids:
            try:
                await self.advance(change_id)
            except Exception:
                log.exception("change_advance_failed", change_id=change_id)

    async def advance(self, change_id: str) -> None:
        start: list[int] = []
        announce: list[Callable[[], None]] = []
        async with self._sessions.begin() as session:
            change = await session.scalar(
                select(Change).where(Change.id == change_id).with_for_update()
            )
            if change is None or change.state != "in_progress":
                return
            current = change.jobs[-1]["job_id"] if change.jobs else None
            counts = (await stage_counts(session, [current]))[current] if current else {}
            total = sum(counts.values())
            bad = sum(n for status, n in counts.items() if status in BAD)
            running = sum(n for status, n in counts.items() if status in OPEN_ITEMS)
            if change.stage == "pilot":
                if bad:
                    await halt(session, change, f"pilot: {bad} of {total} item(s) not ok")
                    announce.append(await self.cancel_stage(session, current))
                elif not running:
                    change.stage = "gate"
                    change.gate_started_at = utcnow()
                    change.updated_at = utcnow()
                    add_event(
                        session,
                        change,
                        None,
                        "gate",
                        f"pilot ok on {total} machine(s); watching for {change.gate_seconds:g}s",
                    )
            elif change.stage == "gate":
                reason = await self.gate_alert(session, change)
                if reason is not None:
                    await halt(session, change, reason)
                elif change.gate_started_at is not None and utcnow() >= (
                    change.gate_started_at + timedelta(seconds=change.gate_seconds)
                ):
                    add_event(session, change, None, "gate_passed", "health gate passed")
                    await audit(session, Actor.system("changes"), change, "change.gate_passed")
                    start = await self.next_batch(session, change)
            elif change.stage == "rest":
                if total and bad * 100.0 / total > change.failure_threshold:
                    announce.append(await self.cancel_stage(session, current))
                    await halt(
                        session,
                        change,
                        f"{bad} of {total} item(s) failed, above the "
                        f"{change.failure_threshold:g}% threshold",
                    )
                elif not running:
                    start = await self.next_batch(session, change)
        for told in announce:
            told()
        if start:
            self._jobs.start(start)
            self.wake()

    async def cancel_stage(self, session: AsyncSession, job_id: str | None) -> Callable[[], None]:
        """Cancel what waits in a stage, in the halt's own transaction (so whoever
        sees the change halted sees its queued items cancelled)."""
        if job_id is None:
            return lambda: None
        _, announce = await self._jobs.cancel_in(session, job_id)
        return announce

    async def gate_alert(self, session: AsyncSession, change: Change) -> str | None:
        """Why the gate fails: an alert fired on a pilot machine since the pilot began."""
        if change.pilot_started_at is None or not change.pilot_agent_ids:
            return None
        row = (
            await session.execute(
                select(Alert.agent_id, AlertRule.name)
                .join(AlertRule, AlertRule.id == Alert.rule_id)
                .where(
                    Alert.agent_id.in_(change.pilot_agent_ids),
                    Alert.fired_at.is_not(None),
                    Alert.fired_at >= change.pilot_started_at,
                )
                .limit(1)
            )
        ).first()
        if row is None:
            return None
        host = next((a.get("hostname") for a in change.agents if a["id"] == row[0]), row[0])
        return f"health gate: alert {row[1]!r} fired on pilot machine {host}"

    async def next_batch(self, session: AsyncSession, change: Change) -> list[int]:
        """Start the next batch of the rest, or move the change to review."""
        job_ids = [s["job_id"] for s in change.jobs]
        done = set(
            await session.scalars(select(JobItem.agent_id).where(JobItem.job_id.in_(job_ids)))
        )
        left = await live_agents(
            session, change, [a["id"] for a in change.agents if a["id"] not in done]
        )
        agents = left[: change.batch_size] if change.batch_size else left
        if not agents:
            change.stage = None
            change.state = "review"
            change.finished_at = change.updated_at = utcnow()
            add_event(session, change, None, "state", "every stage ran: ready for review")
            await audit(
                session, Actor.system("changes"), change, "change.review_ready", {"halted": False}
            )
            return []
        change.stage = "rest"
        change.updated_at = utcnow()
        return await open_stage(session, change, "rest", agents)
