"""Running catalog entries and commands on agents: check, dispatch, store.

`prepare()` decides whether a caller may run `name` on an agent (tier
permission on the agent's site, parameters valid against the schema the agent
advertised, the ticket rule from `server.itsm.runs`). `execute()` dispatches
over the agent's SSH link, streams output to an optional callback, and stores
the result with its audit entry and ticket event in one transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.auth.principal import Principal
from server.base.audit import Actor, Event
from server.engine import paramcheck
from server.itsm.runs import (
    TIER_PERMISSION,
    TicketView,
    session_requirement,
    ticket_requirement,
    tier_of,
)
from server.itsm.tickets import number_text
from server.links import dispatch
from server.links.registry import Registry
from server.store import auditlog, tickets
from server.store.models import Agent, RunRecord, new_id, utcnow
from shared import protocol as p
from shared.errors import Forbidden, Invalid

log = structlog.get_logger(__name__)

MAX_STORED_OUTPUT = 1024 * 1024  # per stream
DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 3600.0

OutputSink = Callable[[p.RunOutput], Awaitable[None]]


@dataclass(frozen=True)
class Prepared:
    agent_id: str
    site_id: str
    name: str
    tier: str
    params: dict[str, Any]
    ticket: TicketView | None
    timeout: float
    actor: Actor
    user_id: str | None
    job_id: str | None = None


def schema_for(agent: Agent, name: str) -> dict[str, Any] | None:
    return schema_in(agent.catalog, name)


def schema_in(catalog: list[dict[str, Any]] | None, name: str) -> dict[str, Any] | None:
    """The parameter schema a catalog advertises for `name`."""
    for entry in catalog or []:
        if entry.get("name") == name:
            schema = entry.get("params_schema")
            return schema if isinstance(schema, dict) else None
    return None


async def resolve_ticket(
    session: AsyncSession, who: Principal | None, ref: str | None
) -> TicketView | None:
    if ref is None:
        return None
    ticket = await tickets.find(session, ref)
    if ticket is None or (who is not None and not who.allowed("tickets:read", ticket.site_id)):
        raise Invalid("unknown ticket", fields={"ticket_id": "no such ticket"})
    return TicketView(ticket.id, ticket.number, ticket.site_id, ticket.status)


async def prepare(
    session: AsyncSession,
    who: Principal,
    agent: Agent,
    name: str,
    params: dict[str, Any],
    ticket_ref: str | None,
    timeout: float | None,
    *,
    job_id: str | None = None,
) -> Prepared:
    tier = tier_of(name, agent.catalog)
    if tier is None:
        raise Invalid(
            f"this agent does not offer {name!r}",
            fields={"name": "not in the agent's catalog (GET /api/v1/agents/{id}/catalog)"},
        )
    permission = TIER_PERMISSION[tier]
    if not who.allowed(permission, agent.site_id):
        raise Forbidden(
            f"running a{'n' if tier[0] in 'ae' else ''} {tier} here needs "
            f"the {permission} permission on this site"
        )
    await paramcheck.validate_params(schema_for(agent, name), params)
    ticket = await resolve_ticket(session, who, ticket_ref)
    reason = ticket_requirement(tier, ticket, agent.site_id)
    if reason is None and ticket is not None and tier != "diagnostic":
        reason = await _session_rule(session, tier, agent, ticket, who.user_id)
    if reason is not None:
        raise Invalid(reason, fields={"ticket_id": reason})
    return Prepared(
        agent_id=agent.id,
        site_id=agent.site_id,
        name=name,
        tier=tier,
        params=params,
        ticket=ticket,
        timeout=min(timeout or DEFAULT_TIMEOUT, MAX_TIMEOUT),
        actor=who.actor(),
        user_id=who.user_id,
        job_id=job_id,
    )


async def _session_rule(
    session: AsyncSession, tier: str, agent: Agent, ticket: TicketView, user_id: str
) -> str | None:
    from sqlalchemy import select

    from server.itsm.consent import SitePolicy
    from server.store.models import RemoteSession, Site

    site = await session.get(Site, agent.site_id)
    rules = SitePolicy.from_json(site.session_policy if site else None)
    active = await session.scalar(
        select(RemoteSession.id)
        .where(
            RemoteSession.ticket_id == ticket.id,
            RemoteSession.agent_id == agent.id,
            RemoteSession.requested_by == user_id,
            RemoteSession.state == "active",
        )
        .limit(1)
    )
    return session_requirement(tier, rules.require_session_for, active is not None)


@dataclass
class _Collected:
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0})
    clipped: bool = False

    def add(self, frame: p.RunOutput) -> None:
        size = self.sizes[frame.stream]
        room = MAX_STORED_OUTPUT - size
        if room <= 0:
            self.clipped = True
            return
        data = frame.data if len(frame.data) <= room else frame.data[:room]
        self.clipped = self.clipped or len(data) < len(frame.data)
        getattr(self, frame.stream).append(data)
        self.sizes[frame.stream] = size + len(data)


class Runs:
    """Runs a prepared diagnostic, action or command on an agent over its live link."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], links: Registry) -> None:
        self._sessions = sessions
        self._links = links

    async def execute(self, prep: Prepared, sink: OutputSink | None = None) -> RunRecord:
        """Run on the agent now; store and return the result (status `offline` if
        the agent has no live link here)."""
        record = await self.perform(prep, sink)
        async with self._sessions.begin() as session:
            await store_many(session, [(record, prep)])
        return record

    async def perform(self, prep: Prepared, sink: OutputSink | None = None) -> RunRecord:
        """Run on the agent now and return the (not yet stored) result."""
        run_id = new_id("rn")
        request = p.RunRequest(
            id=run_id,
            name=prep.name,
            params=prep.params,
            timeout=prep.timeout,
            # the number (FL-N), as the machine knows its sessions' tickets: a plain
            # command where the machine requires consent must match one of them
            ticket_id=number_text(prep.ticket.number) if prep.ticket else None,
            engineer=prep.actor.name,
        )
        collected = _Collected()
        result: p.RunResult | None = None
        try:
            async for frame in dispatch.run(
                self._links, prep.agent_id, request, timeout=prep.timeout
            ):
                if isinstance(frame, p.RunOutput):
                    collected.add(frame)
                    if sink is not None:
                        await sink(frame)
                else:
                    result = frame
        except dispatch.Offline:
            result = None
        record = RunRecord(
            id=run_id,
            agent_id=prep.agent_id,
            site_id=prep.site_id,
            name=prep.name,
            tier=prep.tier,
            params=prep.params,
            requested_by=prep.user_id,
            requested_by_name=prep.actor.name,
            ticket_id=prep.ticket.id if prep.ticket else None,
            job_id=prep.job_id,
            stdout="".join(collected.stdout),
            stderr="".join(collected.stderr),
        )
        if result is None:
            record.status = "offline"
            record.reason = "the agent is not connected"
            record.started_at = record.finished_at = utcnow()
        else:
            record.status = result.status
            record.exit_code = result.exit_code
            record.truncated = result.truncated or collected.clipped
            record.data = result.data
            record.reason = result.reason
            record.started_at = result.started_at
            record.finished_at = result.finished_at
        log.info(
            "run_done",
            agent_id=prep.agent_id,
            name=prep.name,
            status=record.status,
            run_id=run_id,
            job_id=prep.job_id,
        )
        return record


def audit_event(record: RunRecord, prep: Prepared) -> tuple[Actor, Event]:
    outcome = {"ok": "success", "refused": "denied", "offline": "failure"}.get(
        record.status, "failure"
    )
    return prep.actor, Event(
        f"run.{prep.tier}",
        outcome=outcome,
        target_type="agent",
        target_id=prep.agent_id,
        site_id=prep.site_id,
        ticket_id=prep.ticket.id if prep.ticket else None,
        details={
            "name": prep.name,
            "params": prep.params,
            "status": record.status,
            "exit_code": record.exit_code,
            "run_id": record.id,
            "job_id": prep.job_id,
            "reason": record.reason,
        },
    )


async def store_many(session: AsyncSession, done: list[tuple[RunRecord, Prepared]]) -> None:
    """Store results with their audit entries and ticket events (one audit
    chain update for the whole batch)."""
    session.add_all([record for record, _ in done])
    await auditlog.append_many(session, [audit_event(record, prep) for record, prep in done])
    for record, prep in done:
        if prep.ticket is not None:
            await tickets.add_event(
                session,
                prep.ticket.id,
                prep.actor,
                "run",
                f"{prep.name} on {prep.agent_id}: {record.status}",
                internal=True,
                data={
                    "run_id": record.id,
                    "name": prep.name,
                    "agent_id": prep.agent_id,
                    "status": record.status,
                },
            )
