"""Live parts of console pages as server-sent events: the server renders the
same template fragment the page was built with and sends it again whenever it
changes; `live.js` swaps it in. Every tick authenticates the caller again, so
a logout, an expired session or lost rights end the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from server.auth.principal import Principal
from server.console.render import fragment
from server.web.authn import PRINCIPAL_KEY, authenticate
from shared.errors import FieldlinkError

CLOSING = web.AppKey("console_closing", asyncio.Event)
INTERVAL = 2.0
LIFETIME = 300.0  # then the browser reconnects (EventSource does so by itself)


def install(app: web.Application) -> None:
    app[CLOSING] = asyncio.Event()

    async def closing(_: web.Application) -> None:
        app[CLOSING].set()

    app.on_shutdown.append(closing)


def sse(event: str, data: str) -> bytes:
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"event: {event}\n{lines}\n".encode()


async def fragments(
    request: web.Request,
    template: str,
    name: str,
    load: Callable[[web.Application, Principal], Awaitable[Any]],
) -> web.StreamResponse:
    """`stream` of the fragment `template`, rendered with `name` bound to what
    `load(app, caller)` gives at each tick."""
    app = request.app

    async def render(who: Principal) -> str:
        return fragment(request, template, {name: await load(app, who)})

    return await stream(request, render)


async def stream(
    request: web.Request,
    render: Callable[[Principal], Awaitable[str]],
    *,
    interval: float = INTERVAL,
    lifetime: float = LIFETIME,
) -> web.StreamResponse:
    closing = request.app[CLOSING]
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    await resp.prepare(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + lifetime
    last: str | None = None
    try:
        await resp.write(b"retry: 2000\n\n")
        while not closing.is_set() and loop.time() < deadline:
            try:
                who = await authenticate(request)
            except FieldlinkError:
                await resp.write(sse("end", "login"))
                break
            request[PRINCIPAL_KEY] = who
            html = await render(who)
            if html != last:
                await resp.write(sse("fragment", html))
                last = html
            else:
                await resp.write(b": tick\n\n")  # notices a browser that went away
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), interval)
    except (ConnectionResetError, ConnectionError):
        return resp
    return resp
