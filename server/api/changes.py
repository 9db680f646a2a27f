"""Changes: request, approve or reject, start (staged jobs), cancel, review.

Visibility: a change is seen by callers holding `changes:read` on one of the
sites it touches (only their sites' machines are listed). Deciding needs
`changes:approve`, working it `changes:request`, on every site it touches.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, Field, model_validator
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from server import changes as ch
from server import paramcheck, runs
from server.api.authn import Principal, principal
from server.api.routing import ApiRouter, body, json_response, query
from server.context import services
from server.itsm.runs import TIER_PERMISSION, tier_of
from server.store import people, tickets
from server.store.models import Agent, Change, ChangeApproval, ChangeEvent, JobItem, Site, utcnow
from shared.errors import Conflict, Forbidden, Invalid, NotFound
from shared.numbers import FiniteFloat

routes = ApiRouter("changes")


class ActionSpec(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="a catalog entry, or `exec`")
    params: dict[str, Any] = Field(default_factory=dict)


class ChangeTarget(BaseModel):
    sites: list[str] | None = Field(None, max_length=500, description="site names")
    tags: list[str] | None = Field(None, description="agents carrying all these tags")
    agent_ids: list[str] | None = Field(None, max_length=10000)

    @model_validator(mode="after")
    def _something(self) -> ChangeTarget:
        if not (self.sites or self.tags or self.agent_ids):
            raise ValueError("name sites, tags or agent_ids")
        return self


class ChangeRequest(BaseModel):
    title: str = Field(min_length=1, max_length=300)
    description: str = Field("", max_length=20000)
    risk: Literal["low", "medium", "high"]
    plan: str = Field("", max_length=20000)
    backout_plan: str = Field("", max_length=20000)
    action: ActionSpec
    backout_action: ActionSpec | None = None
    target: ChangeTarget
    pilot_size: int = Field(1, ge=1, le=10000, description="machines in the pilot stage")
    pilot_agent_ids: list[str] | None = Field(
        None, max_length=1000, description="the pilot machines, instead of pilot_size"
    )
    gate_minutes: FiniteFloat = Field(
        15.0, ge=0, le=7 * 1440, description="health gate after the pilot, minutes"
    )
    gate_seconds: FiniteFloat | None = Field(
        None, ge=0, le=7 * 86400, description="the gate in seconds (overrides gate_minutes)"
    )
    failure_threshold: FiniteFloat = Field(
        0.0, ge=0, le=100, description="halt when failed items exceed this % of a stage"
    )
    batch_size: int | None = Field(
        None, ge=1, le=100000, description="run the rest in batches of this many"
    )
    timeout: FiniteFloat | None = Field(None, gt=0, le=runs.MAX_TIMEOUT)
    approvals_required: int = Field(1, ge=1, le=10)
    planned_start: AwareDatetime | None = Field(None, description="RFC 3339, with offset")


class Decision(BaseModel):
    comment: str = Field("", max_length=5000)


class Refusal(BaseModel):
    comment: str = Field(min_length=1, max_length=5000, description="why it is refused")


class Cancel(BaseModel):
    reason: str = Field("", max_length=5000)


class Review(BaseModel):
    outcome: Literal["successful", "failed", "rolled_back"]
    comment: str = Field("", max_length=20000)
    run_backout: bool = Field(
        False, description="with rolled_back: run the backout action where the change ran"
    )


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


class ChangeList(BaseModel):
    items: list[ChangeSummary]


class ChangeQuery(BaseModel):
    state: str | None = Field(None, description="only changes in this state")
    upcoming: bool = Field(
        False, description="only changes not yet done (requested, approved, in progress)"
    )
    agent: str | None = Field(None, description="only changes touching this agent")
    limit: int = Field(100, ge=1, le=500)


# --- helpers --------------------------------------------------------------------------


def _visible(who: Principal, change: Change) -> bool:
    scope = who.sites("changes:read")
    return scope is None or bool(scope & set(change.site_ids))


def _require_all(who: Principal, permission: str, change: Change, what: str) -> None:
    denied = [s for s in change.site_ids if not who.allowed(permission, s)]
    if denied:
        raise Forbidden(
            f"{what} needs {permission} on every site the change touches",
            fields={"target": f"{len(denied)} site(s) beyond your rights"},
        )


async def _load(session: AsyncSession, who: Principal, ref: str, lock: bool = False) -> Change:
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


def _state_is(change: Change, *states: str, doing: str) -> None:
    if change.state not in states:
        raise Conflict(
            f"{ch.label(change)} is {change.state}; {doing} needs it " + " or ".join(states),
            fields={"state": change.state},
        )


async def _resolve(
    session: AsyncSession, who: Principal, target: ChangeTarget
) -> list[tuple[str, str, str, str]]:
    """The machines a change touches: (agent id, site id, hostname, site name)."""
    scope = who.sites("agents:read")
    stmt = (
        select(Agent.id, Agent.site_id, Agent.hostname, Agent.tags, Site.name)
        .join(Site, Site.id == Agent.site_id)
        .where(Agent.revoked_at.is_(None))
    )
    if scope is not None:
        stmt = stmt.where(Agent.site_id.in_(scope))
    if target.sites:
        ids: list[str] = []
        for name in target.sites:
            site = await people.site_by_name(session, name)
            if site is None or (scope is not None and site.id not in scope):
                raise NotFound("site not found", fields={"target.sites": f"no site {name!r}"})
            ids.append(site.id)
        stmt = stmt.where(Agent.site_id.in_(ids))
    rows = (await session.execute(stmt.order_by(Site.name, Agent.hostname))).all()
    if target.agent_ids is not None:
        wanted = set(target.agent_ids)
        rows = [r for r in rows if r.id in wanted]
        missing = wanted - {r.id for r in rows}
        if missing:
            raise NotFound(
                "agent not found", fields={"target.agent_ids": ", ".join(sorted(missing)[:10])}
            )
    if target.tags:
        need = set(target.tags)
        rows = [r for r in rows if need <= set(r.tags or [])]
    if not rows:
        raise Invalid("no agents match the target", fields={"target": "matches no agent"})
    return [(r.id, r.site_id, r.hostname, r.name) for r in rows]


async def _check_action(
    session: AsyncSession,
    who: Principal,
    spec: ActionSpec,
    agent_ids: list[str],
    site_ids: set[str],
    field: str,
) -> str:
    """The action's tier, after checking it is offered, its parameters, and
    that the caller may run it on every site; 4xx naming `field` if not."""
    advertised: list[Any] | None = None
    for start in range(0, len(agent_ids), 100):
        rows = await session.execute(
            select(Agent.id, Agent.catalog).where(Agent.id.in_(agent_ids[start : start + 100]))
        )
        for row in rows:
            if tier_of(spec.name, row.catalog):
                advertised = row.catalog or []
                break
        if advertised is not None:
            break
    if advertised is None:
        raise Invalid(
            f"no targeted agent offers {spec.name!r}",
            fields={f"{field}.name": "not in the targeted agents' catalogs"},
        )
    tier = tier_of(spec.name, advertised)
    assert tier is not None
    permission = TIER_PERMISSION[tier]
    denied = [s for s in site_ids if not who.allowed(permission, s)]
    if denied:
        raise Forbidden(
            f"this {tier} needs {permission} on every targeted site",
            fields={"target": f"{len(denied)} site(s) beyond your rights"},
        )
    try:
        await paramcheck.validate_params(runs.schema_in(advertised, spec.name), spec.params)
    except Invalid as exc:
        raise Invalid(
            exc.message, fields={f"{field}.{k}": v for k, v in (exc.fields or {}).items()}
        ) from exc
    return tier


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
    return ChangeOut(
        id=change.id,
        number=ch.label(change),
        title=change.title,
        description=change.description,
        risk=change.risk,
        plan=change.plan,
        backout_plan=change.backout_plan,
        action={"name": change.action, "params": change.params, "tier": change.tier},
        backout_action=(
            {
                "name": change.backout_action,
                "params": change.backout_params or {},
                "tier": change.backout_tier,
            }
            if change.backout_action
            else None
        ),
        target=change.target,
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
        pilot_size=change.pilot_size,
        gate_seconds=change.gate_seconds,
        failure_threshold=change.failure_threshold,
        batch_size=change.batch_size,
        approvals_required=change.approvals_required,
        approvals=[
            ApprovalOut(approver=a.approver_name, decision=a.decision, comment=a.comment, at=a.at)
            for a in approvals
        ],
        planned_start=change.planned_start,
        state=change.state,
        stage=change.stage,
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
        halted=change.halted,
        halt_reason=change.halt_reason,
        outcome=change.outcome,
        review_comment=change.review_comment,
        created_at=change.created_at,
        updated_at=change.updated_at,
        approved_at=change.approved_at,
        started_at=change.started_at,
        finished_at=change.finished_at,
        closed_at=change.closed_at,
        history=[
            EventOut(at=e.at, actor=e.actor_name, kind=e.kind, body=e.body, data=e.data)
            for e in events
        ],
    )


async def _answer(request: web.Request, change_id: str, status: int = 200) -> web.Response:
    who = principal(request)
    async with services(request).sessions() as session:
        change = await session.get(Change, change_id)
        assert change is not None
        out = await change_out(session, who, change)
    return json_response(out, status=status)


# --- routes ---------------------------------------------------------------------------


async def create(session: AsyncSession, who: Principal, req: ChangeRequest) -> Change:
    """Validate and store a requested change (the console's form uses it too)."""
    if not who.holds("changes:request"):
        raise Forbidden("requesting a change needs changes:request")
    found = await _resolve(session, who, req.target)
    site_ids = {f[1] for f in found}
    denied = [s for s in site_ids if not who.allowed("changes:request", s)]
    if denied:
        raise Forbidden(
            "requesting a change needs changes:request on every targeted site",
            fields={"target": f"{len(denied)} site(s) beyond your rights"},
        )
    agent_ids = [f[0] for f in found]
    tier = await _check_action(session, who, req.action, agent_ids, site_ids, "action")
    backout_tier = None
    if req.backout_action is not None:
        backout_tier = await _check_action(
            session, who, req.backout_action, agent_ids, site_ids, "backout_action"
        )
    if req.pilot_agent_ids:
        outside = set(req.pilot_agent_ids) - set(agent_ids)
        if outside:
            raise Invalid(
                "pilot machines must be among the targets",
                fields={"pilot_agent_ids": ", ".join(sorted(outside)[:10])},
            )
    change = Change(
        number=await tickets.next_number(session, "change"),
        title=req.title,
        description=req.description,
        risk=req.risk,
        plan=req.plan,
        backout_plan=req.backout_plan,
        action=req.action.name,
        params=req.action.params,
        tier=tier,
        backout_action=req.backout_action.name if req.backout_action else None,
        backout_params=req.backout_action.params if req.backout_action else None,
        backout_tier=backout_tier,
        target=req.target.model_dump(exclude_none=True),
        agents=[{"id": f[0], "site_id": f[1], "hostname": f[2]} for f in found],
        site_ids=sorted(site_ids),
        pilot_size=req.pilot_size,
        pilot_agent_ids=list(dict.fromkeys(req.pilot_agent_ids or [])),
        gate_seconds=req.gate_seconds if req.gate_seconds is not None else req.gate_minutes * 60,
        failure_threshold=req.failure_threshold,
        batch_size=req.batch_size,
        timeout=min(req.timeout or runs.DEFAULT_TIMEOUT, runs.MAX_TIMEOUT),
        approvals_required=req.approvals_required,
        planned_start=req.planned_start,
        state="requested",
        requester_id=who.user_id,
        requester_name=who.username,
    )
    session.add(change)
    await session.flush()
    ch.add_event(session, change, who.username, "requested", req.title, {"risk": req.risk})
    await ch.audit(
        session,
        who.actor(),
        change,
        "change.request",
        {
            "title": req.title,
            "risk": req.risk,
            "action": req.action.name,
            "tier": tier,
            "agents": len(found),
        },
    )
    return change


@routes.route(
    "POST",
    "/api/v1/changes",
    permission="changes:request",
    errors=(404,),
    body=ChangeRequest,
    response=ChangeOut,
    status=201,
    summary="Request a change: what it runs, where, its plan and backout; it waits for approval",
)
async def create_change(request: web.Request) -> web.Response:
    who = principal(request)
    req = body(request, ChangeRequest)
    async with services(request).sessions.begin() as session:
        change = await create(session, who, req)
    return await _answer(request, change.id, status=201)


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
        ChangeSummary(
            id=c.id,
            number=ch.label(c),
            title=c.title,
            risk=c.risk,
            state=c.state,
            stage=c.stage,
            requester=c.requester_name,
            sites=sorted(names.get(s, s) for s in c.site_ids if scope is None or s in scope),
            agent_count=len(c.agents),
            planned_start=c.planned_start,
            created_at=c.created_at,
        )
        for c in found[: q.limit]
    ]


@routes.route(
    "GET",
    "/api/v1/changes",
    permission="changes:read",
    query=ChangeQuery,
    response=ChangeList,
    summary="Changes touching your sites; `upcoming=true` for those not yet done "
    "(a site's view of planned work on its machines)",
)
async def list_changes(request: web.Request) -> web.Response:
    q = query(request, ChangeQuery)
    if q.state is not None and q.state not in ch.STATES:
        raise Invalid("unknown state", fields={"state": "one of " + ", ".join(ch.STATES)})
    async with services(request).sessions() as session:
        items = await visible_changes(session, principal(request), q)
    return json_response(ChangeList(items=items))


@routes.route(
    "GET",
    "/api/v1/changes/{change_id}",
    permission="changes:read",
    response=ChangeOut,
    summary="A change (by id or CHG-N): plan, approvals, stages with job progress, history",
)
async def get_change(request: web.Request) -> web.Response:
    who = principal(request)
    async with services(request).sessions() as session:
        change = await _load(session, who, request.match_info["change_id"])
        out = await change_out(session, who, change)
    return json_response(out)


async def decide(
    session: AsyncSession, who: Principal, ref: str, decision: str, comment: str
) -> Change:
    change = await _load(session, who, ref, lock=True)
    _require_all(who, "changes:approve", change, "deciding on a change")
    _state_is(change, "requested", doing=f"to {decision} it")
    if change.requester_id == who.user_id:
        raise Forbidden(
            f"you requested {ch.label(change)}: another approver must decide on it",
            fields={"approver": "the requester cannot decide on their own change"},
            code="own_change",
        )
    prior = await session.scalar(
        select(ChangeApproval).where(
            ChangeApproval.change_id == change.id, ChangeApproval.approver_id == who.user_id
        )
    )
    if prior is not None:
        raise Conflict(
            f"you already decided on {ch.label(change)} ({prior.decision})",
            fields={"approver": "one decision per approver"},
        )
    session.add(
        ChangeApproval(
            change_id=change.id,
            approver_id=who.user_id,
            approver_name=who.username,
            decision=decision,
            comment=comment,
        )
    )
    await session.flush()
    now = utcnow()
    change.updated_at = now
    if decision == "reject":
        change.state = "rejected"
        change.closed_at = now
        ch.add_event(session, change, who.username, "rejected", comment)
        await ch.audit(session, who.actor(), change, "change.reject", {"comment": comment})
        return change
    approvals = len(
        (
            await session.scalars(
                select(ChangeApproval.id).where(
                    ChangeApproval.change_id == change.id, ChangeApproval.decision == "approve"
                )
            )
        ).all()
    )
    ch.add_event(
        session,
        change,
        who.username,
        "approval",
        comment,
        {"approvals": approvals, "required": change.approvals_required},
    )
    if approvals >= change.approvals_required:
        change.state = "approved"
        change.approved_at = now
        ch.add_event(session, change, None, "state", "approved")
    await ch.audit(
        session,
        who.actor(),
        change,
        "change.approve",
        {"comment": comment, "approvals": approvals, "required": change.approvals_required},
    )
    return change


@routes.route(
    "POST",
    "/api/v1/changes/{change_id}/approve",
    errors=(409,),
    permission="changes:approve",
    body=Decision,
    response=ChangeOut,
    summary="Approve a requested change (not your own; 409 if not requested or already "
    "decided); enough approvals make it approved",
)
async def approve_change(request: web.Request) -> web.Response:
    req = body(request, Decision)
    async with services(request).sessions.begin() as session:
        change = await decide(
            session, principal(request), request.match_info["change_id"], "approve", req.comment
        )
    return await _answer(request, change.id)


@routes.route(
    "POST",
    "/api/v1/changes/{change_id}/reject",
    errors=(409,),
    permission="changes:approve",
    body=Refusal,
    response=ChangeOut,
    summary="Reject a requested change with a reason (not your own): one refusal rejects it",
)
async def reject_change(request: web.Request) -> web.Response:
    req = body(request, Refusal)
    async with services(request).sessions.begin() as session:
        change = await decide(
            session, principal(request), request.match_info["change_id"], "reject", req.comment
        )
    return await _answer(request, change.id)


async def start(
    session: AsyncSession, svc: Any, who: Principal, ref: str
) -> tuple[Change, list[int]]:
    change = await _load(session, who, ref, lock=True)
    _require_all(who, "changes:request", change, "starting a change")
    _require_all(who, TIER_PERMISSION[change.tier], change, f"running this {change.tier}")
    _state_is(change, "approved", doing="starting it")
    now = utcnow()
    change.state = "in_progress"
    change.stage = "pilot"
    change.started_by = who.user_id
    change.started_by_name = who.username
    change.started_at = change.pilot_started_at = change.updated_at = now
    connected = {a["id"] for a in change.agents if svc.gateway.registry.get(a["id"])}
    change.pilot_agent_ids = ch.choose_pilot(change, connected)
    pilot = await ch.live_agents(session, change, change.pilot_agent_ids)
    if not pilot:
        raise Conflict(
            "every pilot machine has been revoked", fields={"pilot_agent_ids": "none left"}
        )
    ch.add_event(session, change, who.username, "state", "started")
    await ch.audit(session, who.actor(), change, "change.start", {"pilot": [a for a, _ in pilot]})
    item_ids = await ch.open_stage(session, change, "pilot", pilot)
    return change, item_ids


@routes.route(
    "POST",
    "/api/v1/changes/{change_id}/start",
    errors=(409,),
    permission="changes:request",
    response=ChangeOut,
    summary="Start an approved change: the pilot job runs now, the rest after the health gate "
    "(needs the run permission of its action on every site it touches)",
)
async def start_change(request: web.Request) -> web.Response:
    svc = services(request)
    async with svc.sessions.begin() as session:
        change, item_ids = await start(
            session, svc, principal(request), request.match_info["change_id"]
        )
    svc.jobs.start(item_ids)
    svc.changes.wake()
    return await _answer(request, change.id)


async def cancel(
    session: AsyncSession, svc: Any, who: Principal, ref: str, reason: str
) -> tuple[Change, Callable[[], None]]:
    change = await _load(session, who, ref, lock=True)
    _require_all(who, "changes:request", change, "cancelling a change")
    _state_is(change, "requested", "approved", "in_progress", doing="cancelling it")
    announce: Callable[[], None] = lambda: None  # noqa: E731
    if change.state == "in_progress":
        if change.jobs and change.stage != "gate":
            _, announce = await svc.jobs.cancel_in(session, change.jobs[-1]["job_id"])
        await ch.halt(
            session,
            change,
            f"cancelled by {who.username}" + (f": {reason}" if reason else ""),
        )
    else:
        change.state = "cancelled"
        change.closed_at = change.updated_at = utcnow()
        ch.add_event(session, change, who.username, "cancelled", reason)
    await ch.audit(session, who.actor(), change, "change.cancel", {"reason": reason})
    return change, announce


@routes.route(
    "POST",
    "/api/v1/changes/{change_id}/cancel",
    errors=(409,),
    permission="changes:request",
    body=Cancel,
    response=ChangeOut,
    summary="Cancel a change: before it runs it is cancelled; while it runs it halts "
    "(queued items cancelled) and goes to review",
)
async def cancel_change(request: web.Request) -> web.Response:
    svc = services(request)
    req = body(request, Cancel)
    async with svc.sessions.begin() as session:
        change, announce = await cancel(
            session, svc, principal(request), request.match_info["change_id"], req.reason
        )
    announce()
    return await _answer(request, change.id)


async def review(
    session: AsyncSession, who: Principal, ref: str, req: Review
) -> tuple[Change, list[int]]:
    change = await _load(session, who, ref, lock=True)
    _require_all(who, "changes:request", change, "reviewing a change")
    _state_is(change, "review", doing="closing the review")
    if req.outcome == "successful" and change.halted:
        raise Conflict(
            f"{ch.label(change)} was halted ({change.halt_reason}); it cannot be successful",
            fields={"outcome": "failed or rolled_back"},
        )
    item_ids: list[int] = []
    if req.run_backout:
        if req.outcome != "rolled_back":
            raise Invalid(
                "the backout runs only with outcome rolled_back",
                fields={"run_backout": "only with rolled_back"},
            )
        if not change.backout_action or change.backout_tier is None:
            raise Invalid(
                f"{ch.label(change)} has no backout action",
                fields={"run_backout": "no backout action"},
            )
        _require_all(who, TIER_PERMISSION[change.backout_tier], change, "running the backout")
        job_ids = [s["job_id"] for s in change.jobs]
        ran = set(
            await session.scalars(
                select(JobItem.agent_id).where(
                    JobItem.job_id.in_(job_ids),
                    JobItem.status.not_in(("queued", "cancelled", "expired")),
                )
            )
        )
        agents = await ch.live_agents(
            session, change, [a["id"] for a in change.agents if a["id"] in ran]
        )
        if agents:
            change.started_by = who.user_id
            change.started_by_name = who.username
            item_ids = await ch.open_stage(session, change, "backout", agents)
    now = utcnow()
    change.state = req.outcome
    change.outcome = req.outcome
    change.review_comment = req.comment
    change.closed_at = change.updated_at = now
    ch.add_event(session, change, who.username, "review", req.comment, {"outcome": req.outcome})
    await ch.audit(
        session,
        who.actor(),
        change,
        "change.review",
        {"outcome": req.outcome, "comment": req.comment, "backout_items": len(item_ids)},
    )
    return change, item_ids


@routes.route(
    "POST",
    "/api/v1/changes/{change_id}/review",
    errors=(409,),
    permission="changes:request",
    body=Review,
    response=ChangeOut,
    summary="Close a change's review as successful, failed or rolled_back (optionally "
    "running the backout action where it ran)",
)
async def review_change(request: web.Request) -> web.Response:
    svc = services(request)
    req = body(request, Review)
    async with svc.sessions.begin() as session:
        change, item_ids = await review(
            session, principal(request), request.match_info["change_id"], req
        )
    svc.jobs.start(item_ids)
    return await _answer(request, change.id)
