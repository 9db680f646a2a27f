"""The OpenAPI 3.1 document, generated from the same route declarations and
pydantic models that validate requests, so it cannot drift from the API."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import (
    CoreModeRef,
    DefsRef,
    GenerateJsonSchema,
    JsonSchemaMode,
    models_json_schema,
)

from server.web.middleware import INT_MAX, INT_MIN
from server.web.routing import ROUTE_ATTR, RouteSpec
from shared.version import __version__

_REF = "#/components/schemas/{model}"


class _Names(GenerateJsonSchema):
    """Component names as published. Models whose short names collide (two
    `EventOut`s, three `LinkRequest`s) are named by module path, and the
    document was first published with the API's modules (`server__api__tickets__
    EventOut`); clients generate code from these names. Read models shared with
    the console now live in `server.views`: they keep the names they had."""

    def get_defs_ref(self, core_mode_ref: CoreModeRef) -> DefsRef:
        core_ref, mode = core_mode_ref
        published = core_ref.replace("server.views.", "server.api.")
        return super().get_defs_ref((type(core_ref)(published), mode))


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "fields": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        }
    },
}


def _bound_integers(node: Any) -> None:
    """Integers are 64-bit (the middleware refuses others): say so in every schema."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            node.setdefault("minimum", INT_MIN)
            node.setdefault("maximum", INT_MAX)
        for value in node.values():
            _bound_integers(value)
    elif isinstance(node, list):
        for value in node:
            _bound_integers(value)


def route_specs(app: web.Application) -> list[RouteSpec]:
    specs: list[RouteSpec] = []
    for route in app.router.routes():
        spec = getattr(route.handler, ROUTE_ATTR, None)
        if isinstance(spec, RouteSpec) and spec.method != "HEAD":
            specs.append(spec)
    return specs


def api_specs(app: web.Application) -> list[RouteSpec]:
    """The routes the OpenAPI document describes: all but the console's pages."""
    return [spec for spec in route_specs(app) if not spec.console]


def document(app: web.Application) -> dict[str, Any]:
    specs = api_specs(app)
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for spec in specs:
        if spec.body is not None:
            models.append((spec.body, "validation"))
        if spec.response is not None:
            models.append((spec.response, "serialization"))
    refs, defs = models_json_schema(
        list(dict.fromkeys(models)), ref_template=_REF, schema_generator=_Names
    )
    components: dict[str, Any] = dict(defs.get("$defs", {}))
    components["Error"] = ERROR_SCHEMA

    paths: dict[str, dict[str, Any]] = {}
    for spec in specs:
        op: dict[str, Any] = {
            "summary": spec.summary,
            "operationId": spec.handler.__name__ + "_" + spec.method.lower(),
            "tags": [spec.tag],
            "x-permission": spec.permission if not spec.public else "public",
            "responses": {},
        }
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", spec.path)
        ]
        if spec.query is not None:
            schema = spec.query.model_json_schema(ref_template=_REF)
            required = set(schema.get("required", []))
            for name, prop in schema.get("properties", {}).items():
                param: dict[str, Any] = {
                    "name": name,
                    "in": "query",
                    "required": name in required,
                    "schema": prop,
                }
                if "description" in prop:
                    param["description"] = prop["description"]
                params.append(param)
        if params:
            op["parameters"] = params
        if spec.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[(spec.body, "validation")]}},
            }
        ok: dict[str, Any] = {"description": "success"}
        if spec.response is not None:
            ok["content"] = {"application/json": {"schema": refs[(spec.response, "serialization")]}}
        elif spec.content_type != "application/json":
            ok["content"] = {spec.content_type: {"schema": {"type": "string"}}}
        op["responses"][str(101 if spec.websocket else spec.status)] = ok
        err = {
            "description": "error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        codes = ["400", "422"] if spec.body or spec.query else []
        if spec.body:
            codes.append("413")
        # answered before routing (server.webguard): a request line or a header
        # field too long, for any operation
        codes += ["414", "431"]
        if not spec.public:
            codes += ["401", "403"]
        if "{" in spec.path:
            codes.append("404")
        codes += [str(c) for c in spec.errors if str(c) not in codes]
        for code in codes:
            op["responses"][code] = err
        for extra in spec.also:
            op["responses"][str(extra)] = ok if extra < 400 else err
        if not spec.public:
            op["security"] = [{"bearer": []}, {"session": []}]
        paths.setdefault(spec.path, {})[spec.method.lower()] = op

    _bound_integers(paths)
    _bound_integers(components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Fieldlink HQ API",
            "version": __version__,
            "description": "Every operation notes its permission in `x-permission`. "
            'Errors share one shape: `{"error": {"code", "message", "fields"?}}`.',
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "fl_session"},
            },
        },
    }
