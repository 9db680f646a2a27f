"""Jobs: one catalog entry over many agents, with a durable queue for the
offline ones and live progress."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import select

from server import jobs, paramcheck, runs
from server.api.authn import Principal, principal
from server.api.routing import ApiRouter, body, json_response, query
from server.audit import Event
from server.context import services
from server.itsm.runs import TIER_PERMISSION, ticket_requirement, tier_of
from server.store import auditlog, people
from server.store.models import Agent, Job, JobItem, RunRecord, Site, utcnow
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
    svc = services(request)
    who = principal(request)
    req = body(request, JobRequest)
    async with svc.sessions.begin() as session:
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
        job, item_ids = await jobs.insert(
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
        await auditlog.append(
            session,
            who.actor(),
            Event(
                "job.create",
                target_type="job",
                target_id=job.id,
                ticket_id=job.ticket_id,
                site_id=agents[0].site_id if len({a.site_id for a in agents}) == 1 else None,
                details={
                    "name": req.name,
                    "tier": tier,
                    "params": req.params,
                    "agents": len(agents),
                    "ttl": req.ttl,
                },
            ),
        )
    svc.jobs.start(item_ids)
    return json_response(await job_out(request, job.id), status=201)


async def job_out(request: web.Request, job_id: str, with_results: bool = True) -> JobOut:
    """A job as the caller may see it: only items on its sites; 404 if none
    (unless it made the job)."""
    who = principal(request)
    scope = who.sites("agents:read")
    async with services(request).sessions() as session:
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
    return JobOut(
        id=job.id,
        name=job.name,
        tier=job.tier,
        params=job.params,
        target=job.target,
        ticket_id=job.ticket_id,
        created_by=job.created_by_name,
        created_at=job.created_at,
        expires_at=job.expires_at,
        finished_at=job.finished_at,
        status="done" if done else "running",
        counts=dict(counts),
        items=[
            JobItemOut(
                agent_id=i.agent_id,
                hostname=hosts.get(i.agent_id),
                status=i.status,
                result=runs.result_json(results[i.result_id])
                if i.result_id and i.result_id in results
                else None,
            )
            for i in visible
        ],
    )


@routes.route(
    "GET",
    "/api/v1/jobs/{job_id}",
    permission="diag:run",
    response=JobOut,
    summary="A job: status, counts by item status, and every item with its result",
)
async def get_job(request: web.Request) -> web.Response:
    out = await job_out(request, request.match_info["job_id"])
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
    return json_response(JobList(items=await recent_jobs(request, q.limit)))


async def recent_jobs(request: web.Request, limit: int) -> list[JobSummary]:
    """The newest jobs the caller can see (some of their items are in its scope)."""
    async with services(request).sessions() as session:
        ids = list(
            await session.scalars(select(Job.id).order_by(Job.created_at.desc()).limit(limit * 4))
        )
    out: list[JobSummary] = []
    for job_id in ids:
        try:
            job = await job_out(request, job_id, with_results=False)
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


@routes.route(
    "GET",
    "/api/v1/jobs/{job_id}/events",
    permission="diag:run",
    content_type="text/event-stream",
    summary="Server-sent events: every item's status as it changes, then `done`",
)
async def job_events(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    job_id = request.match_info["job_id"]
    events = svc.jobs.subscribe(job_id)  # before the snapshot, so no event falls between
    try:
        snapshot = await job_out(request, job_id, with_results=False)
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
    final = await job_out(request, job_id, with_results=False)
    await send("done", {"status": final.status, "counts": final.counts})
    await resp.write_eof()
    return resp
