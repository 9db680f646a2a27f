"""Administration pages: users and their bindings, roles, sites with their
business calendar and remote-session settings, and enrollment tokens (which a
site technician may make for its own site). Reads go through the API's own
item builders; every change is an API call from the page."""

from __future__ import annotations

from aiohttp import web

from server.auth import rbac
from server.console import i18n
from server.console.i18n import N_
from server.console.lists import site_names
from server.console.render import page
from server.store import people
from server.views.admin import administered_site, role_item, site_item, user_item, visible_users
from server.web.act import fetch, unit
from server.web.authn import principal
from server.web.routing import ApiRouter

routes = ApiRouter("console", console=True)
WEEKDAYS = (N_("Mon"), N_("Tue"), N_("Wed"), N_("Thu"), N_("Fri"), N_("Sat"), N_("Sun"))


@routes.route("GET", "/admin", permission="users:admin", summary="Users, roles and sites")
async def admin(request: web.Request) -> web.StreamResponse:
    async with unit(request) as (session, who):
        scope = who.sites("users:admin")
        users = [await user_item(session, u, scope) for u in await visible_users(session, scope)]
        roles = [role_item(r) for r in await people.list_roles(session)]
        sites = [
            site_item(s) for s in await people.list_sites(session) if scope is None or s.id in scope
        ]
        admins = await people.global_admins(session)
    ctx = {
        # the API refuses to disable or demote the only enabled global admin: not offered
        "only_admin": next(iter(admins)) if len(admins) == 1 else None,
        "users": users,
        "roles": roles,
        "sites": sites,
        "permissions": rbac.PERMISSIONS,
        "global_admin": who.allowed("users:admin", None),
    }
    return page(request, "admin.html", ctx, title=i18n.gettext("Administration"))


@routes.route(
    "GET", "/admin/sites/{site_id}", permission="users:admin", summary="One site's settings"
)
async def site(request: web.Request) -> web.StreamResponse:
    row, _ = await fetch(request, administered_site)
    ctx = {"site": site_item(row), "weekdays": WEEKDAYS}
    return page(request, "site.html", ctx, title=row.name)


@routes.route(
    "GET", "/enroll", permission="agents:enroll", summary="Make enrollment tokens for a site"
)
async def enroll(request: web.Request) -> web.StreamResponse:
    sites = await site_names(request, principal(request), "agents:enroll")
    return page(request, "enroll.html", {"sites": sites}, title=i18n.gettext("Enrollment"))
