"""The migrations build exactly the tables the models describe, on SQLite and
PostgreSQL: a model changed without its migration (or the other way round)
fails here. Full-text search objects are the migrations' own (FTS5 tables on
SQLite, a generated tsvector column and its index on PostgreSQL) and are left
out of the comparison."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from server.store.db import make_engine, migrate
from server.store.models import Base

SEARCH_ONLY = {"ix_kb_search", "search_vector"}


def _search_object(diff: Any) -> bool:
    op = diff[0] if isinstance(diff, tuple) else diff[0][0]
    if op == "remove_table":
        return str(diff[1].name).startswith("kb_fts")
    if op == "remove_index":
        return diff[1].name in SEARCH_ONLY
    if op == "remove_column":
        return diff[3].name in SEARCH_ONLY
    return False


async def test_migrations_match_the_models(db_url: str) -> None:
    """After `alembic upgrade head`, autogenerate finds nothing to add or drop."""
    engine = make_engine(db_url)
    try:
        await migrate(engine)
        async with engine.connect() as conn:
            diffs = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
            )
    finally:
        await engine.dispose()
    drift = [d for d in diffs if not _search_object(d)]
    assert not drift, "models and migrations differ; add a migration:\n" + "\n".join(
        map(str, drift)
    )
