"""The API's middlewares, outermost first:

1. `errors`: every failure leaves as `{"error": {"code", "message", "fields"?}}`
   with the right status; request metrics; security headers.
2. `enforce`: looks up the route's declaration, authenticates the caller,
   checks the declared permission, validates query and body against the
   declared models. A route without a declaration is refused (and a test
   walks the router to make sure there is none).

Web console pages (routes declared with `console=True`, and unknown paths
outside `/api/`) go through the same enforcement but fail as pages: no login
redirects to `/login`, a user who must still enroll TOTP is sent to `/totp`,
and other errors render the console's error page (set under `HTML_ERRORS`).
Console forms carry their CSRF token in the `csrf_token` field.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable
from typing import Any, NoReturn
from urllib.parse import quote

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from server.auth import rbac
from server.web import guard as webguard
from server.web.authn import PRINCIPAL_KEY, SAFE_METHODS, authenticate, check_csrf
from server.web.keys import METRICS
from server.web.routing import BODY_KEY, QUERY_KEY, SELF, Handler, spec_of
from shared.errors import (
    BadRequest,
    FieldlinkError,
    Forbidden,
    Invalid,
    NotFound,
    PayloadTooLarge,
)

log = structlog.get_logger(__name__)

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Strict-Transport-Security": "max-age=31536000",
    "Cache-Control": "no-store",
    # Pages load scripts, styles, images and connections from HQ itself only.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
}

# (request, status, code, message) -> an HTML error page; the console sets it.
HtmlErrors = Callable[[web.Request, int, str, str], web.StreamResponse]
HTML_ERRORS: web.AppKey[HtmlErrors] = web.AppKey("html_errors")
_NOT_PAGES = ("/api/", "/healthz", "/metrics")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
}


def error_response(exc: FieldlinkError) -> web.Response:
    resp = web.json_response(exc.body(), status=exc.status)
    resp.headers.update(exc.headers)
    return resp


def _fields(exc: ValidationError, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "body"
        out.setdefault(prefix + loc, err["msg"])
    return out


def see_other(location: str) -> web.Response:
    """A 303 redirect (returned, not raised: a page's normal answer)."""
    return web.Response(status=303, headers={"Location": location})


def is_page(request: web.Request) -> bool:
    """Does this request want HTML (a console page) rather than JSON?"""
    spec = spec_of(request)
    if spec is not None:
        return spec.console
    return HTML_ERRORS in request.app and not request.path.startswith(_NOT_PAGES)


def _page_error(request: web.Request, status: int, code: str, message: str) -> web.StreamResponse:
    if status == 401:
        target = request.path_qs if request.method in SAFE_METHODS else "/"
        return see_other("/login?next=" + quote(target, safe="/"))
    if code == "2fa_required":
        return see_other("/totp")
    return request.app[HTML_ERRORS](request, status, code, message)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    page = is_page(request)
    try:
        resp = await handler(request)
    except FieldlinkError as exc:
        if page:
            resp = _page_error(request, exc.status, exc.code, exc.message)
        else:
            resp = error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "error")
        message = exc.reason if exc.status != 404 else "not found"
        if page:
            resp = _page_error(request, exc.status, code, message)
        else:
            resp = web.json_response(
                {"error": {"code": code, "message": message}}, status=exc.status
            )
        if exc.status == 405:
            resp.headers["Allow"] = exc.headers.get("Allow", "")
    except Exception:
        log.exception("request_failed", method=request.method, path=request.path)
        if page:
            resp = _page_error(request, 500, "internal", "internal error")
        else:
            resp = web.json_response(
                {"error": {"code": "internal", "message": "internal error"}}, status=500
            )
    if not resp.prepared:
        for key, value in SECURITY_HEADERS.items():
            resp.headers.setdefault(key, value)
    request.app[METRICS].api_requests.labels(str(resp.status)).inc()
    return resp


# JSON bodies nest at most this deep: ours need a few levels, and the parser
# and validators recurse once per level.
MAX_JSON_DEPTH = 32
# Integers in queries and bodies fit the database's 64-bit columns.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = [0] * 256
for _open in b"[{":
    _DEPTH_STEP[_open] = 1
for _close in b"]}":
    _DEPTH_STEP[_close] = -1


def json_depth(raw: bytes) -> int:
    """How deep the arrays and objects in a JSON text nest (brackets inside
    strings do not count). Runs at C speed: no recursion, no parsing."""
    opens = raw.count(b"[") + raw.count(b"{")
    if opens <= MAX_JSON_DEPTH:
        return opens  # an upper bound, enough to let it through
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


async def _read_json(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > request.app._client_max_size:
        raise PayloadTooLarge("request body too large")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge("request body too large") from None
    if not raw:
        return {}
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise BadRequest(
            f"request body nests deeper than {MAX_JSON_DEPTH} levels",
            fields={"body": f"nested deeper than {MAX_JSON_DEPTH} levels"},
        )
    try:
        # NaN and Infinity are not JSON (Python's parser takes them by default).
        return json.loads(raw, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON", fields={"body": "not JSON"}) from None


def _unstorable(value: Any, where: str) -> tuple[str, str] | None:
    """The first value in a validated model that no database column can hold,
    as (field path, why): an integer beyond 64 bits, text with a NUL
    character (PostgreSQL refuses those in any text), or a float that is not
    finite (`1e400` parses as infinity; free-form JSON such as run parameters
    is not held to `FiniteFloat`, and PostgreSQL's JSON refuses it)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (where or "body", "must be a finite number")
    if isinstance(value, int):
        if INT_MIN <= value <= INT_MAX:
            return None
        return where, f"must be between {INT_MIN} and {INT_MAX}"
    if isinstance(value, str):
        return (where, "must not contain NUL characters") if "\x00" in value else None
    items: Any = ()
    if isinstance(value, BaseModel):
        items = (
            (info.alias or name, getattr(value, name))
            for name, info in type(value).model_fields.items()
        )
    elif isinstance(value, dict):
        for key in value:
            if isinstance(key, str) and "\x00" in key:
                return where or "body", "keys must not contain NUL characters"
        items = value.items()
    elif isinstance(value, list | tuple | set | frozenset):
        items = enumerate(value)
    for key, item in items:
        found = _unstorable(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def validate(model: type[BaseModel], data: Any, where: str) -> BaseModel:
    try:
        value = model.model_validate(data)
    except ValidationError as exc:
        raise Invalid(f"invalid {where}", fields=_fields(exc)) from None
    # Python's integers have no bound and its strings may hold NUL, the
    # databases' may not: refuse before a query fails (one check for every
    # route, rather than a bound on each field).
    found = _unstorable(value, "")
    if found is not None:
        raise Invalid(f"invalid {where}", fields={found[0]: found[1]})
    return value


@web.middleware
async def enforce(request: web.Request, handler: Handler) -> web.StreamResponse:
    route_exc = request.match_info.http_exception
    if route_exc is not None:
        raise route_exc
    spec = spec_of(request)
    if spec is None:
        log.error("undeclared_route", path=request.path)
        raise NotFound("not found")
    if not spec.public:
        who = await authenticate(request)
        webguard.authenticated(request)
        request[PRINCIPAL_KEY] = who
        structlog.contextvars.bind_contextvars(user=who.username)
        if who.needs_2fa and not spec.before_2fa:
            raise Forbidden(
                "your roles require two-factor authentication: enroll TOTP first "
                "(POST /api/v1/me/totp)",
                code="2fa_required",
            )
        if spec.permission not in (None, SELF) and not rbac.holds_anywhere(
            who.rights, spec.permission
        ):
            raise Forbidden(f"this needs the {spec.permission} permission")
        form_token = None
        if (
            spec.console
            and request.method not in SAFE_METHODS
            and request.content_type
            in (
                "application/x-www-form-urlencoded",
                "multipart/form-data",
            )
        ):
            form = await request.post()
            value = form.get("csrf_token")
            form_token = value if isinstance(value, str) else None
        check_csrf(request, who, form_token)
    if any("\x00" in part for part in request.match_info.values()):
        raise NotFound("not found")  # no id or name holds a NUL character
    if spec.query is not None:
        request[QUERY_KEY] = validate(spec.query, dict(request.query), "query parameters")
    if spec.body is not None:
        data = await _read_json(request)
        if not isinstance(data, dict):
            raise Invalid("request body must be a JSON object", fields={"body": "not an object"})
        request[BODY_KEY] = validate(spec.body, data, "request body")
    return await handler(request)
