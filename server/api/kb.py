"""Knowledge base: search and list, write, edit (with versions), move through
draft -> review -> published -> archived, link to tickets, problems and
machines, vote, turn a resolved ticket into a draft, and record a help
request an article solved. `{article_id}` is an id or a number (`KB-7`).

Who sees what (see `server.itsm.kb`): published `public` articles, anyone
with kb:read; published `site` articles, kb:read on their site; published
`internal` ones, kb:read on the global scope; unpublished ones, those with
kb:write on the article's scope. Anything else answers 404.
"""

from __future__ import annotations

import re
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.api.tickets import repeat_answer
from server.auth.principal import Principal
from server.itsm import kb as rules
from server.itsm.tickets import number_text as ticket_number
from server.ops import helprequests
from server.ops import kb as kb_ops
from server.store.models import Agent, KbArticle, KbLink, KbVersion, Site, Ticket
from server.views.admin import site_named
from server.views.kb import (
    ArticleDetail,
    ArticleOut,
    ListQuery,
    VersionOut,
    Visibility,
    article_out,
    detail,
    find_articles,
    readable,
    version_out,
    voter_of,
    writable,
)
from server.views.tickets import readable_ticket
from server.web.act import act, answer, unit
from server.web.keys import CONFIG
from server.web.routing import ApiRouter, body, json_response, query
from shared.errors import Conflict, Forbidden, Invalid, NotFound

routes = ApiRouter("kb")

State = Literal["draft", "review", "published", "archived"]
LinkKind = Literal["ticket", "problem", "machine"]
_PROBLEM_REF = re.compile(r"^[A-Za-z0-9][\w.-]{0,39}$")


class ArticleList(BaseModel):
    items: list[ArticleOut]


class VersionList(BaseModel):
    items: list[VersionOut]


async def scope_site(
    session: AsyncSession, who: Principal, visibility: str, site_name: str | None
) -> str | None:
    """The site id for a `site` article (checked against the caller's
    kb:write), None for the others; raises naming the field."""
    if visibility != "site":
        if site_name:
            raise Invalid(
                "only site articles name a site", fields={"site": f"not used with {visibility}"}
            )
        if not who.allowed("kb:write", None):
            raise Forbidden(
                f"{visibility} articles need kb:write on the global scope",
                fields={"visibility": "use site, for a site you write for"},
            )
        return None
    if not site_name:
        raise Invalid("a site article names its site", fields={"site": "required for site"})
    return (await site_named(session, who, site_name, "kb:write")).id


@routes.route(
    "GET",
    "/api/v1/kb",
    permission="kb:read",
    query=ListQuery,
    response=ArticleList,
    summary="Search or list the articles you can see (ranked, with snippets, when q is given)",
)
async def list_articles(request: web.Request) -> web.Response:
    q = query(request, ListQuery)
    async with unit(request) as (session, who):
        hits = await find_articles(session, who, q)
        items = [await article_out(session, h.article, who, h) for h in hits]
    return json_response(ArticleList(items=items))


class NewArticle(BaseModel):
    title: str = Field(min_length=1, max_length=300)
    symptom: str = Field("", max_length=20000, description="what people see")
    cause: str = Field("", max_length=20000)
    resolution: str = Field("", max_length=20000, description="what fixes it")
    tags: list[str] = Field(default_factory=list, max_length=20)
    visibility: Visibility = "internal"
    site: str | None = Field(None, description="the site of a `site` article")

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        return rules.clean_tags(value)


@routes.route(
    "POST",
    "/api/v1/kb",
    permission="kb:write",
    body=NewArticle,
    response=ArticleDetail,
    status=201,
    summary="Write a draft article (404 naming `site` for a site you do not write for)",
    errors=(404,),
)
async def create_article(request: web.Request) -> web.Response:
    req = body(request, NewArticle)
    async with unit(request) as (session, who):
        site_id = await scope_site(session, who, req.visibility, req.site)
        article = await kb_ops.create(
            session,
            kb_ops.Content(
                title=req.title,
                symptom=req.symptom,
                cause=req.cause,
                resolution=req.resolution,
                tags=req.tags,
                visibility=req.visibility,
                site_id=site_id,
            ),
            who.actor(),
            author_id=who.user_id,
        )
        return answer(request, await detail(session, article, who))


@routes.route(
    "GET",
    "/api/v1/kb/{article_id}",
    permission="kb:read",
    response=ArticleDetail,
    summary="An article with its links and votes (counts a view)",
)
async def get_article(request: web.Request) -> web.Response:
    async with act(request, readable, write=True) as (session, article, who):
        article.views += 1
        return answer(request, await detail(session, article, who))


class ArticlePatch(BaseModel):
    title: str | None = Field(None, min_length=1, max_length=300)
    symptom: str | None = Field(None, max_length=20000)
    cause: str | None = Field(None, max_length=20000)
    resolution: str | None = Field(None, max_length=20000)
    tags: list[str] | None = Field(None, max_length=20)
    visibility: Visibility | None = None
    site: str | None = Field(None, description="the site of a `site` article")
    note: str = Field("", max_length=500, description="what this edit changed, for the versions")

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else rules.clean_tags(value)


@routes.route(
    "PATCH",
    "/api/v1/kb/{article_id}",
    permission="kb:write",
    body=ArticlePatch,
    response=ArticleDetail,
    summary="Edit an article; every change keeps the earlier version",
    errors=(409,),
)
async def patch_article(request: web.Request) -> web.Response:
    req = body(request, ArticlePatch)
    async with act(request, writable) as (session, article, who):
        changes = req.model_dump(exclude_none=True, exclude={"site", "note"})
        if req.visibility is not None or req.site is not None:
            visibility = req.visibility or article.visibility
            site_name = req.site
            if visibility == "site" and site_name is None and article.site_id is not None:
                current = await session.get(Site, article.site_id)
                site_name = current.name if current else None
            changes["visibility"] = visibility
            changes["site_id"] = await scope_site(session, who, visibility, site_name)
        await kb_ops.edit(session, article, changes, who.actor(), req.note)
        return answer(request, await detail(session, article, who))


class TransitionRequest(BaseModel):
    action: Literal["submit", "return", "publish", "archive", "restore"]
    note: str = Field("", max_length=2000)


@routes.route(
    "POST",
    "/api/v1/kb/{article_id}/transition",
    permission="kb:write",
    body=TransitionRequest,
    response=ArticleDetail,
    summary="submit (kb:write), return, publish, archive or restore (kb:publish); "
    "409 names the allowed actions",
    errors=(409,),
)
async def transition_article(request: web.Request) -> web.Response:
    req = body(request, TransitionRequest)
    async with act(request, writable) as (session, article, who):
        needed = rules.ACTIONS[req.action][2]
        if not who.allowed(needed, article.site_id):
            raise Forbidden(f"{req.action} needs {needed}", fields={"action": f"needs {needed}"})
        await kb_ops.transition(session, article, req.action, who.actor(), req.note)
        return answer(request, await detail(session, article, who))


@routes.route(
    "GET",
    "/api/v1/kb/{article_id}/versions",
    permission="kb:write",
    response=VersionList,
    summary="Every version of an article, newest first",
)
async def list_versions(request: web.Request) -> web.Response:
    async with act(request, writable) as (session, article, _):
        rows = await session.scalars(
            select(KbVersion)
            .where(KbVersion.article_id == article.id)
            .order_by(KbVersion.version.desc())
        )
        items = [version_out(v, article.version) for v in rows]
    return json_response(VersionList(items=items))


@routes.route(
    "GET",
    "/api/v1/kb/{article_id}/versions/{version}",
    permission="kb:write",
    response=VersionOut,
    summary="One version of an article",
)
async def get_version(request: web.Request) -> web.Response:
    raw = request.match_info["version"]
    async with act(request, writable) as (session, article, _):
        row = (
            await session.get(KbVersion, (article.id, int(raw)))
            if raw.isdigit() and len(raw) < 9
            else None
        )
        if row is None:
            raise NotFound("no such version", fields={"version": f"1 to {article.version}"})
        return answer(request, version_out(row, article.version))


class LinkRequest(BaseModel):
    kind: LinkKind
    target: str = Field(
        min_length=1,
        max_length=100,
        description="ticket: id or number (FL-12); problem: its reference; machine: agent id",
    )


async def link_target(session: AsyncSession, who: Principal, req: LinkRequest) -> str:
    """What a link stores, once the caller may see the target; raises naming
    `target`."""
    bad = Invalid("unknown link target", fields={"target": f"no such {req.kind} you can see"})
    if req.kind == "ticket":
        try:
            ticket = await readable_ticket(session, who, req.target)
        except NotFound:
            raise bad from None
        return ticket.id
    if req.kind == "machine":
        agent = await session.get(Agent, req.target.strip())
        if agent is None or not who.allowed("agents:read", agent.site_id):
            raise bad
        return agent.id
    # Problem records live in their own module: the reference is stored as
    # given. Hook: once problems exist on this branch, look the record up here
    # (and refuse one the caller cannot read) before storing its reference.
    ref = req.target.strip()
    if not _PROBLEM_REF.match(ref) or not who.allowed("kb:read", None):
        raise bad
    return ref


@routes.route(
    "POST",
    "/api/v1/kb/{article_id}/links",
    permission="kb:write",
    body=LinkRequest,
    response=ArticleDetail,
    status=201,
    summary="Link the article to a ticket, a problem or a machine (once)",
)
async def add_link(request: web.Request) -> web.Response:
    req = body(request, LinkRequest)
    async with act(request, writable) as (session, article, who):
        target = await link_target(session, who, req)
        await kb_ops.link(session, article, req.kind, target, who.actor())
        return answer(request, await detail(session, article, who))


@routes.route(
    "DELETE",
    "/api/v1/kb/{article_id}/links/{link_id}",
    permission="kb:write",
    response=ArticleDetail,
    summary="Remove a link",
)
async def remove_link(request: web.Request) -> web.Response:
    raw = request.match_info["link_id"]
    async with act(request, writable) as (session, article, who):
        link = await session.get(KbLink, int(raw)) if raw.isdigit() and len(raw) < 18 else None
        if link is None or link.article_id != article.id:
            raise NotFound("no such link", fields={"link_id": "not a link of this article"})
        await kb_ops.unlink(session, article, link, who.actor())
        return answer(request, await detail(session, article, who))


class VoteRequest(BaseModel):
    helped: bool = Field(description="true: this helped; false: it did not")


@routes.route(
    "POST",
    "/api/v1/kb/{article_id}/vote",
    permission="kb:read",
    body=VoteRequest,
    response=ArticleDetail,
    summary='Vote "helped" or "did not help" on a published article (one vote each, '
    "a later one replaces it)",
    errors=(409,),
)
async def vote(request: web.Request) -> web.Response:
    req = body(request, VoteRequest)
    async with act(request, readable) as (session, article, who):
        if article.state != "published":
            raise Conflict("only published articles take votes")
        await kb_ops.vote(session, article, voter_of(who), req.helped, who.actor())
        return answer(request, await detail(session, article, who))


class SolvedRequest(BaseModel):
    site: str = Field(min_length=1, max_length=100, description="the site asking")
    text: str = Field("", max_length=20000, description="what the person asked")
    agent_id: str | None = Field(None, description="the machine it was about (optional)")


class SolvedOut(BaseModel):
    ticket_id: str
    ticket: str = Field(description="the self-served request's number (FL-N), already closed")
    article: str


def _solved_out(ticket: Ticket, article: KbArticle) -> SolvedOut:
    return SolvedOut(
        ticket_id=ticket.id,
        ticket=ticket_number(ticket.number),
        article=rules.number_text(article.number),
    )


@routes.route(
    "POST",
    "/api/v1/kb/{article_id}/solved",
    permission="tickets:write",
    body=SolvedRequest,
    response=SolvedOut,
    status=201,
    also=(200,),
    summary='"This solved it": records the help request as self-served (closed at once, '
    'linked to the article, a "helped" vote); counts in the deflection rate. Site people: '
    "the same words again answer 200 with the first record, past the self-served limit 429",
    errors=(409, 429),
)
async def solved(request: web.Request) -> web.Response:
    req = body(request, SolvedRequest)
    async with act(request, readable) as (session, article, who):
        site = await site_named(session, who, req.site, "tickets:write")
        if article.state != "published":
            raise Conflict("only a published article solves a request")
        agent_ids: list[str] = []
        if req.agent_id:
            agent = await session.get(Agent, req.agent_id)
            if agent is None or agent.site_id != site.id:
                raise Invalid("unknown agent", fields={"agent_id": "not on this site"})
            agent_ids.append(agent.id)
        if not who.sees_all_tickets(site.id):
            # the site's people, as for help requests (HQ's are neither limited nor folded)
            asker = helprequests.Asker(site.id, None, who.username, who.user_id)
            limits = helprequests.Limits.of(request.app[CONFIG].settings)
            limited = await helprequests.check_self_served(session, asker, limits)
            if limited is not None:
                raise limited.error()
            repeat = await helprequests.self_served_repeat(
                session, asker, article.id, req.text.strip(), limits
            )
            if repeat is not None:
                await helprequests.fold_self_served(session, repeat, who.actor(), req.text.strip())
                first = _solved_out(repeat, article)
                return repeat_answer(first, first.ticket)
        ticket = await kb_ops.self_served(
            session,
            article,
            who.actor(),
            site_id=site.id,
            text=req.text,
            source="console" if who.via == "session" else "api",
            voter=voter_of(who),
            requester_id=who.user_id,
            requester_name=who.username,
            agent_ids=agent_ids,
        )
        return answer(request, _solved_out(ticket, article))


class FromTicketRequest(BaseModel):
    title: str | None = Field(None, min_length=1, max_length=300, description="default: ticket's")
    visibility: Visibility | None = Field(
        None,
        description="default: internal with kb:write on the global scope, else site "
        "(the ticket's site)",
    )


@routes.route(
    "POST",
    "/api/v1/tickets/{ticket_id}/kb",
    permission="kb:write",
    body=FromTicketRequest,
    response=ArticleDetail,
    status=201,
    summary="Turn a resolved ticket into a draft article in one step (symptom from the "
    "description, resolution from the resolution text, linked to the ticket)",
    errors=(409,),
)
async def ticket_to_article(request: web.Request) -> web.Response:
    req = body(request, FromTicketRequest)
    async with act(request, readable_ticket) as (session, ticket, who):
        if not who.works_tickets(ticket.site_id) or not who.allowed("kb:write", ticket.site_id):
            raise Forbidden("this needs tickets:write, agents:read and kb:write on the site")
        visibility = req.visibility or ("internal" if who.allowed("kb:write", None) else "site")
        if visibility == "site":
            site_id: str | None = ticket.site_id
        else:
            site_id = None
            if not who.allowed("kb:write", None):
                raise Forbidden(
                    f"{visibility} articles need kb:write on the global scope",
                    fields={"visibility": "use site"},
                )
        article = await kb_ops.from_ticket(
            session,
            ticket,
            who.actor(),
            author_id=who.user_id,
            visibility=visibility,
            site_id=site_id,
            title=req.title,
        )
        return answer(request, await detail(session, article, who))
