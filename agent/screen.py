"""The screen end of a desktop stream: x11vnc on a socket pair, or a
connection to the VNC server the site runs, and the notice shown on the
screen while the stream is open (agent.desktop drives them; docs/desktop.md).

Every process here (x11vnc, xmessage) leads its own process group, recorded
in agent.groups while it runs so that an agent that dies leaves none behind,
and is killed as a group (SIGTERM, a moment, SIGKILL) when it is done with.
Neither is ever run through a shell; their environment is the runner's small
fixed one plus DISPLAY and XAUTHORITY.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from agent.groups import GroupBook
from agent.policy import Policy, vnc_target
from agent.runner import SAFE_PATH, base_env
from shared import protocol as p

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT = 5.0  # seconds to reach the site's VNC server
CHUNK = 64 * 1024
GRACE = 1.0  # seconds between SIGTERM and SIGKILL for x11vnc and the notice
EXIT_WAIT = 1.0  # seconds to wait for x11vnc's exit status once its stream ended
KEEP_STDERR = 8 * 1024  # bytes of x11vnc's or xmessage's complaints kept for the reason
END_BUTTON = 10  # xmessage's exit status for "End the session now"


class DesktopRefused(Exception):
    """The stream cannot be served; the message says why, for the engineer."""


def x11vnc_argv(
    display: str, xauthority: str, *, view_only: bool, clipboard: bool, program: str = "x11vnc"
) -> list[str]:
    """x11vnc for one viewer on its stdin/stdout, listening nowhere, taking no
    orders from the display it shows; view only and without clipboard unless
    the session may get them."""
    argv = [program, "-inetd", "-display", display]
    if xauthority:
        argv += ["-auth", xauthority]
    argv += [
        "-rfbport", "0",  # no TCP port, even by mistake
        "-noipv6",
        "-nopw",  # the viewer is the agent's own channel, in a consented session
        "-once",
        "-norc",  # no ~/.x11vncrc changes these options
        "-noremote",  # no -remote commands through X properties
        "-novncconnect",  # no reverse connections asked for through X properties
        "-nocmds",  # no external commands run by x11vnc
        "-nolookup",
        "-noncache",  # the real framebuffer size, no client-side cache area below it
        "-noxdamage",
        "-quiet",
        "-o", "/dev/stderr",  # its complaints to the agent, for the reason
    ]  # fmt: skip
    if view_only:
        argv.append("-viewonly")
    if not clipboard:
        argv.append("-nosel")
    return argv


def notice_text(info: p.SessionInfo, control: bool) -> str:
    """What the notice on the screen says (plain ASCII: the X fonts of a bare
    display may lack the rest)."""
    hands = (
        "They can use the keyboard and mouse."
        if control
        else "They can only watch: keyboard and mouse stay yours."
    )
    return (
        f"Fieldlink: {info.engineer} from HQ is looking at this screen ({info.ticket}).\n"
        f"{hands}\n"
        "Press the button to end the session now."
    )


def notice_argv(text: str, program: str = "xmessage") -> list[str]:
    return [
        program,
        "-name", "fieldlink-notice",
        "-title", "Fieldlink remote desktop",
        "-geometry", "-0+0",  # top right
        "-xrm", "*overrideRedirect: true",  # above other windows, not moved by a window manager
        "-bg", "#ffd54a",
        "-fg", "black",
        "-buttons", f"End the session now:{END_BUTTON}",
        text,
    ]  # fmt: skip


def x11vnc_complaint(text: str) -> str:
    """The line of x11vnc's output that says why it stopped."""
    for line in text.splitlines():
        found = re.search(r"\*\*\* (.*\w.*)", line)
        if found:
            return found.group(1).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def display_env(policy: Policy) -> dict[str, str]:
    env = base_env()
    env["DISPLAY"] = policy.desktop_display
    if policy.desktop_xauthority:
        env["XAUTHORITY"] = policy.desktop_xauthority
    return env


# --- processes ---------------------------------------------------------------------------


class _Tail:
    """The last bytes a process wrote to a pipe, read as they come."""

    def __init__(self, stream: asyncio.StreamReader | None) -> None:
        self.data = bytearray()
        self._task = asyncio.create_task(self._read(stream)) if stream is not None else None

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(CHUNK):
            self.data += chunk
            del self.data[:-KEEP_STDERR]

    async def text(self, timeout: float = EXIT_WAIT) -> str:
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
        return self.data.decode(errors="replace")

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


class _Group:
    """A process we started as the leader of its own group, recorded while it runs."""

    def __init__(self, process: asyncio.subprocess.Process, groups: GroupBook | None) -> None:
        self.process = process
        self.pid = process.pid
        self.stderr = _Tail(process.stderr)
        self._groups = groups
        if groups is not None:
            groups.add(self.pid)

    async def kill(self) -> None:
        """SIGTERM to the group, a moment, SIGKILL; then forget it."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), GRACE)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), GRACE)
        self.stderr.cancel()
        if self._groups is not None:
            self._groups.remove(self.pid)


async def _spawn(argv: list[str], env: dict[str, str], **kw: object) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
        **kw,  # type: ignore[arg-type]
    )


@dataclass(eq=False)
class Screen:
    """The VNC server's end of the stream, and x11vnc behind it if it is ours."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    x11vnc: _Group | None = None

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()
        if self.x11vnc is not None:
            await self.x11vnc.kill()

    async def why_gone(self) -> str | None:
        """Why x11vnc stopped, if it failed (its exit status and complaint)."""
        if self.x11vnc is None:
            return None
        process = self.x11vnc.process
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), EXIT_WAIT)
        if process.returncode in (None, 0):
            return None
        said = x11vnc_complaint(await self.x11vnc.stderr.text())
        return f"x11vnc stopped (status {process.returncode})" + (f": {said}" if said else "")


async def open_x11vnc(
    policy: Policy, *, view_only: bool, clipboard: bool, groups: GroupBook | None
) -> Screen:
    """x11vnc on the policy's display, talking through a socket pair."""
    program = shutil.which("x11vnc", path=SAFE_PATH)
    if program is None:
        raise DesktopRefused(
            "x11vnc is not installed on this machine (Debian: apt-get install x11vnc)"
        )
    argv = x11vnc_argv(
        policy.desktop_display,
        policy.desktop_xauthority,
        view_only=view_only,
        clipboard=clipboard,
        program=program,
    )
    ours, theirs = socket.socketpair()
    try:
        try:
            process = await _spawn(argv, display_env(policy), stdin=theirs, stdout=theirs)
        finally:
            theirs.close()
        group = _Group(process, groups)
        reader, writer = await asyncio.open_connection(sock=ours, limit=CHUNK)
    except OSError as exc:
        ours.close()
        raise DesktopRefused(f"x11vnc could not be started: {exc}") from None
    log.info("x11vnc_started", pid=process.pid, display=policy.desktop_display, view_only=view_only)
    return Screen(reader, writer, group)


async def open_vnc(address: str) -> Screen:
    """A connection to the VNC server the site runs on this machine."""
    target = vnc_target(address)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            if target.path:
                reader, writer = await asyncio.open_unix_connection(target.path, limit=CHUNK)
            else:
                reader, writer = await asyncio.open_connection(
                    target.host, target.port, limit=CHUNK
                )
    except (OSError, TimeoutError) as exc:
        raise DesktopRefused(
            f"the VNC server at {target} (desktop_vnc_address) does not answer: "
            f"{exc or type(exc).__name__}"
        ) from None
    return Screen(reader, writer)


class Notice:
    """The notice on the screen while a stream is open: xmessage, redrawn when
    its text changes. `on_gone(status, complaint)` is called when it goes away
    other than by `show` or `close` (the button, a crash, a display that went)."""

    def __init__(
        self,
        policy: Policy,
        groups: GroupBook | None,
        on_gone: Callable[[int | None, str], None],
    ) -> None:
        self._env = display_env(policy)
        self._groups = groups
        self._on_gone = on_gone
        self._current: _Group | None = None
        self._watch: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.shown = ""

    async def show(self, text: str) -> None:
        async with self._lock:
            if text == self.shown and self._current is not None:
                return
            await self._drop()
            program = shutil.which("xmessage", path=SAFE_PATH)
            if program is None:
                raise DesktopRefused(
                    "the notice for the person at the screen cannot be shown: xmessage is "
                    "not installed (Debian: apt-get install x11-utils)"
                )
            try:
                process = await _spawn(
                    notice_argv(text, program), self._env, stdin=asyncio.subprocess.DEVNULL
                )
            except OSError as exc:
                raise DesktopRefused(f"the notice could not be shown: {exc}") from None
            group = _Group(process, self._groups)
            self._current, self.shown = group, text
            self._watch = asyncio.create_task(self._watch_exit(group))

    async def _watch_exit(self, group: _Group) -> None:
        status = await group.process.wait()
        if self._current is group:  # not replaced or closed by us
            self._current = None
            complaint = (await group.stderr.text()).strip().splitlines()
            self._on_gone(status, complaint[0] if complaint else "")
            await asyncio.shield(group.kill())  # whatever it left in its group

    async def _drop(self) -> None:
        group, self._current = self._current, None
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None
        if group is not None:
            await group.kill()

    async def close(self) -> None:
        async with self._lock:
            await self._drop()
            self.shown = ""
