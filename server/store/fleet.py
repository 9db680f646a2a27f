"""Agents, enrollment tokens and health reports in the database."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from server.store.models import Agent, EnrollToken, HealthRecord, Site, utcnow
from shared import protocol as p


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


# --- enrollment tokens -----------------------------------------------------------


async def create_enroll_token(
    session: AsyncSession,
    *,
    site_id: str,
    secret_hash: str,
    uses: int,
    expires_at: datetime,
    created_by: str,
) -> EnrollToken:
    token = EnrollToken(
        site_id=site_id,
        secret_hash=secret_hash,
        uses_max=uses,
        expires_at=expires_at,
        created_by=created_by,
    )
    session.add(token)
    await session.flush()
    return token


async def consume_enroll_token(session: AsyncSession, secret_hash: str) -> EnrollToken | str:
    """Use the token once if it is valid; else a reason: unknown, expired,
    used_up or revoked. Atomic: two agents racing for the last use cannot
    both win."""
    now = utcnow()
    res = await session.execute(
        update(EnrollToken)
        .where(
            EnrollToken.secret_hash == secret_hash,
            EnrollToken.uses < EnrollToken.uses_max,
            EnrollToken.expires_at > now,
            EnrollToken.revoked_at.is_(None),
        )
        .values(uses=EnrollToken.uses + 1)
        .returning(EnrollToken.id)
    )
    token_id = res.scalar_one_or_none()
    token = await session.scalar(select(EnrollToken).where(EnrollToken.secret_hash == secret_hash))
    if token is None:
        return "unknown"
    if token_id is not None:
        await session.refresh(token)
        return token
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at <= now:
        return "expired"
    return "used_up"


# --- agents ------------------------------------------------------------------------


async def agent_by_fingerprint(session: AsyncSession, fingerprint: str) -> Agent | None:
    return await session.scalar(select(Agent).where(Agent.key_fingerprint == fingerprint))


async def active_keys(session: AsyncSession) -> dict[str, str]:
    """fingerprint -> agent id for every agent that is not revoked."""
    rows = await session.execute(
        select(Agent.key_fingerprint, Agent.id).where(Agent.revoked_at.is_(None))
    )
    return {row[0]: row[1] for row in rows}


async def list_agents(
    session: AsyncSession,
    site_ids: frozenset[str] | None,
    *,
    site_id: str | None = None,
    tag: str | None = None,
) -> Sequence[tuple[Agent, str]]:
    stmt = select(Agent, Site.name).join(Site, Site.id == Agent.site_id)
    if site_ids is not None:
        stmt = stmt.where(Agent.site_id.in_(site_ids))
    if site_id is not None:
        stmt = stmt.where(Agent.site_id == site_id)
    rows = [(a, n) for a, n in (await session.execute(stmt.order_by(Site.name, Agent.hostname)))]
    if tag is not None:
        rows = [(a, n) for a, n in rows if tag in (a.tags or [])]
    return rows


async def get_agent(session: AsyncSession, agent_id: str) -> tuple[Agent, str] | None:
    row = (
        await session.execute(
            select(Agent, Site.name)
            .join(Site, Site.id == Agent.site_id)
            .where(Agent.id == agent_id)
        )
    ).one_or_none()
    return (row[0], row[1]) if row else None


async def set_online(session: AsyncSession, agent_id: str, node: str) -> None:
    now = utcnow()
    await session.execute(
        update(Agent)
        .where(Agent.id == agent_id)
        .values(online=True, hq_node=node, connected_at=now, last_seen=now)
    )


async def set_offline(session: AsyncSession, agent_id: str, node: str) -> None:
    """Offline, unless another HQ replica holds the agent by now."""
    await session.execute(
        update(Agent)
        .where(Agent.id == agent_id, Agent.hq_node == node)
        .values(online=False, last_seen=utcnow())
    )


async def mark_node_offline(session: AsyncSession, node: str) -> int:
    """At start-up: nothing this replica held before is still connected."""
    res = await session.execute(
        update(Agent).where(Agent.hq_node == node, Agent.online.is_(True)).values(online=False)
    )
    return _rowcount(res)


async def record_hello(session: AsyncSession, agent_id: str, hello: p.Hello) -> None:
    await session.execute(
        update(Agent)
        .where(Agent.id == agent_id)
        .values(
            version=hello.version,
            hostname=hello.facts.hostname,
            facts=hello.facts.model_dump(mode="json"),
            catalog=[entry.model_dump(mode="json") for entry in hello.catalog],
            policy=hello.policy.model_dump(mode="json") if hello.policy else None,
            spool_dropped=func.max(Agent.spool_dropped, hello.spool_dropped)
            if _dialect(session) == "sqlite"
            else func.greatest(Agent.spool_dropped, hello.spool_dropped),
            last_seen=utcnow(),
        )
    )


# --- health -------------------------------------------------------------------------


@dataclass(frozen=True)
class Ingest:
    agent_id: str
    frame: p.Health

    @functools.cached_property
    def report_json(self) -> dict[str, Any]:
        """The report as stored JSON, made once for the store and the alert engine."""
        return self.frame.report.model_dump(mode="json", by_alias=True)


def _insert(session: AsyncSession) -> Any:
    return sqlite_insert if _dialect(session) == "sqlite" else pg_insert


_AGENTS = cast(Table, Agent.__table__)
_agents = _AGENTS.c

# One statement each for the whole batch (executemany), whatever its size.
_SET_LATEST = (
    update(_AGENTS)
    .where(_agents.id == bindparam("b_id"), _agents.latest_seq < bindparam("b_seq"))
    .values(
        latest_seq=bindparam("b_seq"),
        latest_sampled_at=bindparam("b_sampled_at"),
        latest_health=bindparam("b_health"),
        cpu_percent=bindparam("b_cpu"),
        memory_percent=bindparam("b_memory"),
        disk_percent=bindparam("b_disk"),
    )
)
_SET_SEEN = (
    update(_AGENTS).where(_agents.id == bindparam("b_id")).values(last_seen=bindparam("b_now"))
)
_SET_SEEN_DROPPED = _SET_SEEN.values(spool_dropped=bindparam("b_dropped"))


async def store_health(session: AsyncSession, items: Sequence[Ingest]) -> int:
    """Store a batch of reports; each (agent, seq) once. Returns how many were new."""
    if not items:
        return 0
    now = utcnow()
    reports = [it.report_json for it in items]
    rows = [
        {
            "agent_id": it.agent_id,
            "seq": it.frame.seq,
            "sampled_at": it.frame.sampled_at,
            "received_at": now,
            "report": report,
        }
        for it, report in zip(items, reports, strict=True)
    ]
    # One cached statement, many parameter sets: SQLAlchemy sends them as batched
    # multi-row INSERTs without compiling SQL for every batch; RETURNING counts
    # what was new (duplicates are skipped by ON CONFLICT DO NOTHING).
    stmt = (
        _insert(session)(HealthRecord)
        .on_conflict_do_nothing(index_elements=["agent_id", "seq"])
        .returning(HealthRecord.id)
    )
    res = await session.execute(stmt, rows)
    inserted = len(res.all())
    newest: dict[str, int] = {}
    for i, it in enumerate(items):
        best = newest.get(it.agent_id)
        if best is None or it.frame.seq > items[best].frame.seq:
            newest[it.agent_id] = i
    latest = []
    for i in newest.values():
        frame = items[i].frame
        latest.append(
            {
                "b_id": items[i].agent_id,
                "b_seq": frame.seq,
                "b_sampled_at": frame.sampled_at,
                "b_health": reports[i],
                "b_cpu": frame.report.cpu.percent,
                "b_memory": frame.report.memory.percent,
                "b_disk": frame.report.worst_disk_percent(),
            }
        )
    await session.execute(_SET_LATEST, latest)
    dropped = {it.agent_id: it.frame.spool_dropped for it in items}
    seen = [{"b_id": a, "b_now": now} for a, count in dropped.items() if not count]
    seen_dropped = [
        {"b_id": a, "b_now": now, "b_dropped": count} for a, count in dropped.items() if count
    ]
    if seen:
        await session.execute(_SET_SEEN, seen)
    if seen_dropped:
        await session.execute(_SET_SEEN_DROPPED, seen_dropped)
    return inserted


async def health_page(
    session: AsyncSession,
    agent_id: str,
    *,
    since: datetime | None,
    until: datetime | None,
    after_seq: int,
    limit: int,
) -> list[HealthRecord]:
    stmt = select(HealthRecord).where(
        HealthRecord.agent_id == agent_id, HealthRecord.seq > after_seq
    )
    if since is not None:
        stmt = stmt.where(HealthRecord.sampled_at >= since)
    if until is not None:
        stmt = stmt.where(HealthRecord.sampled_at < until)
    stmt = stmt.order_by(HealthRecord.seq).limit(limit)
    return list((await session.scalars(stmt)).all())


async def prune_health(session: AsyncSession, before: datetime, batch: int = 5000) -> int:
    ids = select(HealthRecord.id).where(HealthRecord.sampled_at < before).limit(batch)
    res = await session.execute(delete(HealthRecord).where(HealthRecord.id.in_(ids)))
    return _rowcount(res)
