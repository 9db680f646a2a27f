"""Agents: list, facts and latest health, health history, revoke."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, Field, field_validator
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.principal import Principal
from server.base.audit import Event
from server.ops import enrollment
from server.store import auditlog, fleet, people
from server.store.models import Agent
from server.web.authn import principal
from server.web.keys import DB, KEYS
from server.web.routing import ApiRouter, body, json_response, query
from shared.errors import NotFound

routes = ApiRouter("agents")


class HealthSummary(BaseModel):
    cpu_percent: float | None
    memory_percent: float | None
    disk_percent: float | None = Field(description="the fullest disk's percent used")
    sampled_at: datetime | None


class AgentItem(BaseModel):
    id: str
    site: str
    site_id: str
    hostname: str
    status: str = Field(description="online, offline or revoked")
    last_seen: datetime | None
    connected_at: datetime | None
    version: str | None
    tags: list[str]
    spool_dropped: int = Field(description="reports the agent had to drop while HQ was away")
    health: HealthSummary


class AgentList(BaseModel):
    items: list[AgentItem]
    next: str | None = None


class AgentDetail(AgentItem):
    enrolled_at: datetime
    key_fingerprint: str
    facts: dict[str, Any] | None
    latest_health: dict[str, Any] | None
    latest_seq: int


class AgentListQuery(BaseModel):
    site: str | None = None
    tag: str | None = None
    status: str | None = Field(None, pattern="^(online|offline|revoked)$")


def status_of(agent: Agent) -> str:
    if agent.revoked_at is not None:
        return "revoked"
    return "online" if agent.online else "offline"


def item(agent: Agent, site: str) -> dict[str, Any]:
    return {
        "id": agent.id,
        "site": site,
        "site_id": agent.site_id,
        "hostname": agent.hostname,
        "status": status_of(agent),
        "last_seen": agent.last_seen,
        "connected_at": agent.connected_at,
        "version": agent.version,
        "tags": agent.tags or [],
        "spool_dropped": agent.spool_dropped,
        "health": HealthSummary(
            cpu_percent=agent.cpu_percent,
            memory_percent=agent.memory_percent,
            disk_percent=agent.disk_percent,
            sampled_at=agent.latest_sampled_at,
        ),
    }


@routes.route(
    "GET",
    "/api/v1/agents",
    permission="agents:read",
    query=AgentListQuery,
    response=AgentList,
    summary="Agents visible to the caller, with a health summary",
)
async def list_agents(request: web.Request) -> web.Response:
    async with request.app[DB]() as session:
        items = await visible_agents(session, principal(request), query(request, AgentListQuery))
    return json_response(AgentList(items=items))


async def visible_agents(
    session: AsyncSession, who: Principal, q: AgentListQuery
) -> list[AgentItem]:
    """The API's and the console's agent list: the caller's scope, filtered."""
    site_id = None
    if q.site is not None:
        site = await people.site_by_name(session, q.site)
        if site is None or not who.allowed("agents:read", site.id):
            return []
        site_id = site.id
    rows = await fleet.list_agents(session, who.sites("agents:read"), site_id=site_id, tag=q.tag)
    items = [AgentItem(**item(a, s)) for a, s in rows]
    if q.status:
        items = [i for i in items if i.status == q.status]
    return items


async def load_agent(request: web.Request, permission: str) -> tuple[Agent, str]:
    async with request.app[DB]() as session:
        return await agent_for(
            session, principal(request), request.match_info["agent_id"], permission
        )


async def agent_for(
    session: AsyncSession, who: Principal, agent_id: str, permission: str
) -> tuple[Agent, str]:
    """An agent and its site's name, if the caller holds `permission` there; else 404."""
    found = await fleet.get_agent(session, agent_id)
    if found is None:
        raise NotFound("not found")
    who.require(permission, found[0].site_id)
    return found


@routes.route(
    "GET",
    "/api/v1/agents/{agent_id}",
    permission="agents:read",
    response=AgentDetail,
    summary="One agent: facts and latest full health report",
)
async def get_agent(request: web.Request) -> web.Response:
    agent, site = await load_agent(request, "agents:read")
    who = principal(request)
    health = agent.latest_health if who.allowed("health:read", agent.site_id) else None
    return json_response(
        AgentDetail(
            **item(agent, site),
            enrolled_at=agent.enrolled_at,
            key_fingerprint=agent.key_fingerprint,
            facts=agent.facts,
            latest_health=health,
            latest_seq=agent.latest_seq,
        )
    )


class HealthQuery(BaseModel):
    since: AwareDatetime | None = Field(None, description="reports sampled at or after (RFC 3339)")
    until: AwareDatetime | None = Field(None, description="reports sampled before (RFC 3339)")
    after: int = Field(0, ge=0, description="cursor: only reports with seq greater than this")
    limit: int = Field(500, ge=1, le=5000)


class HealthItem(BaseModel):
    seq: int
    sampled_at: datetime
    received_at: datetime
    report: dict[str, Any]


class HealthList(BaseModel):
    items: list[HealthItem]
    next: str | None = Field(None, description="pass as `after` for the next page")


@routes.route(
    "GET",
    "/api/v1/agents/{agent_id}/health",
    permission="health:read",
    query=HealthQuery,
    response=HealthList,
    summary="Stored health reports, oldest first, each with seq and sampled_at",
)
async def health(request: web.Request) -> web.Response:
    agent, _ = await load_agent(request, "health:read")
    q = query(request, HealthQuery)
    async with request.app[DB]() as session:
        rows = await fleet.health_page(
            session, agent.id, since=q.since, until=q.until, after_seq=q.after, limit=q.limit
        )
    items = [
        HealthItem(seq=r.seq, sampled_at=r.sampled_at, received_at=r.received_at, report=r.report)
        for r in rows
    ]
    nxt = str(rows[-1].seq) if len(rows) == q.limit else None
    return json_response(HealthList(items=items, next=nxt))


@routes.route(
    "POST",
    "/api/v1/agents/{agent_id}/revoke",
    permission="agents:revoke",
    response=AgentItem,
    summary="Revoke an agent: its connection drops at once and it is refused from then on",
)
async def revoke(request: web.Request) -> web.Response:
    app = request.app
    who = principal(request)
    async with app[DB].begin() as session:
        found = await fleet.get_agent(session, request.match_info["agent_id"])
        if found is None:
            raise NotFound("not found")
        who.require("agents:revoke", found[0].site_id)
        agent = await enrollment.revoke_agent(session, found[0].id, who.actor())
        site = found[1]
    app[KEYS].revoked(agent.id)
    return json_response(AgentItem(**item(agent, site)))


class TagsRequest(BaseModel):
    tags: list[str] = Field(max_length=50)

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,62}", tag):
                raise ValueError(f"invalid tag {tag!r}: letters, digits and . _ : - only")
        return sorted(set(value))


@routes.route(
    "PUT",
    "/api/v1/agents/{agent_id}/tags",
    permission="agents:enroll",
    body=TagsRequest,
    response=AgentItem,
    summary="Replace an agent's tags",
)
async def set_tags(request: web.Request) -> web.Response:
    app = request.app
    who = principal(request)
    req = body(request, TagsRequest)
    async with app[DB].begin() as session:
        found = await fleet.get_agent(session, request.match_info["agent_id"])
        if found is None:
            raise NotFound("not found")
        agent, site = found
        who.require("agents:enroll", agent.site_id)
        agent.tags = req.tags
        await auditlog.append(
            session,
            who.actor(),
            Event(
                "agent.tags",
                target_type="agent",
                target_id=agent.id,
                site_id=agent.site_id,
                details={"tags": req.tags},
            ),
        )
    return json_response(AgentItem(**item(agent, site)))
