"""Changes: request, approve or reject, start (staged jobs), cancel, review.

Visibility: a change is seen by callers holding `changes:read` on one of the
sites it touches (only their sites' machines are listed). Deciding needs
`changes:approve`, working it `changes:request`, on every site it touches.
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, Field, model_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.principal import Principal
from server.engine import paramcheck, runs
from server.itsm.runs import TIER_PERMISSION, tier_of
from server.ops import changes as ch
from server.ops.jobs import narrow
from server.store import people, tickets
from server.store.models import Agent, Change, Site
from server.views.changes import (
    ChangeOut,
    ChangeQuery,
    ChangeSummary,
    change_out,
    readable_change,
    visible_changes,
)
from server.web.act import act, answer, unit
from server.web.routing import ApiRouter, body, json_response, query
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


class ChangeList(BaseModel):
    items: list[ChangeSummary]


# --- helpers --------------------------------------------------------------------------


def require_all(who: Principal, permission: str, change: Change, what: str) -> None:
    denied = [s for s in change.site_ids if not who.allowed(permission, s)]
    if denied:
        raise Forbidden(
            f"{what} needs {permission} on every site the change touches",
            fields={"target": f"{len(denied)} site(s) beyond your rights"},
        )


def state_is(change: Change, *states: str, doing: str) -> None:
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
    rows = narrow(rows, target.agent_ids, target.tags)
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


async def change_answer(request: web.Request, change_id: str) -> web.Response:
    """The change as it is once the step's transaction has committed."""
    async with unit(request, write=False) as (session, who):
        change = await session.get(Change, change_id)
        assert change is not None
        return answer(request, await change_out(session, who, change))


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
    req = body(request, ChangeRequest)
    async with unit(request) as (session, who):
        change = await create(session, who, req)
    return await change_answer(request, change.id)


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
    async with unit(request) as (session, who):
        items = await visible_changes(session, who, q)
    return json_response(ChangeList(items=items))


@routes.route(
    "GET",
    "/api/v1/changes/{change_id}",
    permission="changes:read",
    response=ChangeOut,
    summary="A change (by id or CHG-N): plan, approvals, stages with job progress, history",
)
async def get_change(request: web.Request) -> web.Response:
    async with act(request, readable_change) as (session, change, who):
        return answer(request, await change_out(session, who, change))
