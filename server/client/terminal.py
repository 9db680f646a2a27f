"""The local end of a remote shell: the terminal in raw mode, bytes both ways
over HQ's terminal WebSocket, resizes, and the terminal restored whatever
happens.

Protocol (server/api/sessions.py): binary frames carry the terminal's bytes
both ways; the client's text frames are `{"type": "resize", "cols", "rows"}`
and `{"type": "end"}`; HQ's are `{"type": "status", ...}` and
`{"type": "closed", "reason"}`.

In raw mode every key goes to the remote side: Ctrl-C, Ctrl-Z, Ctrl-D. As
with ssh, `~.` at the start of a line ends the session from here (`~~` sends
one `~`). SIGTERM, SIGHUP and SIGQUIT end the session too; the terminal
settings are put back on every way out (RawMode's `finally`, and atexit).
When stdin is not a terminal nothing is switched: its bytes are sent as
they are, and its end becomes Ctrl-D on the remote terminal -- sent once the
remote side has shown something and then gone quiet (a shell that is still
starting drops an early Ctrl-D), and again whenever it prints and goes quiet
once more, so `fieldlink shell ... < script` ends when the script is done.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import select
import signal
import termios
import tty
from dataclasses import dataclass
from typing import Any

import aiohttp

DEFAULT_SIZE = (80, 24)
READ_SIZE = 65536
GRACE = 3.0  # after asking HQ to end, how long to wait for it to close
QUIET = 0.3  # seconds without remote output before stdin's end is sent as Ctrl-D
END_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class EscapeScanner:
    """ssh's escape, byte by byte: `~.` at the start of a line means "end the
    session"; `~~` sends one `~`; a `~` before anything else is sent as typed.
    Pure."""

    def __init__(self) -> None:
        self._line_start = True
        self._tilde = False

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes to send, whether the session should end)."""
        out = bytearray()
        for value in data:
            byte = bytes((value,))
            if self._tilde:
                self._tilde = False
                if byte == b".":
                    return bytes(out), True
                out += b"~"
                if byte == b"~":
                    self._line_start = False
                    continue
            if self._line_start and byte == b"~":
                self._tilde = True
                continue
            out += byte
            self._line_start = byte in (b"\r", b"\n")
        return bytes(out), False


def terminal_size(fd: int) -> tuple[int, int]:
    """(cols, rows) of the terminal on `fd`, within what HQ accepts."""
    try:
        size = os.get_terminal_size(fd)
        cols, rows = size.columns, size.lines
    except OSError:
        cols, rows = DEFAULT_SIZE
    if cols <= 0 or rows <= 0:
        cols, rows = DEFAULT_SIZE
    return min(max(cols, 10), 1000), min(max(rows, 5), 1000)


class RawMode:
    """The terminal on `fd` in raw mode inside the `with`; its settings put
    back on leaving it, or at interpreter exit if something skipped that."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved: list[Any] | None = None

    def __enter__(self) -> RawMode:
        if os.isatty(self.fd):
            self._saved = termios.tcgetattr(self.fd)
            atexit.register(self.restore)
            tty.setraw(self.fd, termios.TCSANOW)
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def restore(self) -> None:
        saved, self._saved = self._saved, None
        if saved is not None:
            atexit.unregister(self.restore)
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte, also to a descriptor someone made non-blocking."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[written:]


@dataclass
class Outcome:
    """How the terminal ended, from this side."""

    closed_reason: str | None = None  # HQ's `closed` message
    status: dict[str, Any] | None = None  # HQ's last `status` message
    ended_here: bool = False  # `~.`, a signal, or the local terminal went away
    signal: int | None = None
    error: str | None = None


def _json(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields})


async def bridge(
    ws: aiohttp.ClientWebSocketResponse,
    *,
    stdin_fd: int,
    stdout_fd: int,
    interactive: bool,
    watch: bool = False,
) -> Outcome:
    """Copy bytes between the local terminal and the WebSocket until HQ closes
    it. `watch`: read-only, nothing is sent."""
    loop = asyncio.get_running_loop()
    outcome = Outcome()
    outbox: asyncio.Queue[bytes | str] = asyncio.Queue()
    scanner = EscapeScanner() if interactive else None
    asked_end = asyncio.Event()
    reading = False
    shown = asyncio.Event()  # the remote side printed something

    def end_here(sig: int | None = None) -> None:
        if not asked_end.is_set():
            outcome.ended_here = True
            outcome.signal = outcome.signal or sig
            outbox.put_nowait(_json("end"))
            asked_end.set()

    def take(data: bytes) -> None:
        if not data:
            stop_reading()
            if interactive:
                end_here()  # the local terminal went away
            else:
                tasks.append(asyncio.create_task(send_eof()))
            return
        ended = False
        if scanner is not None:
            data, ended = scanner.feed(data)
        if data and not asked_end.is_set():
            outbox.put_nowait(data)
        if ended:
            end_here()

    def on_readable() -> None:
        try:
            data = os.read(stdin_fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        take(data)

    def stop_reading() -> None:
        nonlocal reading
        if reading:
            loop.remove_reader(stdin_fd)
            reading = False

    def on_resize() -> None:
        cols, rows = terminal_size(stdout_fd)
        outbox.put_nowait(_json("resize", cols=cols, rows=rows))

    async def send_eof() -> None:
        # stdin ended: Ctrl-D each time the remote side has printed and gone quiet
        while True:
            await shown.wait()
            shown.clear()
            with contextlib.suppress(TimeoutError):
                while True:  # until QUIET seconds pass without output
                    await asyncio.wait_for(shown.wait(), QUIET)
                    shown.clear()
            outbox.put_nowait(b"\x04")

    async def read_file() -> None:
        # stdin that cannot be polled (a regular file): plain reads never block long
        while True:
            data = await asyncio.to_thread(os.read, stdin_fd, READ_SIZE)
            take(data)
            if not data:
                return

    async def send() -> None:
        while True:
            item = await outbox.get()
            if isinstance(item, bytes):
                await ws.send_bytes(item)
            else:
                await ws.send_str(item)

    async def receive() -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                write_all(stdout_fd, msg.data)
                shown.set()
            elif msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    continue
                if not isinstance(frame, dict):
                    continue
                if frame.get("type") == "closed":
                    outcome.closed_reason = str(frame.get("reason") or "")
                elif frame.get("type") == "status":
                    outcome.status = frame
            elif msg.type == aiohttp.WSMsgType.ERROR:
                outcome.error = str(ws.exception() or "WebSocket error")
                return

    tasks: list[asyncio.Task[Any]] = []
    handled: list[signal.Signals] = []
    try:
        if not watch:
            try:
                loop.add_reader(stdin_fd, on_readable)
                reading = True
            except (PermissionError, OSError, ValueError):
                tasks.append(asyncio.create_task(read_file()))
            if interactive:
                loop.add_signal_handler(signal.SIGWINCH, on_resize)
                handled.append(signal.SIGWINCH)
            tasks.append(asyncio.create_task(send()))
        for sig in END_SIGNALS:
            loop.add_signal_handler(sig, end_here, sig)
            handled.append(sig)
        receiver = asyncio.create_task(receive())
        tasks.append(receiver)
        asked = asyncio.create_task(asked_end.wait())
        tasks.append(asked)
        await asyncio.wait({receiver, asked}, return_when=asyncio.FIRST_COMPLETED)
        if not receiver.done():
            if watch:
                receiver.cancel()  # nothing to ask HQ: just stop
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(receiver), GRACE)
        if receiver.done() and not receiver.cancelled():
            failure = receiver.exception()
            if failure is not None:
                raise failure
    finally:
        stop_reading()
        for sig in handled:
            loop.remove_signal_handler(sig)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return outcome
