"""Jobs: one catalog entry over many agents, with a durable queue for the
offline ones and live progress."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import select

from server.auth.principal import Principal
from server.engine import paramcheck, runs
from server.itsm.runs import TIER_PERMISSION, ticket_requirement, tier_of
from server.ops import jobs as job_store
from server.store import people
from server.store.models import Agent, Site, utcnow
from server.views.jobs import JobOut, JobSummary, job_out, recent_jobs
from server.web.act import answer, audit, unit
from server.web.authn import principal
from server.web.keys import DB, JOBS
from server.web.routing import ApiRouter, body, json_response, query
from shared.errors import Forbidden, Invalid, NotFound
from shared.numbers import FiniteFloat

routes = ApiRouter("jobs")

MAX_TTL = 7 * 86400


class Target(BaseModel):
    agent_ids: list[str] | None = Field(None, max_length=10000)
    site: str | None = None
    tags: list[str] | None = Field(None, description="agents carrying all these tags")

    @model_validator(mode="after")
    def _something(self) -> Target:
        if not (self.agent_ids or self.site or self.tags):
            raise ValueError("name agent_ids, a site or tags")
        return self


class JobRequest(BaseModel):
    target: Target
    name: str = Field(min_length=1, max_length=100)
    params: dict[str, Any] = Field(default_factory=dict)
    ticket_id: str | None = None
    ttl: int = Field(3600, ge=1, le=MAX_TTL, description="seconds queued items may wait")
    timeout: FiniteFloat | None = Field(None, gt=0, le=runs.MAX_TIMEOUT)


class JobList(BaseModel):
    items: list[JobSummary]
    next: str | None = None


@dataclass(frozen=True)
class _Targeted:
    id: str
    site_id: str


async def _targets(session: Any, who: Principal, target: Target) -> list[_Targeted]:
    """The agents a job goes to: ids and sites only (not their catalogs, facts
    and health, which a job over a whole fleet would otherwise load for each)."""
    scope = who.sites("agents:read")
    stmt = (
        select(Agent.id, Agent.site_id, Agent.tags)
        .join(Site, Site.id == Agent.site_id)
        .where(Agent.revoked_at.is_(None))
    )
    if scope is not None:
        stmt = stmt.where(Agent.site_id.in_(scope))
    if target.site:
        site = await people.site_by_name(session, target.site)
        if site is None or (scope is not None and site.id not in scope):
            raise NotFound("site not found", fields={"target.site": "no such site"})
        stmt = stmt.where(Agent.site_id == site.id)
    rows = (await session.execute(stmt.order_by(Site.name, Agent.hostname))).all()
    rows = job_store.narrow(rows, target.agent_ids, target.tags)
    return [_Targeted(r.id, r.site_id) for r in rows]


async def _advertised(session: Any, agents: list[_Targeted], name: str) -> list[Any] | None:
    """The catalog of the first targeted agent that offers `name`, read a few
    agents at a time (usually the first one does)."""
    for start in range(0, len(agents), 100):
        ids = [a.id for a in agents[start : start + 100]]
        rows = await session.execute(select(Agent.id, Agent.catalog).where(Agent.id.in_(ids)))
        catalogs = {row.id: row.catalog for row in rows}
        for agent_id in ids:
            catalog = catalogs.get(agent_id)
            if tier_of(name, catalog):
                return catalog or []
    return None


@routes.route(
    "POST",
    "/api/v1/jobs",
    errors=(404,),
    permission="diag:run",
    body=JobRequest,
    response=JobOut,
    status=201,
    summary="Run one catalog entry over many agents; offline agents' "
    "items wait until they reconnect or the TTL passes",
)
async def create_job(request: web.Request) -> web.Response:
    app = request.app
    req = body(request, JobRequest)
    async with unit(request) as (session, who):
        agents = await _targets(session, who, req.target)
        advertised = await _advertised(session, agents, req.name)
        if advertised is None:
            raise Invalid(
                f"no targeted agent offers {req.name!r}",
                fields={"name": "not in the targeted agents' catalogs"},
            )
        tier = tier_of(req.name, advertised)
        assert tier is not None
        permission = TIER_PERMISSION[tier]
        denied = [a.id for a in agents if not who.allowed(permission, a.site_id)]
        if denied:
            raise Forbidden(
                f"this {tier} needs {permission} on every targeted site",
                fields={"target": f"{len(denied)} agent(s) beyond your rights"},
            )
        await paramcheck.validate_params(runs.schema_in(advertised, req.name), req.params)
        ticket = await runs.resolve_ticket(session, who, req.ticket_id)
        for agent in agents:
            reason = ticket_requirement(tier, ticket, agent.site_id)
            if reason is not None:
                raise Invalid(reason, fields={"ticket_id": reason})
        job, item_ids = await job_store.insert(
            session,
            name=req.name,
            tier=tier,
            params=req.params,
            target=req.target.model_dump(),
            timeout=min(req.timeout or runs.DEFAULT_TIMEOUT, runs.MAX_TIMEOUT),
            ticket_id=ticket.id if ticket else None,
            created_by=who.user_id,
            created_by_name=who.username,
            expires_at=utcnow() + timedelta(seconds=req.ttl),
            agents=[(a.id, a.site_id) for a in agents],
        )
        await audit(
            session,
            who,
            "job.create",
            ("job", job.id),
            ticket_id=job.ticket_id,
            site_id=agents[0].site_id if len({a.site_id for a in agents}) == 1 else None,
            details={
                "name": req.name,
                "tier": tier,
                "params": req.params,
                "agents": len(agents),
                "ttl": req.ttl,
            },
        )
    app[JOBS].start(item_ids)
    return answer(request, await job_out(app[DB], who, job.id))


@routes.route(
    "GET",
    "/api/v1/jobs/{job_id}",
    permission="diag:run",
    response=JobOut,
    summary="A job: status, counts by item status, and every item with its result",
)
async def get_job(request: web.Request) -> web.Response:
    out = await job_out(request.app[DB], principal(request), request.match_info["job_id"])
    return web.Response(text=out.model_dump_json(), content_type="application/json")


class JobQuery(BaseModel):
    limit: int = Field(50, ge=1, le=500)


@routes.route(
    "GET",
    "/api/v1/jobs",
    permission="diag:run",
    query=JobQuery,
    response=JobList,
    summary="Recent jobs you can see",
)
async def list_jobs(request: web.Request) -> web.Response:
    q = query(request, JobQuery)
    return json_response(
        JobList(items=await recent_jobs(request.app[DB], principal(request), q.limit))
    )


@routes.route(
    "GET",
    "/api/v1/jobs/{job_id}/events",
    permission="diag:run",
    content_type="text/event-stream",
    summary="Server-sent events: every item's status as it changes, then `done`",
)
async def job_events(request: web.Request) -> web.StreamResponse:
    app = request.app
    job_id = request.match_info["job_id"]
    events = app[JOBS].subscribe(job_id)  # before the snapshot, so no event falls between
    try:
        snapshot = await job_out(request.app[DB], principal(request), job_id, with_results=False)
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await resp.prepare(request)
        visible = {i.agent_id for i in snapshot.items}

        async def send(event: str, data: dict[str, Any]) -> None:
            await resp.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

        for item in snapshot.items:
            await send("item", {"agent_id": item.agent_id, "status": item.status})
        if snapshot.status != "done":
            async for event in events:
                if event.get("done"):
                    break
                if event.get("agent_id") in visible:
                    await send("item", event)
    finally:
        await events.aclose()
    final = await job_out(request.app[DB], principal(request), job_id, with_results=False)
    await send("done", {"status": final.status, "counts": final.counts})
    await resp.write_eof()
    return resp
