"""The shape every handler that touches a record shares, written once: open
the database session (a transaction for a write, a plain session for a
read), load the route's record in the caller's scope (404 out of it, 403
where the caller sees it but may not act on it), act, audit, and answer
with the route's declared status.

The route's declaration (`ApiRouter.route`: permission, body, query,
response, status, errors) stays where it is and still drives enforcement
and the OpenAPI document; this module only shortens the handler's body.

- `act(request, load)`: an async context manager yielding
  `(session, record, who)`. `load(session, who, ref)` is a loader from
  `server.views` (`readable_ticket`, `writable_problem`, ...): it finds the
  record named by `ref` among those the caller may see (else `NotFound`)
  and refuses (`Forbidden`) what the caller may see but not do. `ref` is
  the route's first path parameter (`{problem_id}` in
  `/api/v1/problems/{problem_id}/tickets/{ticket_id}`); name another with
  `ref="..."`.
- `unit(request)`: the same without a record, yielding `(session, who)`:
  for creating and listing.
- `fetch(request, load)`: the record and the caller, `(record, who)`, read
  in a session closed before it returns: for handlers that then wait,
  stream or talk to a machine.
- Both open a transaction (committed when the block ends, rolled back when
  it raises) unless the method is GET or HEAD; `write=True` or
  `write=False` says otherwise.
- `answer(request, out)`: the JSON answer with the status the route
  declares (`status=201` on a create), so a handler does not repeat it.
- `audit(session, who, action, ...)`: one entry in the audit trail, in
  the caller's transaction, the caller as actor.

A state transition, declared in a few lines (the route's declaration as
ever; `writable_problem` 404s a problem out of scope, 403s one the caller
may read but not work)::

    @routes.route("POST", "/api/v1/problems/{problem_id}/transition",
                  permission="problems:write", body=Move, response=ProblemDetail,
                  errors=(409,), summary="Move a problem to a status")
    async def move_problem(request: web.Request) -> web.Response:
        to = body(request, Move).status
        async with act(request, writable_problem) as (session, problem, who):
            await problemstates.move(session, problem, to, who.actor())
            return answer(request, await detail(session, problem, who))

and one that needs no record, and audits what it did::

    async with unit(request) as (session, who):
        site = Site(name=req.name)
        session.add(site)
        await session.flush()
        await audit(session, who, "site.create", ("site", site.id), site_id=site.id)
        return answer(request, site_item(site))

The answer is built inside the block (the detail reads the session) and
sent once the block has committed; an error anywhere rolls the whole
step back. Work that must wait for the commit (starting jobs, pushing to
a machine) goes after the block, as before.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.principal import Principal
from server.base.audit import Event
from server.store import auditlog
from server.web.authn import SAFE_METHODS, principal
from server.web.keys import DB
from server.web.routing import json_response, spec_of

T = TypeVar("T")
# (session, caller, reference from the path) -> the record, in the caller's scope
Loader = Callable[[AsyncSession, Principal, str], Awaitable[T]]

_PARAM = re.compile(r"{(\w+)}")


def path_ref(request: web.Request, name: str | None = None) -> str:
    """The path parameter `name`, by default the route's first one."""
    if name is None:
        spec = spec_of(request)
        found = _PARAM.search(spec.path) if spec is not None else None
        if found is None:
            raise LookupError(f"{request.path}: the route has no path parameter to load by")
        name = found.group(1)
    return request.match_info[name]


@asynccontextmanager
async def unit(
    request: web.Request, *, write: bool | None = None
) -> AsyncIterator[tuple[AsyncSession, Principal]]:
    """A database session for the request, and the caller: a transaction for
    a write (by default: any method but GET and HEAD)."""
    who = principal(request)
    db = request.app[DB]
    if write is None:
        write = request.method not in SAFE_METHODS
    async with db.begin() if write else db() as session:
        yield session, who


@asynccontextmanager
async def act(
    request: web.Request,
    load: Loader[T],
    *,
    ref: str | None = None,
    write: bool | None = None,
) -> AsyncIterator[tuple[AsyncSession, T, Principal]]:
    """`unit`, with the route's record loaded in the caller's scope."""
    async with unit(request, write=write) as (session, who):
        yield session, await load(session, who, path_ref(request, ref)), who


async def fetch(
    request: web.Request, load: Loader[T], *, ref: str | None = None
) -> tuple[T, Principal]:
    """The route's record and the caller, read in a session of its own that is
    closed on return: for handlers that go on to wait, stream or call a
    machine without holding the database."""
    async with act(request, load, ref=ref, write=False) as (_, record, who):
        return record, who


def answer(request: web.Request, out: BaseModel) -> web.Response:
    """`out` as JSON, with the status the route declares."""
    spec = spec_of(request)
    return json_response(out, status=spec.status if spec is not None else 200)


async def audit(
    session: AsyncSession,
    who: Principal,
    action: str,
    target: tuple[str, str | None] | None = None,
    *,
    site_id: str | None = None,
    ticket_id: str | None = None,
    details: dict[str, Any] | None = None,
    outcome: str = "success",
) -> None:
    """Append `action` on `target` (type, id) to the audit trail, by the caller."""
    target_type, target_id = target if target is not None else (None, None)
    await auditlog.append(
        session,
        who.actor(),
        Event(
            action,
            outcome=outcome,
            target_type=target_type,
            target_id=target_id,
            site_id=site_id,
            ticket_id=ticket_id,
            details=details or {},
        ),
    )
