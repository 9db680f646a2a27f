"""What the console's list pages and forms share: the filters a page reads
from its query string (a bad one answers 422 naming it, as the API does),
and the names of the sites a form may offer the caller."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from server.auth.principal import Principal
from server.store import people
from server.web.keys import DB
from shared.errors import Invalid

M = TypeVar("M", bound=BaseModel)


def words(request: web.Request, keys: Iterable[str]) -> dict[str, str]:
    """The query string's values for `keys`, stripped; blank ones left out."""
    return {k: request.query[k].strip() for k in keys if request.query.get(k, "").strip()}


def parsed(model: type[M], raw: Mapping[str, Any]) -> M:
    """`raw` as `model`; 422 "invalid filter" naming each field it refuses."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        fields = {".".join(map(str, e["loc"])): e["msg"] for e in exc.errors()}
        raise Invalid("invalid filter", fields=fields) from None


async def site_names(request: web.Request, who: Principal, permission: str) -> list[str]:
    """The names of the sites where the caller holds `permission`, in the
    store's order: the choices a form offers."""
    async with request.app[DB]() as session:
        sites = await people.list_sites(session)
    return [s.name for s in sites if who.allowed(permission, s.id)]
