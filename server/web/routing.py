"""Route declarations: every API route states its method, path, permission,
request and response models next to its handler. The same declarations
drive enforcement (middleware), validation and the OpenAPI document.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)

ROUTE_ATTR = "__fieldlink_route__"
# Any authenticated caller, acting on its own account (login, /me, own tokens).
SELF = "self"
BODY_KEY = web.RequestKey("body", BaseModel)
QUERY_KEY = web.RequestKey("query", BaseModel)


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str
    handler: Handler
    summary: str
    permission: str | None  # None with public=True: no authentication
    public: bool = False
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    tag: str = "api"
    content_type: str = "application/json"
    websocket: bool = False
    # Where the permission is decided per object (site scope), for the docs.
    scoped: bool = True
    # May a user who must still enroll TOTP call it?
    before_2fa: bool = False
    # A web console page (HTML): errors render as pages, a missing login
    # redirects to /login, and the OpenAPI document leaves it out.
    console: bool = False
    # Status codes it can answer beyond the ones every route of its kind can
    # (400/422 with a body or query, 401/403 unless public, 404 with a path
    # parameter, 413 with a body), for the OpenAPI document.
    errors: tuple[int, ...] = ()
    # Further success statuses it answers (with the response's body).
    also: tuple[int, ...] = ()


class ApiRouter:
    def __init__(self, tag: str, *, console: bool = False) -> None:
        self.tag = tag
        self.console = console
        self.specs: list[RouteSpec] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        permission: str | None = None,
        public: bool = False,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        content_type: str = "application/json",
        websocket: bool = False,
        scoped: bool = True,
        before_2fa: bool = False,
        errors: tuple[int, ...] = (),
        also: tuple[int, ...] = (),
    ) -> Callable[[Handler], Handler]:
        if permission is None and not public:
            raise ValueError(f"{method} {path}: declare a permission or public=True")

        def deco(handler: Handler) -> Handler:
            spec = RouteSpec(
                method=method,
                path=path,
                handler=handler,
                summary=summary,
                permission=permission,
                public=public,
                body=body,
                query=query,
                response=response,
                status=status,
                tag=self.tag,
                content_type=content_type,
                websocket=websocket,
                scoped=scoped,
                before_2fa=before_2fa,
                console=self.console,
                errors=errors,
                also=also,
            )
            setattr(handler, ROUTE_ATTR, spec)
            self.specs.append(spec)
            return handler

        return deco

    def install(self, app: web.Application) -> None:
        for spec in self.specs:
            app.router.add_route(spec.method, spec.path, spec.handler)


def _drop_null(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """In the JSON schema, a field `PatchBody.nullable` does not list takes no null."""
    nullable: frozenset[str] = getattr(model, "nullable", frozenset())
    for name, prop in schema.get("properties", {}).items():
        choices = prop.get("anyOf")
        if name in nullable or not isinstance(choices, list):
            continue
        kept = [c for c in choices if c != {"type": "null"}]
        prop.pop("anyOf")
        if prop.get("default", ...) is None:
            prop.pop("default")
        if len(kept) == 1:
            prop.update(kept[0])
        else:
            prop["anyOf"] = kept


class PatchBody(BaseModel):
    """A PATCH body: a field left out keeps its value; null is refused (422
    naming the field) unless the field is listed in `nullable`, where null
    means "back to the default". Handlers apply `model_dump(exclude_unset=True)`."""

    nullable: ClassVar[frozenset[str]] = frozenset()
    model_config = ConfigDict(json_schema_extra=_drop_null)

    @field_validator("*", mode="before")
    @classmethod
    def _refuse_null(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name not in cls.nullable:
            raise ValueError("may not be null: leave the field out to keep its value")
        return value


def spec_of(request: web.Request) -> RouteSpec | None:
    handler: Any = request.match_info.route.handler
    spec = getattr(handler, ROUTE_ATTR, None)
    return spec if isinstance(spec, RouteSpec) else None


def body(request: web.Request, model: type[M]) -> M:
    """The request body, already validated by the middleware against the route's model."""
    value = request[BODY_KEY]
    assert isinstance(value, model)
    return value


def query(request: web.Request, model: type[M]) -> M:
    value = request[QUERY_KEY]
    assert isinstance(value, model)
    return value


def json_response(data: BaseModel | dict[str, Any], status: int = 200) -> web.Response:
    if isinstance(data, BaseModel):
        text = data.model_dump_json(by_alias=True)
    else:
        import json

        text = json.dumps(data, default=str)
    return web.Response(text=text, status=status, content_type="application/json")
