"""The API is described by a valid OpenAPI 3.1 document listing exactly the
app's routes, each with its permission; no route is undeclared."""

from __future__ import annotations

from typing import Any

from openapi_spec_validator import validate

from server.hq import make_app
from server.web.routing import ROUTE_ATTR, RouteSpec


def _app() -> Any:
    return make_app()


def test_every_route_declares_its_permission():
    """Walking the router finds a declaration (permission or public) on every route."""
    undeclared = []
    for route in _app().router.routes():
        spec = getattr(route.handler, ROUTE_ATTR, None)
        if not isinstance(spec, RouteSpec):
            undeclared.append(f"{route.method} {route.resource.canonical}")
        elif not spec.public:
            assert spec.permission, f"{spec.method} {spec.path} has no permission"
    assert not undeclared, f"routes without a declaration: {undeclared}"


async def test_openapi_document_is_valid_and_complete(sqlite_hq):
    """/api/openapi.json validates as OpenAPI 3.1 and lists exactly the app's API
    routes (the web console's pages are left out)."""
    async with sqlite_hq.client() as api:
        status, doc = await api.get("/api/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.1")
    validate(doc)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    api_routes = {
        (r.method, r.resource.canonical)
        for r in sqlite_hq.hq._runner.app.router.routes()  # type: ignore[union-attr]
        if r.method != "HEAD" and not getattr(r.handler, ROUTE_ATTR).console
    }
    assert documented == api_routes
    assert not any(p.startswith(("/static", "/login")) or p == "/" for p in doc["paths"])
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["x-permission"], f"{method} {path}"
            if op["x-permission"] != "public":
                assert "401" in op["responses"]


async def test_route_specific_error_codes_are_documented(sqlite_hq):
    """Codes a route answers beyond the generic ones (409 conflicts, 404 for a
    named object in the body, 429 throttling, 503) are in its responses, and a
    body can always be too large (413)."""
    async with sqlite_hq.client() as api:
        _, doc = await api.get("/api/openapi.json")
    paths = doc["paths"]
    assert "409" in paths["/api/v1/sites/{site_id}"]["delete"]["responses"]
    assert {"401", "429"} <= set(paths["/api/v1/auth/login"]["post"]["responses"])
    assert "404" in paths["/api/v1/tickets"]["post"]["responses"]
    assert "503" in paths["/healthz"]["get"]["responses"]
    for ops in paths.values():
        for op in ops.values():
            if "requestBody" in op:
                assert "413" in op["responses"]
            assert {"414", "431"} <= set(op["responses"])


async def test_a_kb_article_for_an_unknown_site_is_a_documented_404(sqlite_hq):
    """POST /api/v1/kb naming a site that does not exist (or is beyond the
    caller's kb:write) answers 404 naming `site`, and the document lists 404
    for it (schemathesis found it undocumented)."""
    async with sqlite_hq.client(sqlite_hq.admin_token) as api:
        status, err = await api.post(
            "/api/v1/kb", {"title": "t", "visibility": "site", "site": "no-such-site"}
        )
        assert status == 404 and err["error"]["fields"] == {"site": "no such site"}, err
        _, doc = await api.get("/api/openapi.json")
    assert "404" in doc["paths"]["/api/v1/kb"]["post"]["responses"]
