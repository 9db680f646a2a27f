"""The knowledge base's pure rules (states, search words, tags), the
deflection KPI on fixed data, and the migration down and up again on both
databases."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic import command
from sqlalchemy import inspect

from server.itsm import kb, kpi
from server.store.db import _alembic_config, make_engine, migrate


def test_state_machine_names_what_is_allowed():
    assert kb.transition("draft", "submit") == ("review", "kb:write")
    assert kb.transition("review", "publish") == ("published", "kb:publish")
    assert kb.transition("draft", "publish") == ("published", "kb:publish")
    assert kb.transition("archived", "restore") == ("draft", "kb:publish")
    with pytest.raises(kb.IllegalTransition) as caught:
        kb.transition("published", "submit")
    assert caught.value.allowed == ["archive"]
    assert kb.allowed_actions("archived") == ["restore"]
    assert kb.allowed_actions("review") == ["return", "publish", "archive"]


def test_search_words_drop_syntax_stop_words_and_repeats():
    assert kb.terms('The printer "prints" NOT -blank* (again) printer') == [
        "printer",
        "prints",
        "blank",
        "again",
    ]
    assert kb.terms("영수증 프린터가 안 돼요") == ["영수증", "프린터가", "안", "돼요"]
    assert kb.terms("'; drop table x; --") == ["drop", "table", "x"]
    assert kb.terms("the of my") == [] and kb.terms("__ _ ___x") == ["___x"]
    assert len(kb.terms(" ".join(f"w{i}" for i in range(40)))) == kb.MAX_TERMS


def test_tags_and_numbers():
    assert kb.clean_tags(["Printer", "till", "printer"]) == ["printer", "till"]
    with pytest.raises(ValueError, match="two words"):
        kb.clean_tags(["two words"])
    assert kb.tags_list(kb.tags_text(["a", "b"])) == ["a", "b"] and kb.tags_text([]) == ""
    assert kb.parse_number("kb-12") == 12 and kb.parse_number("FL-12") is None


def _fact(n: int, **kw: object) -> kpi.Fact:
    base: dict[str, object] = {
        "id": f"t{n}",
        "site": "s",
        "priority": "P3",
        "assignee": None,
        "created_at": datetime(2026, 11, 2, 9, tzinfo=UTC),
    }
    base.update(kw)
    return kpi.Fact(**base)  # type: ignore[arg-type]


def test_deflection_rate_on_fixed_data():
    """2 self-served of 4 requests raised by people (the alert ticket does not
    count); self-served ones are left out of the other measures."""
    now = datetime(2026, 11, 2, 9, tzinfo=UTC)
    facts = [
        _fact(1, source="help", resolution_code="self_served", resolved_at=now, status="closed"),
        _fact(2, source="console", resolution_code="self_served", resolved_at=now),
        _fact(3, source="help"),
        _fact(4, source="api", resolved_at=now, tier_resolved="hq"),
        _fact(5, source="alert"),
    ]
    got = kpi.compute(facts)
    assert got["self_served"] == 2 and got["deflection_rate"] == 0.5
    assert got["tickets"] == 3 and got["resolved"] == 1
    assert kpi.compute([_fact(1, source="alert")])["deflection_rate"] is None


async def test_migration_goes_down_and_up_again(db_url):
    """0005 on a fresh database, down to 0004 (tables, triggers, index gone)
    and up again; search works after the round trip."""
    engine = make_engine(db_url)
    try:
        await migrate(engine)

        def tables(conn: object) -> set[str]:
            return set(inspect(conn).get_table_names())  # type: ignore[arg-type]

        async with engine.connect() as conn:
            assert {"kb_articles", "kb_versions", "kb_links", "kb_votes"} <= await conn.run_sync(
                tables
            )
        async with engine.begin() as conn:
            await conn.run_sync(lambda s: command.downgrade(_alembic_config(s), "0004"))
        async with engine.connect() as conn:
            left = await conn.run_sync(tables)
            assert not {t for t in left if t.startswith("kb_")}
        await migrate(engine)
        from server.store import kb as store
        from server.store.db import sessionmaker
        from server.store.models import KbArticle

        async with sessionmaker(engine).begin() as session:
            session.add(
                KbArticle(
                    number=1,
                    title="Printer jams",
                    tags="",
                    visibility="public",
                    state="published",
                    version=1,
                    author_name="t",
                    views=0,
                    symptom="",
                    cause="",
                    resolution="",
                )
            )
        async with sessionmaker(engine)() as session:
            viewer = store.Viewer(True, None, True, None, True)
            hits = await store.search(session, viewer, "jammed printers")
            assert [h.article.number for h in hits] == [1]
    finally:
        await engine.dispose()
