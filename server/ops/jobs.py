"""Jobs as stored: a job and its queued items, inserted in the caller's
transaction; `server.engine.jobs.Jobs` runs them once committed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from server.store.models import Job, JobItem


async def insert(
    session: AsyncSession,
    *,
    name: str,
    tier: str,
    params: dict[str, Any],
    target: dict[str, Any],
    timeout: float,
    ticket_id: str | None,
    created_by: str | None,
    created_by_name: str | None,
    expires_at: datetime,
    agents: list[tuple[str, str]],
) -> tuple[Job, list[int]]:
    """Store a job and its queued items (agent id, site id); start them with
    `Jobs.start(item_ids)` once committed."""
    job = Job(
        name=name,
        tier=tier,
        params=params,
        target=target,
        timeout=timeout,
        ticket_id=ticket_id,
        created_by=created_by,
        created_by_name=created_by_name,
        expires_at=expires_at,
    )
    session.add(job)
    await session.flush()
    items = [
        JobItem(job_id=job.id, agent_id=agent_id, site_id=site_id, status="queued")
        for agent_id, site_id in agents
    ]
    session.add_all(items)
    await session.flush()
    return job, [i.id for i in items]
