"""The agent's one connection to HQ: a reverse-direction SSH connection.

The agent dials out (`asyncssh.connect_reverse`) and plays the SSH *server*;
HQ is the SSH client and opens every channel. The agent accepts HQ only with
the client key pinned at enrollment, and refuses port forwarding, agent
forwarding and anything it does not offer.

`Link.run()` keeps the connection up: exponential backoff with jitter between
attempts, capped, reset after a connection that stayed up a while.

The `telemetry` subsystem session sends a hello, then every spooled frame
(oldest first) and every new one, and applies HQ's acks to the spool. HQ's
receipts (the answer to a help request or rating) are recorded in the spool
and handed to whoever waits for them; HQ's list of the machine's tickets is
kept, in memory and in the spool, for `fieldlink-agent tickets`; HQ's word on
remote sessions goes to the session book (agent.sessions), which enforces it.

Other channels HQ opens: subsystems with a handler (`fieldlink-run`,
`fieldlink-desktop`), a shell (no command, a terminal: the shell handler, agent.shell) and SFTP
(the `sftp_factory`, agent.files). The built-in line editor is off, so a
shell's PTY gets the engineer's bytes untouched; anything else is refused.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncssh
import structlog

from agent.sessions import SessionBook
from agent.spool import Spool
from shared import protocol as p

log = structlog.get_logger(__name__)

_STABLE_AFTER = 30.0  # a connection up this long resets the backoff
_BATCH = 200
_RECENT_RECEIPTS = 256  # receipts kept in memory for a waiter that registers late


class Backoff:
    """Exponential backoff with jitter: 1, 2, 4 ... capped; each wait is drawn
    from [d/2, d] so a fleet reconnecting after an HQ restart spreads out."""

    def __init__(self, cap: float, base: float = 1.0) -> None:
        self.cap = cap
        self.base = base
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 32)
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class _AgentSSHServer(asyncssh.SSHServer):
    """Auth policy of the agent's SSH server role: only the pinned HQ key."""

    def __init__(self, pinned: asyncssh.SSHKey) -> None:
        self._pinned = pinned
        self._peer = "?"

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        peer = conn.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if peer else "?"

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if key.public_data == self._pinned.public_data:
            return True
        log.warning(
            "hq_key_refused",
            peer=self._peer,
            key_fingerprint=key.get_fingerprint("sha256"),
            pinned_fingerprint=self._pinned.get_fingerprint("sha256"),
        )
        return False


@dataclass(frozen=True)
class TicketList:
    """HQ's latest list of this machine's tickets, and when it arrived (epoch seconds)."""

    items: list[p.TicketBrief]
    received_at: float


class Telemetry:
    """Sends spooled frames to HQ and applies acks, receipts and ticket lists.
    One live session at a time."""

    def __init__(
        self,
        spool: Spool,
        hello: Callable[[], Awaitable[p.Hello]],
        sessions: SessionBook | None = None,
    ) -> None:
        self._spool = spool
        self._hello = hello
        self.sessions = sessions if sessions is not None else SessionBook()
        self._new = asyncio.Event()
        self._rehello = False
        self._current: asyncssh.SSHServerProcess[bytes] | None = None
        self._waiters: dict[tuple[str, int], list[asyncio.Future[p.Receipt]]] = {}
        self._receipts: OrderedDict[tuple[str, int], p.Receipt] = OrderedDict()
        self._kb_ids = itertools.count(1)
        self._kb_waiters: dict[int, asyncio.Future[p.KbSuggestions]] = {}
        self.tickets = self._saved_tickets()

    def _saved_tickets(self) -> TicketList | None:
        saved = self._spool.load_tickets()
        if saved is None:
            return None
        data, received_at = saved
        try:
            frame = p.decode_hq_frame(data.encode())
        except p.FrameError as exc:
            log.warning("saved_tickets_unreadable", error=str(exc))
            return None
        if not isinstance(frame, p.Tickets):
            return None
        return TicketList(frame.items, received_at)

    @property
    def open(self) -> bool:
        """Whether HQ has the telemetry channel open now."""
        return self._current is not None

    def notify(self) -> None:
        """A frame was appended to the spool."""
        self._new.set()

    def resend_hello(self) -> None:
        """What the hello says has changed (policy reload): send it again."""
        self._rehello = True
        self._new.set()

    async def receipt(self, kind: str, seq: int, timeout: float) -> p.Receipt | None:
        """HQ's receipt for the spooled request (kind, seq), waiting up to
        `timeout` seconds for it; None if it has not come by then."""
        key = (kind, seq)
        if key in self._receipts:
            return self._receipts[key]
        future: asyncio.Future[p.Receipt] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(future)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            waiting = self._waiters.get(key, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self._waiters.pop(key, None)

    async def ask_kb(self, text: str, limit: int, timeout: float) -> p.KbSuggestions | None:
        """HQ's knowledge-base suggestions for `text`; None when HQ is not
        connected or does not answer within `timeout` seconds. Not spooled."""
        process = self._current
        if process is None:
            return None
        query_id = next(self._kb_ids)
        future: asyncio.Future[p.KbSuggestions] = asyncio.get_running_loop().create_future()
        self._kb_waiters[query_id] = future
        try:
            process.stdout.write(p.encode(p.KbQuery(id=query_id, text=text, limit=limit)))
            return await asyncio.wait_for(future, timeout)
        except (TimeoutError, asyncssh.Error, OSError, BrokenPipeError):
            return None
        finally:
            self._kb_waiters.pop(query_id, None)

    async def _apply_receipt(self, receipt: p.Receipt) -> None:
        """Record HQ's answer (before its ack is applied), then hand it to waiters."""
        try:
            await asyncio.to_thread(
                self._spool.answer,
                receipt.kind,
                receipt.seq,
                ok=receipt.ok,
                ticket=receipt.ticket,
                message=receipt.message,
            )
        except (sqlite3.Error, OSError) as exc:  # the person waiting still gets it
            log.warning("receipt_unrecorded", kind=receipt.kind, seq=receipt.seq, error=str(exc))
        key = (receipt.kind, receipt.seq)
        self._receipts[key] = receipt
        self._receipts.move_to_end(key)
        while len(self._receipts) > _RECENT_RECEIPTS:
            self._receipts.popitem(last=False)
        for future in self._waiters.pop(key, []):
            if not future.done():
                future.set_result(receipt)
        log.info(
            "hq_receipt",
            kind=receipt.kind,
            seq=receipt.seq,
            ok=receipt.ok,
            ticket=receipt.ticket,
        )

    async def _apply_tickets(self, frame: p.Tickets) -> None:
        received_at = time.time()
        self.tickets = TicketList(frame.items, received_at)
        await asyncio.to_thread(
            self._spool.save_tickets, p.encode(frame).decode().strip(), received_at
        )

    async def serve(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        if self._current is not None:
            self._current.close()
        self._current = process
        self.sessions.reset_live()  # HQ re-sends the live ones after the hello
        sender = asyncio.create_task(self._send(process))
        try:
            await self._receive(process)
        except (asyncssh.Error, OSError, p.FrameError) as exc:
            log.warning("telemetry_receive_failed", error=str(exc))
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            if self._current is process:
                self._current = None
            process.exit(0)

    async def _send(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        try:
            self._rehello = False
            process.stdout.write(p.encode(await self._hello()))
            cursor = 0
            while True:
                self._new.clear()
                if self._rehello:
                    self._rehello = False
                    process.stdout.write(p.encode(await self._hello()))
                batch = await asyncio.to_thread(self._spool.pending, cursor, _BATCH)
                if not batch:
                    await self._new.wait()
                    continue
                process.stdout.write(b"".join(item.data for item in batch))
                cursor = batch[-1].id
                await process.stdout.drain()
        except (asyncssh.Error, OSError, BrokenPipeError) as exc:
            log.info("telemetry_send_stopped", error=str(exc))

    async def _receive(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        # HQ's frames are small acks and receipts, but a ticket list (50 titles of
        # up to 300 characters, 4 bytes each in UTF-8) can pass 64 KiB.
        decoder = p.FrameDecoder(limit=p.MAX_FRAME_BYTES)
        while True:
            data = await process.stdin.read(65536)
            if not data:
                return
            for line in decoder.feed(data):
                frame = p.decode_hq_frame(line)
                try:
                    await self._apply(frame)
                except (sqlite3.Error, OSError) as exc:
                    # a spool that cannot be written (a full disk) loses this update
                    # (an unapplied ack only means HQ gets the frame again later)
                    log.warning("spool_update_failed", frame=frame.type, error=str(exc))

    async def _apply(self, frame: p.AnyHQFrame) -> None:
        if isinstance(frame, p.Ack):
            await asyncio.to_thread(self._spool.ack, frame.kind, frame.seqs)
        elif isinstance(frame, p.Receipt):
            await self._apply_receipt(frame)
        elif isinstance(frame, p.Tickets):
            await self._apply_tickets(frame)
        elif isinstance(frame, p.SessionInfo):
            self.sessions.update(frame)
        elif isinstance(frame, p.KbSuggestions):
            waiter = self._kb_waiters.get(frame.id)
            if waiter is not None and not waiter.done():
                waiter.set_result(frame)


class Link:
    """Keeps one reverse SSH connection to HQ up, with backoff between tries."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        host_key: asyncssh.SSHKey,
        hq_key: asyncssh.SSHKey,
        keepalive_interval: float,
        backoff_cap: float,
        telemetry: Telemetry,
        spool: Spool,
        process_handlers: dict[str, Callable[[Any], Awaitable[None]]] | None = None,
        shell_handler: Callable[[Any], Awaitable[None]] | None = None,
        sftp_factory: Callable[[Any], Any] | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._host_key = host_key
        self._hq_key = hq_key
        self._keepalive = keepalive_interval
        self._backoff = Backoff(backoff_cap)
        self._telemetry = telemetry
        self._spool = spool
        self._handlers = process_handlers or {}
        self._shell = shell_handler
        self._sftp = sftp_factory
        self.connected = asyncio.Event()
        self._conn: asyncssh.SSHServerConnection | None = None

    async def _process(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        if process.subsystem == p.TELEMETRY_SUBSYSTEM:
            await self._telemetry.serve(process)
            return
        handler = self._handlers.get(process.subsystem or "")
        if handler is None and process.subsystem is None and process.command is None:
            handler = self._shell
        if handler is not None:
            await handler(process)
            return
        what = process.subsystem or process.command or "shell"
        log.warning("request_refused", what=what)
        process.stderr.write(f"fieldlink-agent: {what!r} is not offered\n".encode())
        process.exit(127)

    async def connect_once(self) -> asyncssh.SSHServerConnection:
        return await asyncssh.connect_reverse(
            self._host,
            self._port,
            server_factory=lambda: _AgentSSHServer(self._hq_key),
            server_host_keys=[self._host_key],
            process_factory=self._process,
            sftp_factory=self._sftp,
            encoding=None,
            allow_pty=True,
            line_editor=False,
            agent_forwarding=False,
            x11_forwarding=False,
            keepalive_interval=self._keepalive,
            keepalive_count_max=2,
            login_timeout=30,
            config=None,
        )

    async def _record(self, **state: str | int) -> None:
        """Note the link's state for `status`; a spool that cannot take it
        (a full disk) must not bring the link down."""
        try:
            await asyncio.to_thread(self._spool.set_state, **state)
        except (sqlite3.Error, OSError) as exc:
            log.warning("link_state_unrecorded", error=str(exc))

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                conn = await asyncio.wait_for(self.connect_once(), timeout=60)
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                delay = self._backoff.next_delay()
                log.info(
                    "hq_connect_failed",
                    error=str(exc) or type(exc).__name__,
                    retry_in=round(delay, 1),
                )
                await asyncio.sleep(delay)
                continue
            self._conn = conn
            self.connected.set()
            await self._record(connected=1, since=f"{time.time():.3f}")
            log.info("hq_connected", host=self._host, port=self._port)
            try:
                await conn.wait_closed()
            except asyncio.CancelledError:
                conn.close()  # the agent is stopping: say goodbye to HQ now
                raise
            finally:
                self._conn = None
                self.connected.clear()
            await self._record(connected=0, since=f"{time.time():.3f}")
            if time.monotonic() - started > _STABLE_AFTER:
                self._backoff.reset()
            delay = self._backoff.next_delay()
            log.info("hq_disconnected", retry_in=round(delay, 1))
            await asyncio.sleep(delay)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
