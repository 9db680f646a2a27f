"""Machines as the caller may see them: the list with a health summary per
machine, filtered by site, tag and status, and one machine within a permission."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.principal import Principal
from server.store import fleet, people
from server.store.models import Agent
from shared.errors import NotFound


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


async def agent_for(
    session: AsyncSession, who: Principal, agent_id: str, permission: str
) -> tuple[Agent, str]:
    """An agent and its site's name, if the caller holds `permission` there; else 404."""
    found = await fleet.get_agent(session, agent_id)
    if found is None:
        raise NotFound("not found")
    who.require(permission, found[0].site_id)
    return found


def agent_with(
    permission: str,
) -> Callable[[AsyncSession, Principal, str], Awaitable[tuple[Agent, str]]]:
    """A loader (`server.web.act`): `agent_for` with `permission`."""

    async def load(session: AsyncSession, who: Principal, agent_id: str) -> tuple[Agent, str]:
        return await agent_for(session, who, agent_id, permission)

    return load
