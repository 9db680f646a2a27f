"""A local control socket (DATA_DIR/run/control.sock, 0600) through which the
admin CLI, which shares the data directory and database, tells the running
server about changes it must act on at once (an agent revoked)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[None]]


class ControlServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self._path = path
        self._handler = handler
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._path.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self._path))
        finally:
            os.umask(old)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ValueError("not an object")
            await self._handler(message)
            writer.write(b'{"ok": true}\n')
        except (ValueError, TimeoutError) as exc:
            writer.write(json.dumps({"ok": False, "error": str(exc)}).encode() + b"\n")
        finally:
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._path.unlink(missing_ok=True)


async def notify(path: Path, message: dict[str, Any], timeout: float = 5.0) -> bool:
    """Tell the running server; False if none is running on this data dir."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(path)), timeout=timeout
        )
    except (OSError, TimeoutError):  # no server on this data dir
        return False
    try:
        writer.write(json.dumps(message).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout=timeout)
        return bool(json.loads(line or b"{}").get("ok"))
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        writer.close()
