"""HQ's HTTPS listener, with bounds on slow and unauthenticated clients.

- A client has `http_header_timeout` seconds to finish the TLS handshake, then
  as long again to send a request's headers (from connecting, or from the end
  of the previous response on a kept-alive connection); otherwise the
  connection is closed. A request being handled (a slow upload, a long run, a
  WebSocket) is not cut: the clock runs only while HQ waits for headers.
- At most `http_max_unauthenticated` connections from one address may be
  open without having made an authenticated request (a valid token or console
  session); one more is closed as soon as its TLS handshake ends. A
  connection leaves the count at its first authenticated request.

Connections refused for the count are counted in
`fieldlink_http_connections_refused`. A trickle of header bytes does not reset
the clock (slowloris).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from server.base.metrics import Metrics

log = structlog.get_logger(__name__)


class Guard:
    """Per-address count of connections not yet authenticated."""

    def __init__(self, header_timeout: float, max_unauthenticated: int, metrics: Metrics) -> None:
        self.header_timeout = header_timeout
        self.max_unauthenticated = max_unauthenticated
        self.metrics = metrics
        self.unauthenticated: Counter[str] = Counter()

    def admit(self, address: str) -> bool:
        if self.unauthenticated[address] >= self.max_unauthenticated:
            self.metrics.http_refused.inc()
            log.debug("http_connection_refused", peer=address, reason="unauthenticated_limit")
            return False
        self.unauthenticated[address] += 1
        return True

    def release(self, address: str) -> None:
        left = self.unauthenticated[address] - 1
        if left > 0:
            self.unauthenticated[address] = left
        else:
            del self.unauthenticated[address]


class GuardedHandler(RequestHandler):
    """aiohttp's request handler, counted against its address until it
    authenticates. The header clock is aiohttp's keep-alive timer, which runs
    from the connection's start and after each response, and closes the
    connection if no complete request has arrived by then."""

    def __init__(self, manager: web.Server, guard: Guard, **kwargs: Any) -> None:
        super().__init__(manager, keepalive_timeout=guard.header_timeout, **kwargs)
        self.guard = guard
        self.address: str | None = None  # set while counted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if self.guard.admit(address):
            self.address = address
        else:
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.authenticated()
        super().connection_lost(exc)

    def authenticated(self) -> None:
        if self.address is not None:
            self.guard.release(self.address)
            self.address = None


def authenticated(request: web.Request) -> None:
    """The request carried valid credentials: its connection no longer
    counts as unauthenticated."""
    handler = request.protocol
    if isinstance(handler, GuardedHandler):
        handler.authenticated()


class GuardedSite(web.BaseSite):
    """A TLS TCP site whose connections are `GuardedHandler`s."""

    __slots__ = ("_guard", "_host", "_port")

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, ssl_context: Any, guard: Guard
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._guard = guard

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        guard = self._guard

        def factory() -> GuardedHandler:
            return GuardedHandler(server, guard, loop=loop, access_log=None)

        self._server = await loop.create_server(
            factory,
            self._host,
            self._port,
            ssl=self._ssl_context,
            ssl_handshake_timeout=guard.header_timeout,
            reuse_address=True,
        )
