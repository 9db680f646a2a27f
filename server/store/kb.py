"""Knowledge-base articles in the database: lookup, who may see what, and
full-text search through one interface on both databases.

- SQLite: the FTS5 table `kb_fts` (rowid = article number, porter stemming),
  kept in step with `kb_articles` by triggers; ranked by bm25 with column
  weights, snippets by `snippet()`.
- PostgreSQL: the generated tsvector column `kb_articles.search_vector`
  (GIN index; English stemming, weights A title/tags, B symptom, C cause and
  resolution); ranked by `ts_rank_cd`, snippets by `ts_headline`.

Search text is cut into words by `server.itsm.kb.terms` on both sides, so no
query syntax reaches either database; `match="all"` wants every word,
`match="any"` one or more (ranked: the more and the better placed, the higher).
Snippets mark the matched words with « and ».
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select, and_, column, false, func, literal_column, or_, select
from sqlalchemy import table as sql_table
from sqlalchemy.ext.asyncio import AsyncSession

from server.itsm.kb import parse_number, terms
from server.store.models import KbArticle, KbLink, KbVote

MARK_START, MARK_END = "«", "»"
Match = Literal["all", "any"]

_FTS = sql_table("kb_fts", column("rowid"))
# bm25 weights per FTS column: title, tags, symptom, cause, resolution
_BM25_WEIGHTS = (10.0, 8.0, 4.0, 2.0, 2.0)
_PG_CONFIG = "'english'::regconfig"
_PG_HEADLINE = (
    f"StartSel={MARK_START}, StopSel={MARK_END}, MaxWords=24, MinWords=8, "
    'MaxFragments=2, FragmentDelimiter=" … "'
)


@dataclass(frozen=True)
class Viewer:
    """What a caller may see. `None` for a set of sites means every site."""

    read_any: bool  # kb:read on some scope: public articles
    read_sites: frozenset[str] | None  # published `site` articles of these sites
    read_internal: bool  # published internal articles (kb:read globally)
    write_sites: frozenset[str] | None  # unpublished articles of these sites
    write_global: bool  # unpublished internal and public articles

    @classmethod
    def for_site(cls, site_id: str) -> Viewer:
        """A person at a machine of one site (agent help): published public
        articles and the site's own."""
        return cls(True, frozenset({site_id}), False, frozenset(), False)


@dataclass(frozen=True)
class Hit:
    article: KbArticle
    score: float | None
    snippet: str | None


def _in(col: Any, sites: frozenset[str] | None) -> ColumnElement[bool]:
    if sites is None:
        return col.is_not(None)  # type: ignore[no-any-return]
    if not sites:
        return false()
    return col.in_(sorted(sites))  # type: ignore[no-any-return]


def visible(viewer: Viewer) -> ColumnElement[bool]:
    """The articles a viewer may read, as a WHERE condition."""
    published = [KbArticle.state == "published"]
    kinds: list[ColumnElement[bool]] = []
    if viewer.read_any:
        kinds.append(KbArticle.visibility == "public")
    if viewer.read_internal:
        kinds.append(KbArticle.visibility == "internal")
    kinds.append(and_(KbArticle.visibility == "site", _in(KbArticle.site_id, viewer.read_sites)))
    writer: list[ColumnElement[bool]] = [_in(KbArticle.site_id, viewer.write_sites)]
    if viewer.write_global:
        writer.append(KbArticle.site_id.is_(None))
    return or_(and_(*published, or_(*kinds)), or_(*writer))


def can_read(viewer: Viewer, article: KbArticle) -> bool:
    """The same rule as `visible`, for one loaded article."""
    if article.site_id is None and viewer.write_global:
        return True
    if article.site_id is not None and (
        viewer.write_sites is None or article.site_id in viewer.write_sites
    ):
        return True
    if article.state != "published":
        return False
    if article.visibility == "public":
        return viewer.read_any
    if article.visibility == "internal":
        return viewer.read_internal
    return article.site_id is not None and (
        viewer.read_sites is None or article.site_id in viewer.read_sites
    )


async def find(session: AsyncSession, ref: str) -> KbArticle | None:
    """An article by id (`kb_...`) or number (`KB-7`)."""
    number = parse_number(ref)
    if number is not None:
        return await session.scalar(select(KbArticle).where(KbArticle.number == number))
    return await session.get(KbArticle, ref.strip())


def dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def _sqlite_search(
    stmt: Select[Any], words: list[str], match: Match
) -> tuple[Select[Any], Any, Any]:
    expr = (" AND " if match == "all" else " OR ").join(
        '"' + w.replace('"', '""') + '"' for w in words
    )
    fts: Any = literal_column("kb_fts")
    score = func.bm25(fts, *_BM25_WEIGHTS)
    snippet = func.snippet(fts, -1, MARK_START, MARK_END, " … ", 16)
    stmt = stmt.join(_FTS, _FTS.c.rowid == KbArticle.number).where(fts.op("MATCH")(expr))
    # bm25: lower is better; answer higher-is-better like PostgreSQL
    return stmt, -score, snippet


def _pg_search(stmt: Select[Any], words: list[str], match: Match) -> tuple[Select[Any], Any, Any]:
    config: Any = literal_column(_PG_CONFIG)
    parts = [func.plainto_tsquery(config, w) for w in words]
    query: Any = parts[0]
    either: Any = parts[0]
    for part in parts[1:]:
        query = query.op("&&" if match == "all" else "||")(part)
        either = either.op("||")(part)
    vector: Any = literal_column("kb_articles.search_vector")
    score = func.ts_rank_cd(vector, query, 32)
    text = func.concat_ws(" ", KbArticle.symptom, KbArticle.cause, KbArticle.resolution)
    # mark every word found (an all-words query finds no fragment holding
    # them all when some are only in the title)
    snippet = func.ts_headline(config, text, either, _PG_HEADLINE)
    return stmt.where(vector.op("@@")(query)), score, snippet


async def search(
    session: AsyncSession,
    viewer: Viewer,
    text: str | None = None,
    *,
    match: Match = "all",
    states: Sequence[str] = (),
    visibility: str | None = None,
    site_id: str | None = None,
    tag: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[Hit]:
    """Articles the viewer may read, filtered; with text, ranked best first
    with a snippet, else newest change first. Text without a usable word
    finds nothing."""
    stmt: Select[Any] = select(KbArticle).where(visible(viewer))
    if states:
        stmt = stmt.where(KbArticle.state.in_(list(states)))
    if visibility:
        stmt = stmt.where(KbArticle.visibility == visibility)
    if site_id:
        stmt = stmt.where(KbArticle.site_id == site_id)
    if tag:
        stmt = stmt.where(KbArticle.tags.contains(f",{tag.lower()},", autoescape=True))
    if text is None or not text.strip():
        rows = await session.scalars(
            stmt.order_by(KbArticle.updated_at.desc(), KbArticle.number.desc())
            .limit(limit)
            .offset(offset)
        )
        return [Hit(a, None, None) for a in rows]
    words = terms(text)
    if not words:
        return []
    make = _pg_search if dialect(session) == "postgresql" else _sqlite_search
    stmt, score, snippet = make(stmt, words, match)
    stmt = stmt.add_columns(score.label("score"), snippet.label("snippet"))
    stmt = stmt.order_by(literal_column("score").desc(), KbArticle.number.desc())
    result = await session.execute(stmt.limit(limit).offset(offset))
    return [Hit(row[0], float(row[1]), str(row[2] or "")) for row in result]


async def vote_counts(session: AsyncSession, article_id: str) -> tuple[int, int]:
    """(helped, did not help)."""
    rows = await session.execute(
        select(KbVote.helped, func.count())
        .where(KbVote.article_id == article_id)
        .group_by(KbVote.helped)
    )
    counts = {bool(helped): int(n) for helped, n in rows}
    return counts.get(True, 0), counts.get(False, 0)


async def links_of(session: AsyncSession, article_id: str) -> list[KbLink]:
    return list(
        await session.scalars(
            select(KbLink).where(KbLink.article_id == article_id).order_by(KbLink.id)
        )
    )


async def articles_linked_to(session: AsyncSession, kind: str, target: str) -> list[KbArticle]:
    return list(
        await session.scalars(
            select(KbArticle)
            .join(KbLink, KbLink.article_id == KbArticle.id)
            .where(KbLink.kind == kind, KbLink.target == target)
            .order_by(KbArticle.number)
        )
    )
