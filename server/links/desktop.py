"""HQ's end of a desktop stream: the `fieldlink-desktop` channel on an
agent's connection (issue 18; docs/desktop.md).

`open_desktop()` opens the channel for one active desktop session and waits
for the agent's first `DesktopStatus`: from then on `reader` gives the
screen's RFB bytes and `writer` takes the viewer's, untouched (HQ's relay
filters them with shared.rfb.RfbFilter before they reach this writer).
`notices()` yields what the agent says next on the channel's stderr (control
granted or taken back at the site, and the `DesktopClosed` that ends it). A
refusal raises `DesktopRefused` with the agent's reason.

This module only opens the channel; the session's rules (permissions, the
ticket, consent, recording, the console's noVNC relay) are the caller's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncssh
import structlog

from shared import protocol as p

log = structlog.get_logger(__name__)

OPEN_TIMEOUT = 20.0  # seconds for the agent to reach the screen and say so


class DesktopRefused(Exception):
    """The agent did not open the screen; `reason` says why (for the engineer),
    `failure` whether HQ should record the session as failed."""

    def __init__(self, reason: str, *, failure: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.failure = failure


@dataclass(eq=False)
class DesktopChannel:
    """One open desktop stream: RFB bytes both ways, the agent's notices."""

    session_id: str
    reader: asyncssh.SSHReader[bytes]  # RFB from the machine's VNC server
    writer: asyncssh.SSHWriter[bytes]  # RFB to it (the viewer's messages)
    status: p.DesktopStatus  # the agent's latest word on control and clipboard
    closed: p.DesktopClosed | None = None
    _stderr: asyncssh.SSHReader[bytes] | None = None
    _decoder: p.FrameDecoder = field(default_factory=lambda: p.FrameDecoder(limit=64 * 1024))
    _pending: list[bytes] = field(default_factory=list)

    async def next_notice(self) -> p.DesktopStatus | p.DesktopClosed | None:
        """The agent's next notice; None once the channel has ended without one."""
        assert self._stderr is not None
        while not self._pending:
            data = await self._stderr.read(4096)
            if not data:
                return None
            self._pending.extend(self._decoder.feed(data))
        notice = p.decode_desktop_notice(self._pending.pop(0))
        if isinstance(notice, p.DesktopStatus):
            self.status = notice
        else:
            self.closed = notice
        return notice

    async def notices(self) -> AsyncIterator[p.DesktopStatus | p.DesktopClosed]:
        """Every notice until the stream ends (`DesktopClosed` last, when sent)."""
        while (notice := await self.next_notice()) is not None:
            yield notice
            if isinstance(notice, p.DesktopClosed):
                return

    def close(self) -> None:
        """End the stream from HQ's side (the agent then stops x11vnc)."""
        self.writer.close()


async def open_desktop(
    conn: asyncssh.SSHClientConnection,
    *,
    session_id: str,
    ticket: str,
    engineer: str,
    timeout: float = OPEN_TIMEOUT,
) -> DesktopChannel:
    """Open the screen of the machine on `conn` for an active desktop session
    (`ticket` as FL-N, `engineer` the user's name as in the session).
    DesktopRefused when the agent refuses or cannot serve it."""
    env = {p.SESSION_ENV: session_id, p.TICKET_ENV: ticket, p.ENGINEER_ENV: engineer}
    try:
        writer, reader, stderr = await conn.open_session(
            subsystem=p.DESKTOP_SUBSYSTEM, env=env, encoding=None
        )
    except (asyncssh.Error, OSError) as exc:
        raise DesktopRefused(f"the machine did not open a desktop channel: {exc}") from exc
    channel = DesktopChannel(
        session_id,
        reader,
        writer,
        p.DesktopStatus(session_id=session_id, control=False, clipboard=False),
        _stderr=stderr,
    )
    try:
        async with asyncio.timeout(timeout):
            first = await channel.next_notice()
    except (TimeoutError, asyncssh.Error, OSError, p.FrameError) as exc:
        writer.close()
        raise DesktopRefused(
            f"the machine did not open its screen in time ({exc or type(exc).__name__})"
        ) from exc
    if isinstance(first, p.DesktopStatus):
        log.info(
            "desktop_opened", session_id=session_id, control=first.control, notice=first.notice
        )
        return channel
    writer.close()
    if first is None:
        raise DesktopRefused("the machine closed the desktop channel without a reason")
    raise DesktopRefused(first.reason, failure=first.failure)
