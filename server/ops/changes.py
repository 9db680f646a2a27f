"""Changes as use cases in the caller's transaction: finding one, its events and
audit entries, opening a stage as a job, halting it; and the rules the API,
the console and `server.engine.changes.ChangeRunner` share (states, labels,
what counts as a failed item, which machines make the pilot)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.base.audit import Actor, Event
from server.ops import jobs as jobs_mod
from server.store import auditlog
from server.store.models import Agent, Change, ChangeEvent, JobItem, utcnow

log = structlog.get_logger(__name__)


RISKS = ("low", "medium", "high")


OUTCOMES = ("successful", "failed", "rolled_back")


OPEN_STATES = ("requested", "approved", "in_progress")


STATES = (
    "requested",
    "approved",
    "rejected",
    "cancelled",
    "in_progress",
    "review",
    "successful",
    "failed",
    "rolled_back",
)


# job item statuses that count as a failure of the change's run
BAD = frozenset({"failed", "timeout", "refused", "interrupted", "expired", "offline"})


OPEN_ITEMS = frozenset({"queued", "running"})


STAGE_TTL = timedelta(days=1)  # how long a stage's items may wait for offline machines


_NUMBER = re.compile(r"^CHG-(\d{1,12})$", re.IGNORECASE)


def label(change: Change) -> str:
    return f"CHG-{change.number}"


async def find(session: AsyncSession, ref: str) -> Change | None:
    """A change by id (`ch_...`) or number (`CHG-7`)."""
    match = _NUMBER.match(ref.strip())
    if match:
        return await session.scalar(select(Change).where(Change.number == int(match.group(1))))
    return await session.get(Change, ref)


def add_event(
    session: AsyncSession,
    change: Change,
    actor_name: str | None,
    kind: str,
    body: str = "",
    data: dict[str, Any] | None = None,
) -> None:
    session.add(
        ChangeEvent(
            change_id=change.id, actor_name=actor_name, kind=kind, body=body, data=data or {}
        )
    )


def audit_site(change: Change) -> str | None:
    return change.site_ids[0] if len(change.site_ids) == 1 else None


async def audit(
    session: AsyncSession,
    actor: Actor,
    change: Change,
    action: str,
    details: dict[str, Any] | None = None,
    outcome: str = "success",
) -> None:
    await auditlog.append(
        session,
        actor,
        Event(
            action,
            outcome=outcome,
            target_type="change",
            target_id=change.id,
            site_id=audit_site(change),
            details={"number": label(change), **(details or {})},
        ),
    )


async def stage_counts(session: AsyncSession, job_ids: list[str]) -> dict[str, dict[str, int]]:
    """Item statuses per job."""
    out: dict[str, dict[str, int]] = {j: {} for j in job_ids}
    if not job_ids:
        return out
    rows = await session.execute(
        select(JobItem.job_id, JobItem.status, func.count())
        .where(JobItem.job_id.in_(job_ids))
        .group_by(JobItem.job_id, JobItem.status)
    )
    for job_id, status, n in rows:
        out[job_id][status] = int(n)
    return out


async def live_agents(
    session: AsyncSession, change: Change, ids: list[str]
) -> list[tuple[str, str]]:
    """(agent id, site id) of those of `ids` not revoked, in the change's order."""
    if not ids:
        return []
    rows = await session.execute(
        select(Agent.id, Agent.site_id).where(Agent.id.in_(ids), Agent.revoked_at.is_(None))
    )
    sites = {r[0]: r[1] for r in rows}
    return [(i, sites[i]) for i in ids if i in sites]


async def open_stage(
    session: AsyncSession, change: Change, stage: str, agents: list[tuple[str, str]]
) -> list[int]:
    """Store one stage's job (as the person who started the change); the item
    ids to start once committed."""
    name = change.backout_action if stage == "backout" else change.action
    params = change.backout_params if stage == "backout" else change.params
    tier = change.backout_tier if stage == "backout" else change.tier
    assert name is not None
    assert tier is not None
    job, item_ids = await jobs_mod.insert(
        session,
        name=name,
        tier=tier,
        params=params or {},
        target={"change": label(change), "stage": stage, "agent_ids": [a for a, _ in agents]},
        timeout=change.timeout,
        ticket_id=None,
        created_by=change.started_by,
        created_by_name=change.started_by_name,
        expires_at=utcnow() + STAGE_TTL,
        agents=agents,
    )
    change.jobs = [
        *change.jobs,
        {
            "stage": stage,
            "job_id": job.id,
            "agents": len(agents),
            "started_at": utcnow().isoformat(),
        },
    ]
    add_event(
        session,
        change,
        change.started_by_name,
        "stage",
        f"{stage}: {len(agents)} machine(s)",
        {"stage": stage, "job_id": job.id, "agents": len(agents)},
    )
    await audit(
        session,
        Actor("user", change.started_by, change.started_by_name, "change"),
        change,
        "change.stage",
        {"stage": stage, "job_id": job.id, "agents": len(agents)},
    )
    return item_ids


def choose_pilot(change: Change, connected: set[str]) -> list[str]:
    """The pilot: named agents, or the first `pilot_size`, connected ones first."""
    ids = [a["id"] for a in change.agents]
    if change.pilot_agent_ids:
        return [i for i in ids if i in set(change.pilot_agent_ids)]
    ordered = [i for i in ids if i in connected] + [i for i in ids if i not in connected]
    return ordered[: max(1, change.pilot_size)]


async def halt(session: AsyncSession, change: Change, reason: str) -> None:
    """Stop a running change: no further stage; to review, with the reason."""
    change.halted = True
    change.halt_reason = reason
    change.stage = None
    change.state = "review"
    change.finished_at = change.updated_at = utcnow()
    add_event(session, change, None, "halted", reason)
    await audit(
        session, Actor.system("changes"), change, "change.halt", {"reason": reason}, "failure"
    )
    log.info("change_halted", change=label(change), reason=reason)
