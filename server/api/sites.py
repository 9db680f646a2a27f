"""Sites (`sites:admin`): the list, one site, creating, changing (business-hours
calendar, session policy) and deleting one."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.principal import Principal
from server.store import people
from server.store.models import Agent, Site, Ticket
from server.views.admin import Calendar, SessionPolicyIn, SiteItem, administered_site, site_item
from server.web.act import act, answer, audit, unit
from server.web.routing import ApiRouter, body, json_response
from shared.errors import Conflict

routes = ApiRouter("administration")

SITE_NAME = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$"


# --- sites -----------------------------------------------------------------------------------


class SiteList(BaseModel):
    items: list[SiteItem]
    next: str | None = None


class NewSite(BaseModel):
    name: str = Field(pattern=SITE_NAME)
    description: str = Field("", max_length=1000)
    calendar: Calendar | None = None
    session_policy: SessionPolicyIn | None = None


class SitePatch(BaseModel):
    name: str | None = Field(None, pattern=SITE_NAME)
    description: str | None = Field(None, max_length=1000)
    calendar: Calendar | None = Field(None, description="business hours for SLA clocks")
    session_policy: SessionPolicyIn | None = None


def _apply(site: Site, calendar: Calendar | None, session_policy: SessionPolicyIn | None) -> None:
    if calendar is not None:
        site.timezone = calendar.timezone
        site.work_days = calendar.work_days
        site.work_start, site.work_end = calendar.work_start, calendar.work_end
        site.holidays = [d.isoformat() for d in calendar.holidays]
    if session_policy is not None:
        site.session_policy = session_policy.model_dump()


async def _audit(
    session: AsyncSession,
    who: Principal,
    action: str,
    site: Site,
    more: dict[str, Any] | None = None,
) -> None:
    await audit(
        session,
        who,
        action,
        ("site", site.id),
        site_id=site.id,
        details={"name": site.name, **(more or {})},
    )


@routes.route(
    "GET",
    "/api/v1/sites",
    permission="users:admin",
    response=SiteList,
    summary="Sites you administer",
)
async def list_sites(request: web.Request) -> web.Response:
    async with unit(request) as (session, who):
        scope = who.sites("users:admin")
        sites = await people.list_sites(session)
    return json_response(
        SiteList(items=[site_item(s) for s in sites if scope is None or s.id in scope])
    )


@routes.route(
    "POST",
    "/api/v1/sites",
    errors=(409,),
    permission="users:admin",
    body=NewSite,
    response=SiteItem,
    status=201,
    summary="Create a site",
)
async def create_site(request: web.Request) -> web.Response:
    req = body(request, NewSite)
    async with unit(request) as (session, who):
        who.require("users:admin", None)
        if await people.site_by_name(session, req.name) is not None:
            raise Conflict("site exists", fields={"name": "already taken"})
        site = Site(name=req.name, description=req.description)
        _apply(site, req.calendar or Calendar(), req.session_policy)
        session.add(site)
        await session.flush()
        await _audit(session, who, "site.create", site)
        return answer(request, site_item(site))


@routes.route(
    "GET",
    "/api/v1/sites/{site_id}",
    permission="users:admin",
    response=SiteItem,
    summary="One site",
)
async def get_site(request: web.Request) -> web.Response:
    async with act(request, administered_site) as (_, site, _):
        return answer(request, site_item(site))


@routes.route(
    "PATCH",
    "/api/v1/sites/{site_id}",
    errors=(409,),
    permission="users:admin",
    body=SitePatch,
    response=SiteItem,
    summary="Rename or describe a site",
)
async def patch_site(request: web.Request) -> web.Response:
    req = body(request, SitePatch)
    async with act(request, administered_site) as (session, site, who):
        if req.name is not None and req.name != site.name:
            if await people.site_by_name(session, req.name) is not None:
                raise Conflict("site exists", fields={"name": "already taken"})
            site.name = req.name
        if req.description is not None:
            site.description = req.description
        _apply(site, req.calendar, req.session_policy)
        await _audit(
            session, who, "site.update", site, req.model_dump(mode="json", exclude_none=True)
        )
        return answer(request, site_item(site))


@routes.route(
    "DELETE",
    "/api/v1/sites/{site_id}",
    errors=(409,),
    permission="users:admin",
    response=SiteItem,
    summary="Delete a site that has no agents and no tickets",
)
async def delete_site(request: web.Request) -> web.Response:
    async with act(request, administered_site) as (session, site, who):
        who.require("users:admin", None)  # a 404 like the load's: same answer either way
        # Tickets are records and stay; agents must be revoked and removed first.
        held = {
            what: await session.scalar(
                select(func.count()).select_from(model).where(model.site_id == site.id)
            )
            for what, model in (("agent(s)", Agent), ("ticket(s)", Ticket))
        }
        if any(held.values()):
            holders = " and ".join(f"{n} {what}" for what, n in held.items() if n)
            raise Conflict(
                f"site {site.name} still has {holders}; a site with agents or tickets "
                "cannot be deleted (revoke and remove its agents; tickets are kept as records)",
                extra={"agents": held["agent(s)"], "tickets": held["ticket(s)"]},
            )
        item = site_item(site)
        await session.delete(site)
        await _audit(session, who, "site.delete", site)
    return answer(request, item)
