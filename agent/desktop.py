"""Desktop sessions at the machine: the screen's RFB (VNC) stream on a
`fieldlink-desktop` channel that HQ opened (issue 18; docs/desktop.md).

Admission is a shell's: the policy must say `allow_desktop = true`, and the
session book must admit the channel (an active `desktop` session named in
`FIELDLINK_SESSION`, for its ticket and engineer, within its time, consented
to at the site where `require_consent` asks for it; agent.sessions). One
stream per session. A refused channel gets one `DesktopClosed` line on its
stderr and exit status 1; HQ reads the reason there.

Where the screen comes from (agent.screen; nothing listens here either way):

- `desktop_vnc_address`: the VNC server the site already runs on a loopback
  address or a Unix socket (Windows, macOS, Wayland with wayvnc);
- otherwise `desktop_display`: x11vnc attached to that X display in inetd
  style, with one end of a socket pair as its stdin and stdout. It opens no
  port (`-rfbport 0`), reads no rc file, obeys no remote-control or
  reverse-connection request from the display, serves this one viewer and
  exits. It runs in its own process group (recorded for the reaper in
  agent.groups) and is killed with the stream.

Between the channel and the screen runs shared.rfb.RfbFilter: keyboard and
mouse pass only while control is granted, the clipboard only while control is
granted and `desktop_clipboard` allows it. `control_now()` is the pure
decision (policy `desktop_control`, what the engineer asked for, the latest
grant). Where a session can never get control, x11vnc runs with `-viewonly`
(and without clipboard, `-nosel`) as well: input is refused twice.

The person at the screen: while the stream is open on a machine with a
`desktop_display`, a notice (xmessage, from x11-utils) sits in the top right
corner of that display naming the engineer and the ticket and saying whether
they may use keyboard and mouse; its button ends the session at once, as
`fieldlink-agent consent --end` does. The notice is redrawn when control
changes. If it cannot be shown, or goes away other than by its button, the
stream ends (a screen nobody can see being watched is not served). A machine
with only `desktop_vnc_address` shows no notice of ours: the site's VNC
server shows its own (tray or menu-bar icon).

HQ is told what the engineer may do on the channel's stderr (`DesktopStatus`
lines: at the start and at every change) and why the stream ends
(`DesktopClosed`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import asyncssh
import structlog

from agent.groups import GroupBook
from agent.policy import Policy
from agent.screen import (
    CHUNK,
    END_BUTTON,
    GRACE,
    DesktopRefused,
    Notice,
    Screen,
    notice_text,
    open_vnc,
    open_x11vnc,
)
from agent.sessions import Grant, SessionBook
from shared import protocol as p
from shared import rfb

log = structlog.get_logger(__name__)

ACTIVATION_WAIT = 3.0  # seconds a channel waits for HQ's word that its session is active
AT_SCREEN = "screen"  # who ended a session with the notice's button (HQ adds @host)

EndHere = Callable[[str, str], Coroutine[Any, Any, None]]

__all__ = ["DesktopRefused", "DesktopService", "DesktopStream", "control_now", "input_possible"]


# --- pure decisions ------------------------------------------------------------------------


def control_now(policy: Policy, info: p.SessionInfo, grant: Grant | None) -> tuple[bool, str]:
    """Whether keyboard and mouse may reach the screen now, and on whose word:
    never with `desktop_control = "never"` or in a session that asked to view
    only; otherwise the latest grant (here or through HQ) decides, and with
    none yet, the policy (`allow`: yes, `ask`: not until someone grants it,
    and nobody is named)."""
    if policy.desktop_control == "never":
        return False, "policy"
    if not info.control:
        return False, "view-only session"
    if grant is not None:
        return grant.granted, grant.by
    if policy.desktop_control == "allow":
        return True, "policy"
    return False, ""  # "ask": nobody at the site has granted it yet


def input_possible(policy: Policy, info: p.SessionInfo) -> bool:
    """Whether this session may ever get control (else x11vnc runs -viewonly)."""
    return policy.desktop_control != "never" and info.control


# --- one stream ------------------------------------------------------------------------------


def _write_line(process: asyncssh.SSHServerProcess[bytes], frame: p.Model) -> None:
    with contextlib.suppress(asyncssh.Error, OSError, BrokenPipeError):
        process.stderr.write(p.encode(frame))


def refuse(process: asyncssh.SSHServerProcess[bytes], session_id: str, reason: str) -> None:
    log.warning("desktop_refused", session_id=session_id, reason=reason)
    _write_line(process, p.DesktopClosed(session_id=session_id, reason=reason, failure=True))
    with contextlib.suppress(asyncssh.Error, OSError):
        process.exit(1)


class DesktopStream:
    """One screen on one channel: `start` connects, `run` pumps until the end."""

    kind = "desktop"

    def __init__(
        self,
        process: asyncssh.SSHServerProcess[bytes],
        info: p.SessionInfo,
        policy: Callable[[], Policy],
        book: SessionBook,
        groups: GroupBook | None,
        end_here: Callable[[str], None],
    ) -> None:
        self._process = process
        self._info = info
        self.session_id = info.session_id
        self._policy = policy
        self._book = book
        self._groups = groups
        self._end_here = end_here
        pol = policy()
        self._input_possible = input_possible(pol, info)
        self._clipboard_possible = self._input_possible and pol.desktop_clipboard
        control, self._by = self._decide()
        self._filter = rfb.RfbFilter(control=control, clipboard=self._clipboard(control))
        self._screen: Screen | None = None
        self._notice: Notice | None = None
        self._stopped = asyncio.Event()
        self._reason = ""
        self._failure = False
        self._pumps: set[asyncio.Task[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # notice redraws
        self._dropped: dict[str, int] = {}

    # --- control -------------------------------------------------------------------------

    def _decide(self) -> tuple[bool, str]:
        known = self._book.get(self.session_id)
        info = known.info if known is not None else self._info
        control, by = control_now(self._policy(), info, self._book.grant(self.session_id))
        return control and self._input_possible, by

    def _clipboard(self, control: bool) -> bool:
        return control and self._clipboard_possible and self._policy().desktop_clipboard

    def control_changed(self) -> None:
        """The grant, the policy or HQ's word changed: apply what holds now."""
        if self._stopped.is_set():
            return
        control, by = self._decide()
        clipboard = self._clipboard(control)
        if (control, clipboard) == (self._filter.control, self._filter.clipboard):
            return
        self._by = by
        self._filter.set_clipboard(clipboard)
        out = self._filter.set_control(control)
        if out.to_server and self._screen is not None:
            self._screen.writer.write(out.to_server)
        log.info("desktop_control", session_id=self.session_id, control=control, by=by)
        self._status()
        if self._notice is not None:
            self._own(self._redraw())

    async def _redraw(self) -> None:
        assert self._notice is not None
        try:
            await self._notice.show(notice_text(self._info, self._filter.control))
        except DesktopRefused as exc:
            self.stop(str(exc), failure=True)

    def _status(self) -> None:
        _write_line(
            self._process,
            p.DesktopStatus(
                session_id=self.session_id,
                control=self._filter.control,
                clipboard=self._filter.clipboard,
                by=self._by,
                notice=self._notice is not None,
            ),
        )

    # --- start and stop ------------------------------------------------------------------

    async def start(self) -> None:
        """Reach the screen and show the notice; DesktopRefused says why not."""
        policy = self._policy()
        if policy.desktop_vnc_address:
            self._screen = await open_vnc(policy.desktop_vnc_address)
        else:
            self._screen = await open_x11vnc(
                policy,
                view_only=not self._input_possible,
                clipboard=self._clipboard_possible,
                groups=self._groups,
            )
        if policy.desktop_display:
            self._notice = Notice(policy, self._groups, self._notice_gone)
            await self._notice.show(notice_text(self._info, self._filter.control))

    def _notice_gone(self, status: int | None, complaint: str) -> None:
        if status == END_BUTTON:
            log.info("desktop_ended_at_screen", session_id=self.session_id)
            self.stop("ended by the person at the screen")
            self._end_here(self.session_id)
            return
        why = f": {complaint}" if complaint else ""
        self.stop(
            f"the notice on the machine's screen went away (status {status}{why}); "
            "a screen is not shared without it",
            failure=True,
        )

    def stop(self, reason: str, *, failure: bool = False) -> None:
        """End the stream now (the session ended, the site ended it, the policy)."""
        if not self._stopped.is_set():
            self._reason, self._failure = reason, failure
            self._stopped.set()

    def _own(self, coro: Awaitable[None], tasks: set[asyncio.Task[None]] | None = None) -> None:
        owner = self._tasks if tasks is None else tasks
        task = asyncio.ensure_future(coro)
        owner.add(task)
        task.add_done_callback(owner.discard)

    # --- the pump ------------------------------------------------------------------------

    def _deliver(self, out: rfb.Output) -> None:
        """Write what the filter let through (at once, so order holds)."""
        assert self._screen is not None
        if out.to_server:
            self._screen.writer.write(out.to_server)
        if out.to_client:
            self._process.stdout.write(out.to_client)
        for event in out.events:
            if event.kind.endswith("_dropped"):
                count = self._dropped.get(event.kind, 0)
                self._dropped[event.kind] = count + 1
                if not count:
                    log.info("desktop_input_dropped", session_id=self.session_id, what=event.kind)
            else:
                log.info(
                    "desktop_stream_event",
                    session_id=self.session_id,
                    what=event.kind,
                    detail=event.detail,
                )
        if out.close:
            self.stop(out.close, failure=True)

    async def _from_viewer(self) -> None:
        assert self._screen is not None
        while True:
            try:
                data = await self._process.stdin.read(CHUNK)
            except (asyncssh.BreakReceived, asyncssh.SignalReceived, asyncssh.TerminalSizeChanged):
                continue
            if not data:
                self.stop("HQ closed the stream")
                return
            self._deliver(self._filter.from_client(data))
            await self._screen.writer.drain()

    async def _from_screen(self) -> None:
        assert self._screen is not None
        while True:
            data = await self._screen.reader.read(CHUNK)
            if not data:
                why = await self._screen.why_gone()
                self.stop(why or "the VNC server closed the stream", failure=why is not None)
                return
            self._deliver(self._filter.from_server(data))
            await self._process.stdout.drain()

    async def _pump(self, what: Callable[[], Awaitable[None]]) -> None:
        try:
            await what()
        except rfb.RfbError as exc:
            self.stop(f"the desktop stream was closed: {exc}", failure=True)
        except (asyncssh.Error, OSError, ConnectionError) as exc:
            self.stop(f"the desktop stream broke: {exc}")
        except Exception as exc:  # a bug here must end the stream, not leave it half open
            log.exception("desktop_pump_failed", session_id=self.session_id)
            self.stop(f"the agent failed serving the screen ({exc!r})", failure=True)

    async def run(self) -> int | None:
        """Pump until the stream ends, then close everything; the exit status
        for the channel (None if the channel is gone)."""
        self._status()
        self._own(self._pump(self._from_viewer), self._pumps)
        self._own(self._pump(self._from_screen), self._pumps)
        closed = asyncio.ensure_future(self._process.wait_closed())
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({closed, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if closed.done():
                self.stop("the channel closed")
        finally:
            await self.close()
            closed.cancel()
            stopped.cancel()
            await asyncio.gather(closed, stopped, return_exceptions=True)
        log.info(
            "desktop_stream_ended",
            session_id=self.session_id,
            reason=self._reason,
            failure=self._failure,
            dropped=self._dropped,
        )
        if closed.done() and not closed.cancelled():
            return None
        _write_line(
            self._process,
            p.DesktopClosed(session_id=self.session_id, reason=self._reason, failure=self._failure),
        )
        return 1 if self._failure else 0

    async def close(self) -> None:
        """Drop the stream, kill x11vnc and the notice."""
        self.stop("the agent closed the stream")
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if self._tasks:  # a redraw half-way through starting xmessage: let it finish
            await asyncio.wait(set(self._tasks), timeout=2 * GRACE)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._screen is not None:
            await self._screen.close()
        if self._notice is not None:
            await self._notice.close()


class DesktopService:
    """Serves `fieldlink-desktop` channels under the current policy and the book."""

    def __init__(
        self,
        policy: Callable[[], Policy],
        book: SessionBook,
        *,
        groups: GroupBook | None = None,
        end_here: EndHere | None = None,
    ) -> None:
        self._policy = policy
        self._book = book
        self._groups = groups
        self._end_here = end_here
        self._open: dict[str, DesktopStream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def _may_still_arrive(self, session_id: str) -> bool:
        known = self._book.get(session_id)
        return bool(session_id) and (
            known is None or known.info.state in ("requested", "awaiting_consent")
        )

    def _ended_at_screen(self, session_id: str) -> None:
        """The notice's button: the session ends here and HQ is told; the task
        is the service's, so the end is sent even though the stream is gone."""
        if self._end_here is None:
            self._book.end_here(session_id, "at the screen")
            return
        task = asyncio.create_task(self._end_here(session_id, AT_SCREEN))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def serve(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        env = {str(k): str(v) for k, v in process.env.items()}
        session_id = env.get(p.SESSION_ENV, "")
        policy = self._policy()
        if not policy.allow_desktop:
            refuse(
                process,
                session_id,
                "this machine's policy does not allow desktop sessions (allow_desktop = false)",
            )
            return
        floor = policy.require_consent

        def why() -> str | None:
            return self._book.refusal(session_id, "desktop", env, floor)

        if why() is not None and self._may_still_arrive(session_id):
            # HQ sends "active" on the telemetry channel just before it opens this one
            await self._book.wait(lambda: why() is None, ACTIVATION_WAIT)
        reason = why()
        if reason is not None:
            refuse(process, session_id, reason)
            return
        if session_id in self._open:
            refuse(process, session_id, f"session {session_id} already has its screen open")
            return
        known = self._book.get(session_id)
        assert known is not None
        stream = DesktopStream(
            process, known.info, self._policy, self._book, self._groups, self._ended_at_screen
        )
        self._open[session_id] = stream
        self._idle.clear()
        self._book.attach(session_id, stream)  # an end or a grant from now on reaches it
        try:
            try:
                await stream.start()
            except DesktopRefused as exc:
                await stream.close()
                refuse(process, session_id, str(exc))
                return
            except Exception as exc:  # a bug must not leave x11vnc or the channel behind
                log.exception("desktop_start_failed", session_id=session_id)
                await stream.close()
                refuse(process, session_id, f"the agent failed to open the screen ({exc!r})")
                return
            log.info(
                "desktop_started",
                session_id=session_id,
                ticket=known.info.ticket,
                engineer=known.info.engineer,
                source="vnc" if policy.desktop_vnc_address else "x11vnc",
            )
            status = await stream.run()
        finally:
            self._book.detach(session_id, stream)
            self._open.pop(session_id, None)
            if not self._open:
                self._idle.set()
        if status is not None:
            with contextlib.suppress(asyncssh.Error, OSError):
                process.exit(status)

    async def close(self, reason: str = "the agent is stopping") -> None:
        """Stop every stream and wait (bounded) until x11vnc and notices are gone."""
        for stream in list(self._open.values()):
            stream.stop(reason)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 4 * GRACE)
        for task in list(self._tasks):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), GRACE)
