"""Jobs as stored: a job and its queued items, inserted in the caller's
transaction; `server.engine.jobs.Jobs` runs them once committed."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from server.store.models import Job, JobItem
from shared.errors import Invalid, NotFound


def narrow(rows: Sequence[Any], agent_ids: list[str] | None, tags: list[str] | None) -> list[Any]:
    """A job's or a change's targets (rows with `id` and `tags`, the caller's
    agents already), narrowed to `agent_ids` (404 naming the ones not among
    them) and to those carrying all `tags`; 422 when none is left."""
    kept = list(rows)
    if agent_ids is not None:
        wanted = set(agent_ids)
        kept = [r for r in kept if r.id in wanted]
        missing = wanted - {r.id for r in kept}
        if missing:
            raise NotFound(
                "agent not found", fields={"target.agent_ids": ", ".join(sorted(missing)[:10])}
            )
    if tags:
        need = set(tags)
        kept = [r for r in kept if need <= set(r.tags or [])]
    if not kept:
        raise Invalid("no agents match the target", fields={"target": "matches no agent"})
    return kept


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
