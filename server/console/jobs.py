"""Jobs: start one catalog entry over a site or a tag, follow each machine's
progress live (the API's server-sent events), read the results."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.console import i18n
from server.console.forms import fields_of
from server.console.render import page
from server.store import fleet
from server.store.models import Agent
from server.views.jobs import job_out, recent_jobs
from server.web.authn import principal
from server.web.keys import DB
from server.web.routing import ApiRouter

routes = ApiRouter("console", console=True)


@routes.route("GET", "/jobs", permission="diag:run", summary="Jobs: start one, recent ones")
async def jobs(request: web.Request) -> web.StreamResponse:
    who = principal(request)
    async with request.app[DB]() as session:
        rows = await fleet.list_agents(session, who.sites("agents:read"))
    live = [(a, site) for a, site in rows if a.revoked_at is None]
    ctx = {
        "jobs": await recent_jobs(request.app[DB], principal(request), 50),
        "sites": sorted({site for a, site in live if who.allowed("diag:run", a.site_id)}),
        "tags": sorted({t for a, _ in live for t in a.tags or []}),
        "entries": _entries(live),
    }
    return page(request, "jobs.html", ctx, title=i18n.gettext("Jobs"))


def _entries(agents: list[tuple[Agent, str]]) -> list[dict[str, Any]]:
    """Each catalog entry the caller's machines offer, once, with its form fields."""
    seen: dict[str, dict[str, Any]] = {}
    for agent, _ in agents:
        for entry in agent.catalog or []:
            name = str(entry.get("name"))
            if name not in seen:
                seen[name] = {"name": name, "fields": fields_of(entry.get("params_schema") or {})}
    return [seen[name] for name in sorted(seen)]


@routes.route("GET", "/jobs/{job_id}", permission="diag:run", summary="One job, live")
async def job(request: web.Request) -> web.StreamResponse:
    out = await job_out(request.app[DB], principal(request), request.match_info["job_id"])
    return page(request, "job.html", {"job": out}, title=f"{i18n.gettext('Job')} {out.name}")
