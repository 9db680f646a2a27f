"""HQ's HTTPS listener against slow and hostile clients, over real TLS sockets:
headers trickled in are cut off at `http_header_timeout`, one address holds at
most `http_max_unauthenticated` connections that have not authenticated, and
a normal client gets through meanwhile (server.web.guard)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from tests.support import HQHandle

ATTACKER = "127.0.0.2"  # loopback too: another address than the normal client's


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test pins nothing: it is about the socket
    return ctx


async def _connect(hq: HQHandle, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    where = urlsplit(hq.url)
    return await asyncio.open_connection(
        where.hostname, where.port, ssl=_tls(), local_addr=(source, 0)
    )


async def _closed_by_hq(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether HQ closes the connection within `within` seconds (EOF or reset)."""
    try:
        async with asyncio.timeout(within):
            while True:
                data = await reader.read(65536)
                if not data:
                    return True
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False


async def _trickle(writer: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    """A slowloris: a request line, then one header line every 0.3 s, never the end."""
    with contextlib.suppress(ConnectionError, RuntimeError):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: hq\r\n")
        i = 0
        while not stop.is_set() and not writer.is_closing():
            await writer.drain()
            writer.write(f"X-Slow-{i}: {'a' * 10}\r\n".encode())
            i += 1
            await asyncio.sleep(0.3)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 2)


async def _get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, token: str | None = None
) -> int:
    """One keep-alive request on a raw connection; the status (the connection stays open)."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: hq\r\n{auth}\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    await asyncio.wait_for(reader.readexactly(length), 10)
    return int(head.split(b" ", 2)[1])


async def test_slow_headers_are_cut_off_and_a_normal_client_gets_through(hq_factory, sqlite_url):
    hq = await hq_factory(sqlite_url, http_header_timeout=2.0, http_max_unauthenticated=5)
    stop = asyncio.Event()
    conns = [await _connect(hq, ATTACKER) for _ in range(8)]
    started = time.monotonic()
    tricklers = [asyncio.create_task(_trickle(w, stop)) for _, w in conns]
    try:
        watch = [asyncio.create_task(_closed_by_hq(r, 20)) for r, _ in conns]
        # meanwhile a normal client (another address) is served, with and without a token
        async with hq.client(hq.admin_token) as api:
            for _ in range(3):
                assert (await api.get("/healthz"))[0] == 200
                assert (await api.get("/api/v1/me"))[0] == 200
                await asyncio.sleep(0.3)
        closed = await asyncio.gather(*watch)
        took = time.monotonic() - started
        assert all(closed), closed  # those over the count at once, the rest at the timeout
        # bounded by the timeout (2 s) plus slack for a loaded machine, never the trickle
        assert took < 15, took
        # 3 over the count (fewer if a first one timed out while the others connected)
        refused = hq.hq.parts.metrics.registry.get_sample_value(
            "fieldlink_http_connections_refused_total"
        )
        assert 1 <= refused <= 3, refused
    finally:
        stop.set()
        await asyncio.gather(*tricklers, return_exceptions=True)
        for _, w in conns:
            await _close(w)


async def test_a_silent_tls_handshake_is_cut_off(hq_factory, sqlite_url):
    """A client that connects and never starts TLS is closed at the timeout too."""
    hq = await hq_factory(sqlite_url, http_header_timeout=1.0)
    where = urlsplit(hq.url)
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    try:
        assert await _closed_by_hq(reader, 15)
    finally:
        await _close(writer)


async def test_authenticated_connections_leave_the_count(hq_factory, sqlite_url):
    """Connections that made an authenticated request no longer count against
    their address: a 4th, unauthenticated, is still served."""
    hq = await hq_factory(sqlite_url, http_max_unauthenticated=3)
    conns: list[Any] = []
    try:
        for _ in range(3):
            reader, writer = await _connect(hq, ATTACKER)
            conns.append((reader, writer))
            assert await _get(reader, writer, "/api/v1/me", hq.admin_token) == 200
        reader, writer = await _connect(hq, ATTACKER)
        conns.append((reader, writer))
        assert await _get(reader, writer, "/healthz") == 200
        # that one still counts: with 3 such connections open, the next is refused
        for _ in range(2):
            reader, writer = await _connect(hq, ATTACKER)
            conns.append((reader, writer))
            assert await _get(reader, writer, "/healthz") == 200
        reader, writer = await _connect(hq, ATTACKER)
        conns.append((reader, writer))
        assert await _closed_by_hq(reader, 10)
    finally:
        for _, w in conns:
            await _close(w)


async def _exchange(hq: HQHandle, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes on a fresh TLS connection; HQ's status, headers and body."""
    reader, writer = await _connect(hq, "127.0.0.1")
    try:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
        return int(lines[0].split(" ", 2)[1]), headers, body
    finally:
        await _close(writer)


async def test_oversized_request_lines_and_headers_answer_in_the_error_shape(sqlite_hq):
    """A request line over 8,190 bytes answers 414 and a header field over
    8,192 bytes 431, garbage 400, all in the JSON error shape (aiohttp's
    parser answered text/plain); no answer names HQ's software versions."""
    import json

    hq = sqlite_hq
    long_path = b"/api/v1/tickets?q=" + b"a" * 9000
    cases = [
        (b"GET " + long_path + b" HTTP/1.1\r\nHost: hq\r\n\r\n", 414, "uri_too_long"),
        (b"GET /healthz HTTP/1.1\r\nHost: hq\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431, None),
        (b"\x16\x03\x01 nonsense\r\n\r\n", 400, "bad_request"),
    ]
    for raw, want, code in cases:
        status, headers, body = await _exchange(hq, raw)
        assert status == want, (raw[:40], status, body[:200])
        assert headers["content-type"].startswith("application/json"), headers
        err = json.loads(body)["error"]
        assert err["code"] == (code or "headers_too_large") and err["message"], err
        assert "aiohttp" not in headers.get("server", "") and "Python" not in headers.get(
            "server", ""
        ), headers
        assert headers.get("connection", "").lower() == "close", headers
    # ordinary answers (JSON, an error, a page, a static file) name no version either
    for path in ("/healthz", "/api/v1/me", "/login", "/api/openapi.json"):
        status, headers, _ = await _exchange(
            hq, f"GET {path} HTTP/1.1\r\nHost: hq\r\nConnection: close\r\n\r\n".encode()
        )
        assert headers.get("server") == "Fieldlink", (path, status, headers)
