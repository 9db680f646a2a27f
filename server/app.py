"""Wires the aiohttp application: middlewares and every route module."""

from __future__ import annotations

from aiohttp import web

from server import console, webguard
from server.api import (
    admin,
    agents,
    alerts,
    audit,
    auth,
    changes,
    enroll,
    jobs,
    kb,
    problems,
    reports,
    runs,
    service_levels,
    sessions,
    system,
    tickets,
)
from server.api.middleware import enforce, errors
from server.api.routing import ApiRouter
from server.context import SERVICES, Services

ROUTERS: list[ApiRouter] = [
    system.routes,
    auth.routes,
    admin.routes,
    audit.routes,
    enroll.routes,
    agents.routes,
    runs.routes,
    jobs.routes,
    tickets.routes,
    problems.routes,
    alerts.routes,
    service_levels.routes,
    sessions.routes,
    changes.routes,
    kb.routes,
    reports.routes,
]

MAX_BODY = 1024 * 1024


def make_app(svc: Services) -> web.Application:
    app = web.Application(middlewares=[errors, enforce], client_max_size=MAX_BODY)
    app.on_response_prepare.append(webguard.server_header)
    app[SERVICES] = svc
    for router in ROUTERS:
        router.install(app)
    console.install(app)
    return app
