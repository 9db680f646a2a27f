"""The web console: server-rendered pages (Jinja2 through aiohttp-jinja2) with
small JavaScript modules for the live parts, which talk to the same JSON API,
server-sent events and WebSockets as everyone else.

Every page is declared like an API route (`ApiRouter(..., console=True)`):
its permission sits next to its handler, the same middleware enforces it, and
the data a page shows is loaded through the same scoped queries the API uses.
"""

from __future__ import annotations

from aiohttp import web

from server.console import (
    account,
    admin,
    assets,
    changes,
    dashboard,
    jobs,
    kb,
    live,
    machines,
    problems,
    render,
    reports,
    sessions,
    tickets,
)
from server.web.middleware import HTML_ERRORS
from server.web.routing import ApiRouter

ROUTERS: list[ApiRouter] = [
    assets.routes,
    account.routes,
    dashboard.routes,
    machines.routes,
    tickets.routes,
    problems.routes,
    kb.routes,
    jobs.routes,
    changes.routes,
    sessions.routes,
    reports.routes,
    admin.routes,
]


def install(app: web.Application) -> None:
    render.setup(app)
    live.install(app)
    assets.check_vendor()
    app[HTML_ERRORS] = render.error_page
    for router in ROUTERS:
        router.install(app)
