"""Agents: list, facts and latest health, health history, revoke."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, Field, field_validator

from server.ops import enrollment
from server.store import fleet
from server.store.models import Agent
from server.views.agents import AgentItem, AgentListQuery, agent_with, item, visible_agents
from server.web.act import act, audit, fetch, unit
from server.web.keys import DB, KEYS
from server.web.routing import ApiRouter, body, json_response, query

routes = ApiRouter("agents")


class AgentList(BaseModel):
    items: list[AgentItem]
    next: str | None = None


class AgentDetail(AgentItem):
    enrolled_at: datetime
    key_fingerprint: str
    facts: dict[str, Any] | None
    latest_health: dict[str, Any] | None
    latest_seq: int


@routes.route(
    "GET",
    "/api/v1/agents",
    permission="agents:read",
    query=AgentListQuery,
    response=AgentList,
    summary="Agents visible to the caller, with a health summary",
)
async def list_agents(request: web.Request) -> web.Response:
    async with unit(request) as (session, who):
        items = await visible_agents(session, who, query(request, AgentListQuery))
    return json_response(AgentList(items=items))


async def load_agent(request: web.Request, permission: str) -> tuple[Agent, str]:
    """The agent in the path and its site's name, where the caller holds `permission`."""
    found, _ = await fetch(request, agent_with(permission))
    return found


@routes.route(
    "GET",
    "/api/v1/agents/{agent_id}",
    permission="agents:read",
    response=AgentDetail,
    summary="One agent: facts and latest full health report",
)
async def get_agent(request: web.Request) -> web.Response:
    (agent, site), who = await fetch(request, agent_with("agents:read"))
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
    (agent, _), _ = await fetch(request, agent_with("health:read"))
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
    async with act(request, agent_with("agents:revoke")) as (session, (found, site), who):
        agent = await enrollment.revoke_agent(session, found.id, who.actor())
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
    req = body(request, TagsRequest)
    async with act(request, agent_with("agents:enroll")) as (session, (agent, site), who):
        agent.tags = req.tags
        await audit(
            session,
            who,
            "agent.tags",
            ("agent", agent.id),
            site_id=agent.site_id,
            details={"tags": req.tags},
        )
    return json_response(AgentItem(**item(agent, site)))
