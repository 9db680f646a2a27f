"""Storage on both databases: health reports are stored once per (agent, seq)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select

from agent.sampler import Sampler
from server.store import fleet, people
from server.store.db import make_engine, migrate, sessionmaker
from server.store.models import Agent, HealthRecord
from shared import protocol as p


async def test_store_health_counts_new_reports_and_skips_duplicates(db_url):
    """A batch stores each (agent, seq) once; re-sent frames are skipped and not counted."""
    engine = make_engine(db_url)
    await migrate(engine)
    sessions = sessionmaker(engine)
    report = Sampler().sample()
    async with sessions.begin() as session:
        site, _ = await people.get_or_create_site(session, "s")
        agent = Agent(site_id=site.id, hostname="h", public_key="k", key_fingerprint="fp")
        session.add(agent)
    frames = [
        fleet.Ingest(
            agent.id, p.Health(seq=n, sampled_at=datetime.now(UTC), spool_dropped=0, report=report)
        )
        for n in (1, 2, 3)
    ]
    try:
        async with sessions.begin() as session:
            assert await fleet.store_health(session, frames) == 3
        async with sessions.begin() as session:
            assert await fleet.store_health(session, [*frames[1:], *frames]) == 0
        async with sessions() as session:
            stored = await session.scalar(select(func.count()).select_from(HealthRecord))
            latest = await session.get(Agent, agent.id)
        assert stored == 3
        assert latest is not None and latest.latest_seq == 3 and latest.cpu_percent is not None
    finally:
        await engine.dispose()
