"""Knowledge-base articles as the caller may see them: who reads what
(viewer, scope), the read models (article, detail with links, versions),
search and listing, and an article by id or number to read or to write."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.principal import Principal
from server.itsm import kb as rules
from server.itsm.tickets import number_text as ticket_number
from server.store import kb as store
from server.store import people
from server.store.models import Agent, KbArticle, KbLink, KbVersion, KbVote, Site, Ticket
from server.views.rows import from_row
from shared.errors import Forbidden, NotFound

Visibility = Literal["internal", "site", "public"]


def viewer(who: Principal) -> store.Viewer:
    return store.Viewer(
        read_any=who.holds("kb:read"),
        read_sites=who.sites("kb:read"),
        read_internal=who.allowed("kb:read", None),
        write_sites=who.sites("kb:write"),
        write_global=who.allowed("kb:write", None),
    )


class LinkOut(BaseModel):
    id: int
    kind: str
    target: str = Field(description="ticket id, problem reference or agent id")
    label: str = Field(description="ticket number and title, problem reference or machine name")
    created_by: str
    created_at: datetime


class ArticleOut(BaseModel):
    id: str
    number: str
    title: str
    symptom: str
    cause: str
    resolution: str
    tags: list[str]
    visibility: str
    site: str | None
    site_id: str | None
    state: str
    version: int
    author: str
    created_at: datetime
    updated_at: datetime
    published_at: datetime | None
    archived_at: datetime | None
    views: int
    helped: int = Field(description='votes "this helped"')
    not_helped: int = Field(description='votes "this did not help"')
    allowed_actions: list[str] = Field(description="state changes the caller may make now")
    can_edit: bool
    score: float | None = Field(None, description="search rank (higher is better)")
    snippet: str | None = Field(None, description="matched text, words marked with « »")


class ArticleDetail(ArticleOut):
    links: list[LinkOut]
    my_vote: bool | None = Field(description="the caller's vote: true helped, false not, null none")


class VersionOut(BaseModel):
    version: int
    title: str
    symptom: str
    cause: str
    resolution: str
    tags: list[str]
    visibility: str
    site_id: str | None
    editor: str
    note: str
    created_at: datetime
    current: bool


def allowed_for(who: Principal, article: KbArticle) -> list[str]:
    out = []
    for action in rules.allowed_actions(article.state):
        _, permission = rules.transition(article.state, action)
        if who.allowed(permission, article.site_id):
            out.append(action)
    return out


async def article_out(
    session: AsyncSession, a: KbArticle, who: Principal, hit: store.Hit | None = None
) -> ArticleOut:
    site = await session.get(Site, a.site_id) if a.site_id else None
    helped, not_helped = await store.vote_counts(session, a.id)
    return from_row(
        ArticleOut,
        a,
        number=rules.number_text(a.number),
        tags=rules.tags_list(a.tags),
        site=site.name if site else None,
        author=a.author_name,
        helped=helped,
        not_helped=not_helped,
        allowed_actions=allowed_for(who, a),
        can_edit=a.state != "archived" and who.allowed("kb:write", a.site_id),
        score=hit.score if hit else None,
        snippet=hit.snippet if hit else None,
    )


async def link_out(session: AsyncSession, who: Principal, link: KbLink) -> LinkOut | None:
    """A link, labelled, if the caller may see what it points at."""
    label = link.target
    if link.kind == "ticket":
        ticket = await session.get(Ticket, link.target)
        if ticket is None or not who.can_read_ticket(ticket.site_id, ticket.requester_id):
            return None
        label = f"{ticket_number(ticket.number)} {ticket.title}"
    elif link.kind == "machine":
        agent = await session.get(Agent, link.target)
        if agent is None or not who.allowed("agents:read", agent.site_id):
            return None
        label = agent.hostname or agent.id
    elif not who.allowed("kb:read", None):  # problems are HQ records
        return None
    return from_row(LinkOut, link, label=label)


def voter_of(who: Principal) -> str:
    return f"user:{who.user_id}"


async def detail(session: AsyncSession, a: KbArticle, who: Principal) -> ArticleDetail:
    base = await article_out(session, a, who)
    links = [await link_out(session, who, link) for link in await store.links_of(session, a.id)]
    vote = await session.get(KbVote, (a.id, voter_of(who)))
    return ArticleDetail(
        **base.model_dump(),
        links=[link for link in links if link is not None],
        my_vote=vote.helped if vote else None,
    )


async def readable(session: AsyncSession, who: Principal, ref: str) -> KbArticle:
    article = await store.find(session, ref)
    if article is None or not store.can_read(viewer(who), article):
        raise NotFound("not found")
    return article


async def writable(session: AsyncSession, who: Principal, ref: str) -> KbArticle:
    article = await readable(session, who, ref)
    if not who.allowed("kb:write", article.site_id):
        raise Forbidden("changing this article needs kb:write on its scope")
    return article


class ListQuery(BaseModel):
    q: str | None = Field(None, max_length=500, description="words to search for")
    match: Literal["all", "any"] = Field(
        "all", description="all: every word must match; any: one or more, ranked"
    )
    state: str | None = Field(
        None, description="a state or comma-separated states (default: every visible one)"
    )
    visibility: Visibility | None = None
    site: str | None = None
    tag: str | None = Field(None, max_length=40)
    limit: int = Field(50, ge=1, le=200)
    offset: int = Field(0, ge=0)

    @field_validator("state")
    @classmethod
    def _states(cls, value: str | None) -> str | None:
        if value is not None:
            bad = [s for s in value.split(",") if s not in rules.STATES]
            if bad:
                raise ValueError(f"unknown state {bad[0]!r}; one of {', '.join(rules.STATES)}")
        return value


async def find_articles(session: AsyncSession, who: Principal, q: ListQuery) -> list[store.Hit]:
    """The API's and the console's search."""
    site_id = None
    if q.site:
        site = await people.site_by_name(session, q.site)
        if site is None:
            return []
        site_id = site.id
    return await store.search(
        session,
        viewer(who),
        q.q,
        match=q.match,
        states=q.state.split(",") if q.state else (),
        visibility=q.visibility,
        site_id=site_id,
        tag=q.tag,
        limit=q.limit,
        offset=q.offset,
    )


def version_out(v: KbVersion, current: int) -> VersionOut:
    return from_row(
        VersionOut,
        v,
        tags=rules.tags_list(v.tags),
        editor=v.editor_name,
        current=v.version == current,
    )
