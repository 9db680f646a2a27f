"""Liveness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel
from sqlalchemy import text

from server.auth import rbac
from server.web.authn import authenticate
from server.web.keys import CONFIG, DB_ENGINE, LINKS, METRICS
from server.web.routing import ApiRouter, json_response
from shared.errors import Forbidden, Unavailable
from shared.version import __version__

routes = ApiRouter("system")


class Health(BaseModel):
    status: str
    version: str
    database: str
    agents_connected: int


@routes.route(
    "GET",
    "/healthz",
    public=True,
    summary="Liveness and database check",
    response=Health,
    errors=(503,),
)
async def healthz(request: web.Request) -> web.Response:
    app = request.app
    try:
        async with app[DB_ENGINE].connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise Unavailable("database unreachable") from exc
    return json_response(
        Health(
            status="ok",
            version=__version__,
            database="ok",
            agents_connected=len(app[LINKS]),
        )
    )


@routes.route(
    "GET",
    "/metrics",
    public=True,
    content_type="text/plain",
    summary="Prometheus metrics (bearer token with kpi:read unless metrics_public)",
)
async def metrics(request: web.Request) -> web.Response:
    app = request.app
    if not app[CONFIG].settings.metrics_public:
        who = await authenticate(request)
        if not rbac.holds_anywhere(who.rights, "kpi:read"):
            raise Forbidden("this needs the kpi:read permission")
    return web.Response(
        body=app[METRICS].render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


@routes.route("GET", "/api/openapi.json", public=True, summary="This API as OpenAPI 3.1")
async def openapi(request: web.Request) -> web.Response:
    from server.web.openapi import document

    return web.json_response(document(request.app))
