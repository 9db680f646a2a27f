"""Changes as the caller may see them: the read models (`ChangeOut` with its
stages, approvals and events; `ChangeSummary` for lists), the filtered
list, and one change within the caller's scope."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.principal import Principal
from server.ops import changes as ch
from server.store.models import Change, ChangeApproval, ChangeEvent, Site, utcnow
from server.views.rows import from_row
from shared.errors import NotFound


class ApprovalOut(BaseModel):
    approver: str
    decision: str
    comment: str
    at: datetime


class StageOut(BaseModel):
    stage: str
    job_id: str
    agents: int
    started_at: str
    status: str = Field(description="running, or done when every item is final")
    counts: dict[str, int]


class EventOut(BaseModel):
    at: datetime
    actor: str | None
    kind: str
    body: str
    data: dict[str, Any]


class AgentRef(BaseModel):
    id: str
    hostname: str | None = None
    site: str | None = None
    pilot: bool = False


class ChangeOut(BaseModel):
    id: str
    number: str
    title: str
    description: str
    risk: str
    plan: str
    backout_plan: str
    action: dict[str, Any]
    backout_action: dict[str, Any] | None
    target: dict[str, Any]
    sites: list[str]
    agents: list[AgentRef]
    agent_count: int
    pilot_size: int
    gate_seconds: float
    failure_threshold: float
    batch_size: int | None
    approvals_required: int
    approvals: list[ApprovalOut]
    planned_start: datetime | None
    state: str
    stage: str | None
    requester: str
    started_by: str | None
    stages: list[StageOut]
    halted: bool
    halt_reason: str | None
    outcome: str | None
    review_comment: str | None
    created_at: datetime
    updated_at: datetime
    approved_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    closed_at: datetime | None
    history: list[EventOut]


class ChangeSummary(BaseModel):
    id: str
    number: str
    title: str
    risk: str
    state: str
    stage: str | None
    requester: str
    sites: list[str]
    agent_count: int
    planned_start: datetime | None
    created_at: datetime


class ChangeQuery(BaseModel):
    state: str | None = Field(None, description="only changes in this state")
    upcoming: bool = Field(
        False, description="only changes not yet done (requested, approved, in progress)"
    )
    agent: str | None = Field(None, description="only changes touching this agent")
    limit: int = Field(100, ge=1, le=500)


def _visible(who: Principal, change: Change) -> bool:
    scope = who.sites("changes:read")
    return scope is None or bool(scope & set(change.site_ids))


async def readable_change(
    session: AsyncSession, who: Principal, ref: str, lock: bool = False
) -> Change:
    """The change, 404 if not visible. With `lock`, the row is claimed for this
    transaction before its state is read: a no-op UPDATE takes PostgreSQL's row
    lock and SQLite's write lock, so a concurrent decision (approve and reject at
    the same moment) waits for this one's commit and then reads its outcome
    (409), rather than both reading "requested". The re-read must overwrite
    what the session already holds (populate_existing)."""
    found = await ch.find(session, ref)
    if found is not None and lock:
        await session.execute(
            update(Change)
            .where(Change.id == found.id)
            .values(state=Change.state)
            .execution_options(synchronize_session=False)
        )
        found = await session.scalar(
            select(Change)
            .where(Change.id == found.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    if found is None or not _visible(who, found):
        raise NotFound("change not found")
    return found


async def locked_change(session: AsyncSession, who: Principal, ref: str) -> Change:
    """`readable_change`, claimed for this transaction: for deciding and working it."""
    return await readable_change(session, who, ref, lock=True)


async def change_out(session: AsyncSession, who: Principal, change: Change) -> ChangeOut:
    scope = who.sites("changes:read")
    names = {
        s.id: s.name
        for s in (await session.scalars(select(Site).where(Site.id.in_(change.site_ids)))).all()
    }
    approvals = (
        await session.scalars(
            select(ChangeApproval)
            .where(ChangeApproval.change_id == change.id)
            .order_by(ChangeApproval.id)
        )
    ).all()
    events = (
        await session.scalars(
            select(ChangeEvent).where(ChangeEvent.change_id == change.id).order_by(ChangeEvent.id)
        )
    ).all()
    job_ids = [s["job_id"] for s in change.jobs]
    counts = await ch.stage_counts(session, job_ids)
    pilot = set(change.pilot_agent_ids)
    return from_row(
        ChangeOut,
        change,
        number=ch.label(change),
        action={"name": change.action, "params": change.params, "tier": change.tier},
        backout_action={
            "name": change.backout_action,
            "params": change.backout_params or {},
            "tier": change.backout_tier,
        }
        if change.backout_action
        else None,
        sites=sorted(names.get(s, s) for s in change.site_ids),
        agents=[
            AgentRef(
                id=a["id"],
                hostname=a.get("hostname"),
                site=names.get(a.get("site_id", "")),
                pilot=a["id"] in pilot,
            )
            for a in change.agents
            if scope is None or a.get("site_id") in scope
        ],
        agent_count=len(change.agents),
        approvals=[
            ApprovalOut(approver=a.approver_name, decision=a.decision, comment=a.comment, at=a.at)
            for a in approvals
        ],
        requester=change.requester_name,
        started_by=change.started_by_name,
        stages=[
            StageOut(
                stage=s["stage"],
                job_id=s["job_id"],
                agents=int(s.get("agents", 0)),
                started_at=str(s.get("started_at", "")),
                counts=counts.get(s["job_id"], {}),
                status=(
                    "running"
                    if any(k in ch.OPEN_ITEMS for k in counts.get(s["job_id"], {}))
                    else "done"
                ),
            )
            for s in change.jobs
        ],
        history=[
            EventOut(at=e.at, actor=e.actor_name, kind=e.kind, body=e.body, data=e.data)
            for e in events
        ],
    )


async def visible_changes(
    session: AsyncSession, who: Principal, q: ChangeQuery
) -> list[ChangeSummary]:
    stmt = select(Change)
    if q.state:
        stmt = stmt.where(Change.state == q.state)
    if q.upcoming:
        stmt = stmt.where(Change.state.in_(ch.OPEN_STATES))
    rows = (
        await session.scalars(stmt.order_by(Change.created_at.desc()).limit(q.limit * 10))
    ).all()
    scope = who.sites("changes:read")
    found = [c for c in rows if _visible(who, c)]
    if q.agent:
        found = [c for c in found if any(a["id"] == q.agent for a in c.agents)]
        found = [
            c
            for c in found
            if scope is None
            or any(a["id"] == q.agent and a.get("site_id") in scope for a in c.agents)
        ]
    if q.upcoming:
        far = datetime.max.replace(tzinfo=utcnow().tzinfo)
        found.sort(key=lambda c: (c.planned_start or far, c.number))
    names = {s.id: s.name for s in (await session.scalars(select(Site))).all()}
    return [
        from_row(
            ChangeSummary,
            c,
            number=ch.label(c),
            requester=c.requester_name,
            sites=sorted(names.get(s, s) for s in c.site_ids if scope is None or s in scope),
            agent_count=len(c.agents),
        )
        for c in found[: q.limit]
    ]
