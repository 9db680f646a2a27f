"""HQ's HTTPS API, pinned to HQ's TLS certificate fingerprint.

Every request goes through an aiohttp connector with `aiohttp.Fingerprint`:
the certificate must hash to the pinned SHA-256, whoever signed it, and no CA
is trusted instead. The one connection made without a pin is
`probe_fingerprint`, which completes a TLS handshake to read the certificate
(so `fieldlink login` can show it and ask) and sends nothing.

aiohttp's and ssl's exceptions are mapped to `errors.Unreachable` here, and
HQ's error answers to `errors.ApiError`. Streams (NDJSON runs, server-sent
events) are split into lines here, without aiohttp's line length limit: a
run's final result line carries its whole output. File bodies stream both
ways in chunks, and the terminal's WebSocket is pinned the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
)
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from server.client.errors import ApiError, IdleTimeout, Unreachable
from shared.enrolltoken import cert_fingerprint
from shared.version import __version__

CONNECT_TIMEOUT = 15.0
REQUEST_TIMEOUT = 60.0
MAX_LINE = 64 * 1024 * 1024  # a run's result carries at most a few MiB of output
WS_HEARTBEAT = 20.0  # ping a quiet terminal so dead connections are noticed
WS_MAX_MESSAGE = 4 * 1024 * 1024


async def probe_fingerprint(url: str, timeout: float = CONNECT_TIMEOUT) -> str:
    """The SHA-256 fingerprint of the certificate HQ presents at `url`.

    Certificate checks are off for this one handshake on purpose: nothing is
    sent, and the caller pins what it read (after a person accepted it, or
    against `--fingerprint`) before any request."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or 443
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=host), timeout
        )
    except TimeoutError:
        raise Unreachable(f"HQ at {url} did not answer within {timeout:g}s") from None
    except (OSError, ssl.SSLError) as exc:
        raise Unreachable(f"cannot reach HQ at {url}: {exc}") from None
    try:
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    finally:
        writer.close()
        # closing is best effort; we have what we came for
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 5)
    if not der:
        raise Unreachable(f"HQ at {url} presented no certificate")
    return cert_fingerprint(der)


class LineSplitter:
    """Bytes in, complete lines out (without their newline). Pure."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buf = bytearray()
        self._max = max_line

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buf += chunk
        lines: list[bytes] = []
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                break
            lines.append(bytes(self._buf[:end]).rstrip(b"\r"))
            del self._buf[: end + 1]
        if len(self._buf) > self._max:
            raise Unreachable(f"HQ sent a line longer than {self._max} bytes")
        return lines

    def rest(self) -> bytes:
        """What followed the last newline (a stream should end with one)."""
        out = bytes(self._buf).rstrip(b"\r")
        self._buf.clear()
        return out


@dataclass
class SseParser:
    """Server-sent events, line by line: `feed` answers (event, data) when one
    is complete (at its blank line). Pure."""

    event: str = "message"
    data: list[str] | None = None

    def feed(self, line: str) -> tuple[str, str] | None:
        if line == "":
            if self.data is None:
                self.event = "message"
                return None
            done = (self.event, "\n".join(self.data))
            self.event, self.data = "message", None
            return done
        if line.startswith(":"):
            return None  # a comment (keep-alive)
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self.event = value
        elif name == "data":
            self.data = [*(self.data or []), value]
        return None


def _error_from(status: int, reason: str, text: str, retry_after: str | None) -> ApiError:
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        fields = err.get("fields") or {}
        allowed = err.get("allowed")
        return ApiError(
            status,
            str(err.get("code") or "error"),
            str(err.get("message") or reason),
            {str(k): str(v) for k, v in fields.items()} if isinstance(fields, dict) else {},
            retry_after,
            [str(a) for a in allowed] if isinstance(allowed, list) else None,
        )
    return ApiError(status, "http_error", f"HQ answered {status} {reason}".strip(), {}, retry_after)


class Api:
    """One HQ, one pinned connection pool. Use as `async with Api(...) as api`."""

    def __init__(self, url: str, fingerprint: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.fingerprint = fingerprint
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"Api({self.url!r})"

    def _pin(self) -> aiohttp.Fingerprint:
        return aiohttp.Fingerprint(bytes.fromhex(self.fingerprint))

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": f"fieldlink/{__version__}", "Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def __aenter__(self) -> Api:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._pin()),
            headers=self._headers(),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with Api(...)`"
        return self._session

    @contextmanager
    def _mapped(self, idle: float | None = None) -> Iterator[None]:
        """aiohttp's and ssl's exceptions, as ours."""
        try:
            yield
        except aiohttp.ServerFingerprintMismatch as exc:
            raise Unreachable(
                f"HQ at {self.url} presented a TLS certificate with fingerprint "
                f"{exc.got.hex()}, not the pinned {exc.expected.hex()}: refusing to talk to it. "
                f"If HQ's certificate was replaced on purpose, run `fieldlink login {self.url}` "
                "again."
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(f"cannot reach HQ at {self.url}: {exc.os_error}") from None
        except aiohttp.ServerTimeoutError:
            if idle is not None:
                raise IdleTimeout(f"HQ at {self.url} sent nothing for {idle:g}s") from None
            raise Unreachable(f"HQ at {self.url} did not answer in time") from None
        except TimeoutError:
            raise Unreachable(f"HQ at {self.url} did not answer in time") from None
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
            raise Unreachable(f"TLS with HQ at {self.url} failed: {exc}") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            raise Unreachable(f"the connection to HQ at {self.url} was lost: {exc}") from None
        except aiohttp.ClientError as exc:
            raise Unreachable(f"request to HQ at {self.url} failed: {exc}") from None
        except OSError as exc:
            raise Unreachable(f"request to HQ at {self.url} failed: {exc}") from None

    def mapped(self, idle: float | None = None) -> contextlib.AbstractContextManager[None]:
        """For callers holding a stream or WebSocket: foreign errors as ours."""
        return self._mapped(idle)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        """One JSON request; the decoded answer, or ApiError with HQ's reason."""
        with self._mapped():
            async with self.session.request(
                method, self.url + path, json=json_body, params=params
            ) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    raise _error_from(
                        resp.status, resp.reason or "", text, resp.headers.get("Retry-After")
                    )
        try:
            return json.loads(text) if text else None
        except ValueError:
            raise Unreachable(f"HQ answered {method} {path} with something not JSON") from None

    async def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        return await self.request("GET", path, params=params)

    async def post(self, path: str, body: Any = None) -> Any:
        return await self.request("POST", path, json_body=body if body is not None else {})

    async def pages(
        self, path: str, params: dict[str, str] | None = None, limit: int | None = None
    ) -> list[Any]:
        """Every item of a list endpoint (at most `limit`), following `next` cursors."""
        items: list[Any] = []
        query = dict(params or {})
        for _ in range(10_000):
            if limit is not None and len(items) >= limit:
                break
            page = await self.get(path, query)
            items.extend(page.get("items") or [])
            cursor = page.get("next")
            if not cursor:
                break
            query["after"] = str(cursor)
        return items if limit is None else items[:limit]

    @asynccontextmanager
    async def _stream(
        self,
        method: str,
        path: str,
        *,
        json_body: Any,
        params: dict[str, str] | None,
        idle: float,
        accept: str,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=idle)
        with self._mapped(idle):
            resp = await self.session.request(
                method,
                self.url + path,
                json=json_body,
                params=params,
                timeout=timeout,
                headers={"Accept": accept},
            )
        try:
            if resp.status >= 400:
                with self._mapped(idle):
                    text = await resp.text()
                raise _error_from(
                    resp.status, resp.reason or "", text, resp.headers.get("Retry-After")
                )
            # the caller's own errors pass through unmapped
            yield resp
        finally:
            resp.release()

    async def lines(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        idle: float,
        accept: str = "application/x-ndjson",
    ) -> AsyncGenerator[bytes, None]:
        """A streamed answer's lines as they arrive; IdleTimeout if it goes quiet."""
        async with self._stream(
            method, path, json_body=json_body, params=params, idle=idle, accept=accept
        ) as resp:
            splitter = LineSplitter()
            while True:
                with self._mapped(idle):
                    chunk = await resp.content.readany()
                if not chunk:
                    break
                for line in splitter.feed(chunk):
                    yield line
            rest = splitter.rest()
            if rest:
                yield rest

    async def ndjson(
        self, path: str, body: Any, *, params: dict[str, str] | None = None, idle: float
    ) -> AsyncGenerator[dict[str, Any], None]:
        """POST, then each JSON object of the newline-delimited answer."""
        async for line in self.lines("POST", path, json_body=body, params=params, idle=idle):
            if not line.strip():
                continue
            try:
                frame = json.loads(line)
            except ValueError:
                raise Unreachable(
                    f"HQ sent a stream line that is not JSON: {line[:80]!r}"
                ) from None
            if isinstance(frame, dict):
                yield frame

    async def read(
        self,
        path: str,
        *,
        accept: str,
        idle: float = REQUEST_TIMEOUT,
        params: dict[str, str] | None = None,
    ) -> bytes:
        """GET a whole answer that is not JSON (a recording, a report), as bytes."""
        async with self._stream(
            "GET", path, json_body=None, params=params, idle=idle, accept=accept
        ) as resp:
            with self._mapped(idle):
                return await resp.read()

    async def download(
        self,
        path: str,
        params: dict[str, str],
        sink: Callable[[bytes], Awaitable[None]],
        *,
        idle: float,
    ) -> None:
        """GET a streamed body, handing each chunk to `sink` as it arrives."""
        async with self._stream(
            "GET", path, json_body=None, params=params, idle=idle, accept="application/octet-stream"
        ) as resp:
            while True:
                with self._mapped(idle):
                    chunk = await resp.content.readany()
                if not chunk:
                    return
                await sink(chunk)

    async def upload(
        self, path: str, params: dict[str, str], chunks: AsyncIterable[bytes], *, idle: float
    ) -> Any:
        """PUT a streamed body (chunked); HQ's JSON answer."""
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=idle)
        with self._mapped(idle):
            async with self.session.put(
                self.url + path,
                params=params,
                data=chunks,
                timeout=timeout,
                headers={"Content-Type": "application/octet-stream"},
            ) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    raise _error_from(
                        resp.status, resp.reason or "", text, resp.headers.get("Retry-After")
                    )
        try:
            return json.loads(text) if text else None
        except ValueError:
            raise Unreachable(f"HQ answered PUT {path} with something not JSON") from None

    @asynccontextmanager
    async def websocket(
        self, path: str, params: dict[str, str]
    ) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        """A WebSocket to HQ, pinned like every request, with the bearer token.

        It has its own client session: the pool's total request timeout must
        not cut a terminal that stays open for an hour. A refused handshake
        raises ApiError with HQ's status (aiohttp does not keep the body)."""
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._pin()),
            headers=self._headers(),
            timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT),
        )
        try:
            with self._mapped():
                try:
                    ws = await session.ws_connect(
                        self.url + path,
                        params=params,
                        heartbeat=WS_HEARTBEAT,
                        max_msg_size=WS_MAX_MESSAGE,
                        ssl=self._pin(),
                    )
                except aiohttp.WSServerHandshakeError as exc:
                    raise ApiError(
                        exc.status,
                        "websocket_refused",
                        f"HQ refused the WebSocket: {exc.status} {exc.message}",
                    ) from None
            try:
                yield ws
            finally:
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    await ws.close()
        finally:
            await session.close()

    async def events(self, path: str, *, idle: float) -> AsyncGenerator[tuple[str, Any], None]:
        """GET server-sent events: (event name, decoded JSON data)."""
        parser = SseParser()
        async for raw in self.lines("GET", path, idle=idle, accept="text/event-stream"):
            found = parser.feed(raw.decode("utf-8", "replace"))
            if found is None:
                continue
            name, data = found
            try:
                yield name, json.loads(data) if data else None
            except ValueError:
                yield name, data


def host_of(url: str) -> str:
    return urlsplit(url).netloc
