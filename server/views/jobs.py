"""Jobs (one action on many machines) as the caller may see them: only items
on its sites, with their results; the newest jobs for the lists."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.auth.principal import Principal
from server.store.models import Agent, Job, JobItem, RunRecord
from server.views.rows import from_row
from server.views.runs import result_json
from shared.errors import NotFound


class JobItemOut(BaseModel):
    agent_id: str
    hostname: str | None = None
    status: str
    result: dict[str, Any] | None = None


class JobOut(BaseModel):
    id: str
    name: str
    tier: str
    params: dict[str, Any]
    target: dict[str, Any]
    ticket_id: str | None
    created_by: str | None
    created_at: datetime
    expires_at: datetime
    finished_at: datetime | None
    status: str = Field(description="running, or done when every item is final")
    counts: dict[str, int]
    items: list[JobItemOut]


class JobSummary(BaseModel):
    id: str
    name: str
    created_by: str | None
    created_at: datetime
    status: str
    counts: dict[str, int]


async def job_out(
    db: async_sessionmaker[AsyncSession], who: Principal, job_id: str, with_results: bool = True
) -> JobOut:
    """A job as the caller may see it: only items on its sites; 404 if none
    (unless it made the job)."""
    scope = who.sites("agents:read")
    async with db() as session:
        job = await session.get(Job, job_id)
        if job is None:
            raise NotFound("not found")
        items = list(
            (
                await session.scalars(
                    select(JobItem).where(JobItem.job_id == job.id).order_by(JobItem.id)
                )
            ).all()
        )
        visible = [i for i in items if scope is None or i.site_id in scope]
        if not visible and job.created_by != who.user_id:
            raise NotFound("not found")
        hosts: dict[str, str] = {}
        if visible:
            rows = await session.execute(
                select(Agent.id, Agent.hostname).where(Agent.id.in_([i.agent_id for i in visible]))
            )
            hosts = {row[0]: row[1] for row in rows}
        results: dict[str, RunRecord] = {}
        ids = [i.result_id for i in visible if i.result_id]
        if with_results and ids:
            results = {
                r.id: r
                for r in (
                    await session.scalars(select(RunRecord).where(RunRecord.id.in_(ids)))
                ).all()
            }
    counts = Counter(i.status for i in visible)
    done = all(i.status not in ("queued", "running") for i in items)
    return from_row(
        JobOut,
        job,
        created_by=job.created_by_name,
        status="done" if done else "running",
        counts=dict(counts),
        items=[
            JobItemOut(
                agent_id=i.agent_id,
                hostname=hosts.get(i.agent_id),
                status=i.status,
                result=result_json(results[i.result_id])
                if i.result_id and i.result_id in results
                else None,
            )
            for i in visible
        ],
    )


async def recent_jobs(
    db: async_sessionmaker[AsyncSession], who: Principal, limit: int
) -> list[JobSummary]:
    """The newest jobs the caller can see (some of their items are in its scope)."""
    async with db() as session:
        ids = list(
            await session.scalars(select(Job.id).order_by(Job.created_at.desc()).limit(limit * 4))
        )
    out: list[JobSummary] = []
    for job_id in ids:
        try:
            job = await job_out(db, who, job_id, with_results=False)
        except NotFound:
            continue
        out.append(
            JobSummary(
                id=job.id,
                name=job.name,
                created_by=job.created_by,
                created_at=job.created_at,
                status=job.status,
                counts=job.counts,
            )
        )
        if len(out) >= limit:
            break
    return out
