"""The knowledge base in the console: search and list, one article (with
its versions, links and votes, and the state buttons the caller may use),
and the form to write or edit one. Pages read through the API's scoped
queries; every change is a call to the API from the page.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select

from server.console import i18n
from server.console.lists import parsed, site_names, words
from server.console.render import page
from server.itsm import kb as rules
from server.store.models import KbVersion, Site
from server.views import kb as kb_api
from server.web.act import act, unit
from server.web.authn import principal
from server.web.routing import ApiRouter
from shared.errors import NotFound

routes = ApiRouter("console", console=True)

FILTERS = ("q", "match", "state", "visibility", "site", "tag")


@routes.route("GET", "/kb", permission="kb:read", summary="Knowledge base: search and list")
async def kb_list(request: web.Request) -> web.StreamResponse:
    raw = words(request, FILTERS)
    q = parsed(kb_api.ListQuery, {**raw, "limit": 100})
    async with unit(request) as (session, who):
        hits = await kb_api.find_articles(session, who, q)
        rows = [await kb_api.article_out(session, h.article, who, h) for h in hits]
    ctx = {
        "rows": rows,
        "f": raw,
        "states": rules.STATES,
        "visibilities": rules.VISIBILITIES,
        "may_write": who.holds("kb:write"),
    }
    return page(request, "kb.html", ctx, title=i18n.gettext("Knowledge base"))


async def _writable_sites(request: web.Request) -> list[str]:
    return await site_names(request, principal(request), "kb:write")


@routes.route("GET", "/kb/new", permission="kb:write", summary="Write a knowledge-base article")
async def kb_new(request: web.Request) -> web.StreamResponse:
    who = principal(request)
    ctx = {
        "a": None,
        "sites": await _writable_sites(request),
        "global_ok": who.allowed("kb:write", None),
        "site_name": None,
    }
    return page(request, "kb_form.html", ctx, title=i18n.gettext("New article"))


@routes.route("GET", "/kb/{article_id}", permission="kb:read", summary="One article's page")
async def kb_article(request: web.Request) -> web.StreamResponse:
    raw_version = request.query.get("version", "").strip()
    async with act(request, kb_api.readable, write=True) as (session, row, who):
        may_edit = who.allowed("kb:write", row.site_id)
        shown: Any = None
        if raw_version:
            if not may_edit or not raw_version.isdigit() or len(raw_version) > 8:
                raise NotFound("no such version", fields={"version": "not found"})
            version = await session.get(KbVersion, (row.id, int(raw_version)))
            if version is None:
                raise NotFound("no such version", fields={"version": "not found"})
            shown = kb_api.version_out(version, row.version)
        else:
            row.views += 1
        a = await kb_api.detail(session, row, who)
        versions = []
        if may_edit:
            versions = [
                kb_api.version_out(v, row.version)
                for v in await session.scalars(
                    select(KbVersion)
                    .where(KbVersion.article_id == row.id)
                    .order_by(KbVersion.version.desc())
                )
            ]
    ctx = {
        "a": a,
        "shown": shown,
        "versions": versions,
        "may_vote": a.state == "published",
    }
    return page(request, "kb_article.html", ctx, title=f"{a.number} {a.title}")


@routes.route(
    "GET", "/kb/{article_id}/edit", permission="kb:write", summary="Edit a knowledge-base article"
)
async def kb_edit(request: web.Request) -> web.StreamResponse:
    async with act(request, kb_api.writable) as (session, row, who):
        a = await kb_api.detail(session, row, who)
        site = await session.get(Site, row.site_id) if row.site_id else None
    ctx = {
        "a": a,
        "sites": await _writable_sites(request),
        "global_ok": who.allowed("kb:write", None),
        "site_name": site.name if site else None,
    }
    return page(request, "kb_form.html", ctx, title=f"{a.number} {a.title}")
