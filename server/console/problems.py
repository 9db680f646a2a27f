"""Problems: the list (with HQ's proposals to accept or dismiss), the problem
page (workaround, root cause, resolution, linked incidents, history, the moves
the caller may make, editing) and the form for a new one.

The pages read through the API's scoped queries; every change is a call to
the API from the page (the same checks answer there).
"""

from __future__ import annotations

from aiohttp import web

from server.console import i18n
from server.console.lists import parsed, words
from server.console.render import page
from server.store import people
from server.views.problems import (
    ListQuery,
    detail,
    find_problems,
    may_write,
    problem_out,
    readable_problem,
)
from server.web.act import act, unit
from server.web.routing import ApiRouter

routes = ApiRouter("console", console=True)

FILTERS = ("status", "site", "assignee", "origin", "q", "after")
PAGE = 100


@routes.route("GET", "/problems", permission="problems:read", summary="Problems and proposals")
async def problems(request: web.Request) -> web.StreamResponse:
    f = words(request, FILTERS)
    q = parsed(ListQuery, {**f, "limit": PAGE})
    async with unit(request) as (session, who):
        rows = [await problem_out(session, p, who) for p in await find_problems(session, who, q)]
        sites = list(await people.list_sites(session))
    older = rows[-1].number.removeprefix("PRB-") if len(rows) == PAGE else None
    ctx = {
        "rows": rows,
        "f": f,
        "older": older,
        "proposals": f.get("status") == "proposed",
        "sites": [s.name for s in sites if who.allowed("problems:write", s.id)],
        "hq_wide": who.allowed("problems:write", None),
    }
    return page(request, "problems.html", ctx, title=i18n.gettext("Problems"))


@routes.route(
    "GET", "/problems/{problem_id}", permission="problems:read", summary="One problem's page"
)
async def problem(request: web.Request) -> web.StreamResponse:
    async with act(request, readable_problem) as (session, row, who):
        p = await detail(session, row, who)
    ctx = {"p": p, "works": may_write(who, row)}
    return page(request, "problem.html", ctx, title=f"{p.number} {p.title}")
