"""Interactive shells for remote sessions: a login shell under a real PTY,
bridged to an SSH channel that HQ opened.

A channel with no command and a terminal type is a shell request. It is
refused -- a line on the channel's stderr and exit status 1 -- unless the
local policy has `allow_shell = true` and the session book admits the
channel (an active `shell` session named in `FIELDLINK_SESSION`, see
agent.sessions). HQ reads that stderr line as the reason the session failed.

Otherwise the agent starts the login shell of the policy's `shell_user`
(from the password database; as that user, with its groups, when the agent
runs as root) as the leader of a new session whose controlling terminal is
the PTY, in the user's home directory, with a small environment: TERM from
the request, HOME, USER, LOGNAME, SHELL, PATH, LANG (the request's, else the
agent's own), and `FIELDLINK_SESSION`, `FIELDLINK_TICKET`, `FIELDLINK_ENGINEER`.

The PTY master and the channel are copied both ways as raw bytes, without
blocking the event loop; window-size changes arrive as
`asyncssh.TerminalSizeChanged` while reading the channel and are applied with
TIOCSWINSZ. The shell exiting ends the channel with its exit status. HQ
closing the channel, or the session ending (`stop`), hangs up the terminal
and kills every process of the shell's session. Where runs are contained by
cgroups (agent.containment) the shell joins a cgroup of its own before it
execs, and that cgroup is killed whole when the shell ends: nothing the
engineer started outlives the session, even what left it (setsid); under the
process-group rule, what left the session is not followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import pwd
import signal
import struct
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import asyncssh
import structlog

from agent.containment import Containment, RunCgroup
from agent.policy import Policy
from agent.runner import SAFE_PATH
from agent.sessions import SessionBook
from shared import protocol as p

log = structlog.get_logger(__name__)

# How long a shell request waits for HQ's word that its session is active.
ACTIVATION_WAIT = 3.0

CHUNK = 64 * 1024
GRACE = 1.0  # seconds between hanging up the terminal and SIGKILL
LINGER = 0.5  # seconds to read what is left once the shell has exited
NO_LOGIN = frozenset({"nologin", "false"})


class ShellRefused(Exception):
    """The shell cannot be started; the message says why, for the engineer."""


@dataclass(frozen=True)
class Account:
    """The account a shell runs as, and whether the agent must switch to it."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str
    switch: bool


def account_for(user: str) -> Account:
    """Look `user` up; refuse what cannot work (unknown user, no login shell,
    an agent that is neither root nor that user)."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise ShellRefused(f"shell_user {user!r} is not a user on this machine") from None
    shell = pw.pw_shell or "/bin/sh"
    if os.path.basename(shell) in NO_LOGIN:
        raise ShellRefused(f"{user} has no login shell ({shell})")
    me = os.geteuid()
    if pw.pw_uid != me and me != 0:
        raise ShellRefused(
            f"the agent runs as uid {me} and cannot start a shell as {user}; "
            "run the agent as root or name its own user in shell_user"
        )
    return Account(
        name=pw.pw_name,
        uid=pw.pw_uid,
        gid=pw.pw_gid,
        home=pw.pw_dir or "/",
        shell=shell,
        switch=me == 0 and pw.pw_uid != 0,
    )


def shell_env(account: Account, term: str, info: p.SessionInfo, lang: str | None) -> dict[str, str]:
    env = {
        "TERM": term,
        "HOME": account.home,
        "USER": account.name,
        "LOGNAME": account.name,
        "SHELL": account.shell,
        "PATH": SAFE_PATH,
        p.SESSION_ENV: info.session_id,
        p.TICKET_ENV: info.ticket,
        p.ENGINEER_ENV: info.engineer,
    }
    if lang:
        env["LANG"] = lang
    return env


def set_window(fd: int, cols: int, rows: int, xpixel: int = 0, ypixel: int = 0) -> None:
    import fcntl
    import termios

    if cols <= 0 or rows <= 0:
        return
    size = struct.pack("HHHH", min(rows, 0xFFFF), min(cols, 0xFFFF), xpixel, ypixel)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, size)


def _take_terminal() -> None:  # pragma: no cover - runs in the child, before exec
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def session_members(sid: int) -> list[int]:
    """Pids of every process in session `sid` (from /proc)."""
    pids: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        # after the command: state ppid pgrp session ...; zombies are already dead
        if len(fields) > 3 and fields[0] != b"Z" and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def signal_session(sid: int, sig: int) -> int:
    """Send `sig` to every process in session `sid` (its process groups too, for
    members forked meanwhile); how many there were."""
    members = session_members(sid)
    if members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(sid, sig)
    for pid in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    return len(members)


class _Exit(asyncio.SubprocessProtocol):
    def __init__(self) -> None:
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        self.exited.set()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Shell:
    """One shell on one channel: started by `start`, bridged by `run`."""

    kind = "shell"

    def __init__(self, process: asyncssh.SSHServerProcess[bytes], session_id: str) -> None:
        self._process = process
        self.session_id = session_id
        self._loop = asyncio.get_running_loop()
        self._fd = -1
        self._transport: asyncio.SubprocessTransport | None = None
        self._exit = _Exit()
        self._stopped = asyncio.Event()
        self._stop_reason = ""
        self._failure = False
        self._hung_up = False
        self._cgroup: RunCgroup | None = None
        self.pid = 0

    async def start(
        self, account: Account, env: Mapping[str, str], containment: Containment | None = None
    ) -> None:
        import pty

        cols, rows, xpixel, ypixel = self._process.term_size
        cgroup = containment.new_run() if containment is not None else None

        def prepare() -> None:  # pragma: no cover - runs in the child, before exec
            if cgroup is not None:
                cgroup.join()
            _take_terminal()

        master, slave = pty.openpty()
        try:
            set_window(slave, cols or 80, rows or 24, xpixel, ypixel)
            if account.switch:
                os.fchown(slave, account.uid, -1)
                os.fchmod(slave, 0o600)
            home = account.home if await asyncio.to_thread(os.path.isdir, account.home) else "/"
            transport, _ = await self._loop.subprocess_exec(
                lambda: self._exit,
                "-" + os.path.basename(account.shell),  # argv[0] "-bash": a login shell
                executable=account.shell,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=home,
                env=dict(env),
                start_new_session=True,
                preexec_fn=prepare,
                close_fds=True,
                user=account.uid if account.switch else None,
                group=account.gid if account.switch else None,
                extra_groups=(
                    os.getgrouplist(account.name, account.gid) if account.switch else None
                ),
            )
        except BaseException:
            os.close(master)
            if cgroup is not None:
                await cgroup.finish()
            raise
        finally:
            os.close(slave)
        self._cgroup = cgroup
        os.set_blocking(master, False)
        self._fd = master
        self._transport = transport
        self.pid = transport.get_pid()

    def stop(self, reason: str, *, failure: bool = False) -> None:
        """End the shell now (the session ended); `run` does the killing. With
        `failure` the reason also goes to stderr, which HQ records."""
        if not self._stopped.is_set():
            self._stop_reason = reason
            self._failure = failure
            self._stopped.set()

    # --- the bridge -------------------------------------------------------------------

    async def _ready(self, writing: bool) -> None:
        future: asyncio.Future[None] = self._loop.create_future()
        if writing:
            self._loop.add_writer(self._fd, _wake, future)
        else:
            self._loop.add_reader(self._fd, _wake, future)
        try:
            await future
        finally:
            if writing:
                self._loop.remove_writer(self._fd)
            else:
                self._loop.remove_reader(self._fd)

    async def _read(self) -> bytes:
        """The next bytes from the terminal; b"" once nobody has it open."""
        while True:
            try:
                return os.read(self._fd, CHUNK)
            except BlockingIOError:
                await self._ready(writing=False)
            except OSError as exc:
                if exc.errno == errno.EIO:  # every holder of the terminal is gone
                    return b""
                raise

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                await self._ready(writing=True)

    async def _to_channel(self) -> None:
        while True:
            data = await self._read()
            if not data:
                return
            self._process.stdout.write(data)
            await self._process.stdout.drain()

    async def _from_channel(self) -> None:
        while True:
            try:
                data = await self._process.stdin.read(CHUNK)
            except asyncssh.TerminalSizeChanged as change:
                set_window(self._fd, change.width, change.height, change.pixwidth, change.pixheight)
                continue
            except (asyncssh.BreakReceived, asyncssh.SignalReceived):
                continue
            if not data:
                return  # HQ sent EOF; the shell goes on until the channel closes
            await self._write(data)

    async def run(self) -> int | None:
        """Bridge until the shell exits, HQ closes the channel or the session
        ends; then leave nothing of the shell's session running. Returns the
        shell's exit status for the channel, or None if the channel is gone."""
        out = asyncio.create_task(self._to_channel())
        inp = asyncio.create_task(self._from_channel())
        exited = asyncio.create_task(self._exit.exited.wait())
        stopped = asyncio.create_task(self._stopped.wait())
        closed = asyncio.create_task(self._process.wait_closed())
        watch = {out, exited, stopped, closed}
        try:
            await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
            if exited.done() and not (stopped.done() or closed.done()):
                # the shell is gone: pass on what it wrote last
                await asyncio.wait({out, closed}, timeout=LINGER)
            elif out.done() and not (stopped.done() or closed.done()):
                await asyncio.wait({exited, closed, stopped}, timeout=GRACE)
            if stopped.done() and not closed.done():
                self._notice(f"\r\n[fieldlink: {self._stop_reason}]\r\n")
                if self._failure:
                    self._notice(f"fieldlink-agent: {self._stop_reason}\n", stderr=True)
            await self._hang_up(exited)
        finally:
            for task in (out, inp, exited, stopped, closed):
                task.cancel()
            if not self._hung_up:  # cancelled half-way: no time left to be gentle
                signal_session(self.pid, signal.SIGKILL)
            if self._cgroup is not None:
                self._cgroup.kill_now()  # what left the session too
            await asyncio.gather(out, inp, exited, stopped, closed, return_exceptions=True)
            if self._cgroup is not None:
                await self._cgroup.finish()
            self._close()
        if closed.done() and not closed.cancelled():
            return None
        return self._status()

    def _notice(self, text: str, *, stderr: bool = False) -> None:
        stream = self._process.stderr if stderr else self._process.stdout
        with contextlib.suppress(asyncssh.Error, OSError):
            stream.write(text.encode())

    async def _hang_up(self, exited: asyncio.Task[bool]) -> None:
        """SIGHUP the shell's session unless it has exited, give it a moment,
        then SIGKILL whatever of the session is left."""
        if not exited.done():
            await asyncio.to_thread(signal_session, self.pid, signal.SIGHUP)
            await asyncio.to_thread(signal_session, self.pid, signal.SIGCONT)
            await asyncio.wait({exited}, timeout=GRACE)
        for _ in range(20):
            if not await asyncio.to_thread(signal_session, self.pid, signal.SIGKILL):
                break
            await asyncio.sleep(0.05)
        self._hung_up = True
        if not exited.done():
            await asyncio.wait({exited}, timeout=GRACE)

    def _status(self) -> int:
        code = self._transport.get_returncode() if self._transport else None
        if code is None:
            return 255
        return code if code >= 0 else 128 - code

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._transport is not None:
            self._transport.close()


def refuse(process: asyncssh.SSHServerProcess[bytes], reason: str) -> None:
    log.warning("shell_refused", reason=reason)
    with contextlib.suppress(asyncssh.Error, OSError):
        process.stderr.write(f"fieldlink-agent: {reason}\n".encode())
    process.exit(1)


class ShellService:
    """Serves shell requests under the current policy and the session book."""

    def __init__(
        self,
        policy: Callable[[], Policy],
        book: SessionBook,
        lang: str | None = None,
        containment: Callable[[], Containment] | None = None,
    ) -> None:
        self._policy = policy
        self._book = book
        self._lang = lang
        self._containment = containment
        self._open: dict[str, Shell] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    def _may_still_arrive(self, session_id: str) -> bool:
        known = self._book.get(session_id)
        return bool(session_id) and (
            known is None or known.info.state in ("requested", "awaiting_consent")
        )

    async def serve(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        env = {str(k): str(v) for k, v in process.env.items()}
        session_id = env.get(p.SESSION_ENV, "")
        policy = self._policy()
        if process.term_type is None:
            refuse(process, "a shell needs a terminal (request a PTY)")
            return
        if not policy.allow_shell:
            refuse(process, "this machine's policy does not allow shells (allow_shell = false)")
            return
        floor = policy.require_consent
        why = self._book.refusal(session_id, "shell", env, floor)
        if why is not None and self._may_still_arrive(session_id):
            # HQ sends "active" on the telemetry channel just before it opens the
            # shell channel; give that word a moment to be read here.
            await self._book.wait(
                lambda: self._book.refusal(session_id, "shell", env, floor) is None,
                ACTIVATION_WAIT,
            )
            why = self._book.refusal(session_id, "shell", env, floor)
        if why is not None:
            refuse(process, why)
            return
        if session_id in self._open:
            refuse(process, f"session {session_id} already has a shell open")
            return
        known = self._book.get(session_id)
        assert known is not None
        try:
            account = account_for(policy.shell_user)
            shell = Shell(process, session_id)
            lang = env.get("LANG") or self._lang
            await shell.start(
                account,
                shell_env(account, process.term_type, known.info, lang),
                self._containment() if self._containment is not None else None,
            )
        except ShellRefused as exc:
            refuse(process, str(exc))
            return
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            refuse(process, f"the shell could not be started: {exc}")
            return
        self._open[session_id] = shell
        self._idle.clear()
        self._book.attach(session_id, shell)
        log.info(
            "shell_started",
            session_id=session_id,
            user=account.name,
            pid=shell.pid,
            term=process.term_type,
            ticket=known.info.ticket,
            engineer=known.info.engineer,
        )
        status: int | None = None
        try:
            status = await shell.run()
        finally:
            self._book.detach(session_id, shell)
            self._open.pop(session_id, None)
            if not self._open:
                self._idle.set()
            log.info("shell_ended", session_id=session_id, status=status)
        if status is not None:
            with contextlib.suppress(asyncssh.Error, OSError):
                process.exit(status)

    async def close(self, reason: str = "the agent is stopping") -> None:
        """Stop every shell and wait (bounded) until their processes are gone."""
        for shell in list(self._open.values()):
            shell.stop(reason)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 3 * GRACE)
