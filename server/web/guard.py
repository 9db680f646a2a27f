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

Requests aiohttp's parser refuses before any route sees them answer in the
API's error shape and close the connection: a request line over
`MAX_REQUEST_LINE` bytes 414 (`uri_too_long`), a header field over
`MAX_HEADER_FIELD` bytes 431 (`headers_too_large`), anything else the parser
cannot read 400. No answer names HQ's software or its version (`Server:
Fieldlink`).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import structlog
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from server.base.metrics import Metrics

log = structlog.get_logger(__name__)

SERVER = "Fieldlink"
# aiohttp's LineTooLong names the limit it hit, and only that tells a request
# line from a header field apart: the two limits differ on purpose.
MAX_REQUEST_LINE = 8190
MAX_HEADER_FIELD = 8192
_PLAIN_HEADERS = {
    hdrs.SERVER: SERVER,
    hdrs.CONNECTION: "close",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


async def server_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the Server header names no software version
    (aiohttp's default is `Python/3.x aiohttp/3.y.z`)."""
    response.headers[hdrs.SERVER] = SERVER


def _refusal(status: int, exc: BaseException | None) -> tuple[int, str, str]:
    """(status, code, message) for a request the parser refused (or a failure
    outside the application)."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == MAX_REQUEST_LINE:
            return 414, "uri_too_long", f"the request line is longer than {limit} bytes"
        return 431, "headers_too_large", f"a header field is longer than {limit} bytes"
    if isinstance(exc, HttpProcessingError) or 400 <= status < 500:
        return 400, "bad_request", "the request could not be read as HTTP"
    return 500, "internal", "internal error"


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
        super().__init__(
            manager,
            keepalive_timeout=guard.header_timeout,
            max_line_size=MAX_REQUEST_LINE,
            max_field_size=MAX_HEADER_FIELD,
            **kwargs,
        )
        self.guard = guard
        self.address: str | None = None  # set while counted

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The API's error shape for what fails before (or outside) the
        application, the parser's refusals above all; the connection closes."""
        if isinstance(exc, HttpProcessingError):
            # a client's malformed request, not HQ's failure: no traceback
            log.debug("http_request_unreadable", peer=self.address, error=str(exc)[:200])
            if request.writer.output_size > 0:
                raise ConnectionError("a response was already sent")
        else:
            super().handle_error(request, status, exc, message)  # logs; raises if sent
        status, code, text = _refusal(status, exc)
        resp = web.json_response({"error": {"code": code, "message": text}}, status=status)
        resp.headers.update(_PLAIN_HEADERS)
        resp.force_close()
        return resp

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
