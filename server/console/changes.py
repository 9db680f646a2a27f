"""Changes: the list (with the form to request one), a change's page (plan,
backout, approvals, stages with their jobs' progress, history, and the
buttons the caller's permissions allow), and the upcoming changes a site
sees for its machines (on "Get help" and a machine's page).

The pages read through the API's scoped queries; every step is a call to the
API from the page (the same checks answer there).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.principal import Principal
from server.console import i18n
from server.console.i18n import N_
from server.console.lists import parsed
from server.console.render import page
from server.ops import changes as ch
from server.store import fleet, people
from server.views.changes import (
    ChangeQuery,
    ChangeSummary,
    change_out,
    readable_change,
    visible_changes,
)
from server.web.act import act, unit
from server.web.routing import ApiRouter
from shared.errors import Invalid

routes = ApiRouter("console", console=True)

STATE_LABELS = {
    "requested": N_("requested"),
    "approved": N_("approved"),
    "rejected": N_("rejected"),
    "cancelled": N_("cancelled"),
    "in_progress": N_("in progress"),
    "review": N_("in review"),
    "successful": N_("successful"),
    "failed": N_("failed"),
    "rolled_back": N_("rolled back"),
}
RISK_LABELS = {"low": N_("low"), "medium": N_("medium"), "high": N_("high")}
STAGE_LABELS = {
    "pilot": N_("pilot"),
    "gate": N_("health gate"),
    "rest": N_("rest"),
    "backout": N_("backout"),
}


def labels() -> dict[str, Any]:
    g = i18n.gettext
    return {
        "state_label": lambda s: g(STATE_LABELS[s]) if s in STATE_LABELS else s,
        "risk_label": lambda s: g(RISK_LABELS[s]) if s in RISK_LABELS else s,
        "stage_label": lambda s: g(STAGE_LABELS[s]) if s in STAGE_LABELS else (s or ""),
    }


async def upcoming_for(
    session: AsyncSession, who: Principal, agent_id: str | None = None
) -> list[ChangeSummary]:
    """Changes not yet done touching the caller's sites (or one machine)."""
    if not who.holds("changes:read"):
        return []
    return await visible_changes(session, who, ChangeQuery(upcoming=True, agent=agent_id, limit=20))


@routes.route(
    "GET", "/changes", permission="changes:read", summary="Changes; the form to request one"
)
async def changes_page(request: web.Request) -> web.StreamResponse:
    raw = {k: request.query[k] for k in ("state", "upcoming") if request.query.get(k)}
    q = parsed(ChangeQuery, {**raw, "limit": 200})
    if q.state is not None and q.state not in ch.STATES:
        raise Invalid("unknown state", fields={"state": "one of " + ", ".join(ch.STATES)})
    async with unit(request) as (session, who):
        rows = await visible_changes(session, who, q)
        may_request = who.holds("changes:request")
        sites: list[str] = []
        entries: list[str] = []
        tags: set[str] = set()
        if may_request:
            scope = who.sites("changes:request")
            sites = [
                s.name for s in await people.list_sites(session) if scope is None or s.id in scope
            ]
            agents = await fleet.list_agents(session, who.sites("agents:read"))
            names = {
                str(e.get("name"))
                for a, _ in agents
                if a.revoked_at is None
                for e in a.catalog or []
            }
            entries = sorted(names | {"exec"})
            tags = {t for a, _ in agents for t in a.tags or []}
    ctx = {
        "rows": rows,
        "f": raw,
        "states": ch.STATES,
        "may_request": may_request,
        "sites": sites,
        "entries": entries,
        "tags": sorted(tags),
        **labels(),
    }
    return page(request, "changes.html", ctx, title=i18n.gettext("Changes"))


@routes.route("GET", "/changes/{change_id}", permission="changes:read", summary="One change")
async def change_page(request: web.Request) -> web.StreamResponse:
    async with act(request, readable_change) as (session, row, who):
        c = await change_out(session, who, row)
        sites = row.site_ids

    def everywhere(perm: str) -> bool:
        return all(who.allowed(perm, s) for s in sites)

    works = everywhere("changes:request")
    decides = everywhere("changes:approve") and row.requester_id != who.user_id
    already = any(a.approver == who.username for a in c.approvals)
    ctx = {
        "c": c,
        "may_decide": decides and c.state == "requested" and not already,
        "own": row.requester_id == who.user_id,
        "may_start": works and everywhere(_run_perm(row.tier)) and c.state == "approved",
        "may_cancel": works and c.state in ("requested", "approved", "in_progress"),
        "may_review": works and c.state == "review",
        "may_jobs": any(who.allowed("diag:run", s) for s in sites),
        **labels(),
    }
    return page(request, "change.html", ctx, title=f"{c.number} {c.title}")


def _run_perm(tier: str) -> str:
    from server.itsm.runs import TIER_PERMISSION

    return TIER_PERMISSION.get(tier, "exec:run")
