"""Run one program, bounded: its own process group (and cgroup), a timeout,
an output cap.

`run_process()` starts a fixed argv (never through a shell: a caller that
wants a shell passes `/bin/sh -c` itself) as the leader of a new session and
process group, streams stdout and stderr to a callback as text (UTF-8, bad
bytes replaced) and keeps a copy up to the cap. Given a `Containment` that
uses cgroups (agent.containment), the program joins a fresh cgroup before it
execs, and that whole cgroup is killed and removed at the end too: what left
the process group (`setsid`, `setpgid`) goes with it.

It always leaves the whole group (and cgroup) dead, whatever happens:

- timeout: SIGTERM to the group, a short grace for the leader, then SIGKILL;
- output over the cap: the excess is dropped, `truncated` set, group killed;
- the leader exits but children linger: once output stops the group is killed;
- the awaiting task is cancelled (HQ closed the channel): the same as timeout,
  then the cancellation goes on.

With a `GroupBook` (agent.groups) the group (and cgroup) is recorded on disk
while it runs, so an agent that dies without getting here has it killed at
its next start.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import errno
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import structlog

from agent.containment import Containment, ContainmentError, RunCgroup

if TYPE_CHECKING:
    from agent.groups import GroupBook

log = structlog.get_logger(__name__)

Stream = Literal["stdout", "stderr"]
OnOutput = Callable[[Stream, str], Awaitable[None]]

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GRACE = 2.0  # seconds between SIGTERM and SIGKILL
LINGER = 0.5  # seconds to wait for output to end after the leader exits
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class ProcessResult:
    exit_code: int | None  # negative: killed by that signal; None: never started
    timed_out: bool
    truncated: bool
    stdout: str
    stderr: str
    output_bytes: int  # bytes collected (at most the cap)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def base_env(home: str = "/") -> dict[str, str]:
    """A small fixed environment: predictable output, no pagers, no colours."""
    return {
        "PATH": SAFE_PATH,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": home,
        "TERM": "dumb",
        "PAGER": "cat",
        "SYSTEMD_PAGER": "cat",
        "SYSTEMD_COLORS": "0",
    }


def describe_exit(code: int | None) -> str:
    """`exited with status 2`, `killed by SIGTERM`, for a person."""
    if code is None:
        return "did not start"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Signal every process in group `pgid`; an empty group is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _Collector:
    """Counts output against the cap, keeps a copy, decodes, and forwards it."""

    def __init__(self, cap: int, on_output: OnOutput | None, keep: bool) -> None:
        self.cap = cap
        self.used = 0
        self.truncated = False
        self.full = asyncio.Event()
        self._on_output = on_output
        self._keep = keep
        self._decoders = {
            "stdout": codecs.getincrementaldecoder("utf-8")(errors="replace"),
            "stderr": codecs.getincrementaldecoder("utf-8")(errors="replace"),
        }
        self._kept: dict[Stream, list[str]] = {"stdout": [], "stderr": []}

    async def _emit(self, stream: Stream, text: str) -> None:
        if not text:
            return
        if self._keep:
            self._kept[stream].append(text)
        if self._on_output is not None:
            await self._on_output(stream, text)

    async def feed(self, stream: Stream, data: bytes) -> None:
        room = self.cap - self.used
        if len(data) > room:
            data = data[: max(room, 0)]
            self.truncated = True
            self.full.set()
        self.used += len(data)
        await self._emit(stream, self._decoders[stream].decode(data))

    async def finish(self) -> None:
        for stream in ("stdout", "stderr"):
            await self._emit(stream, self._decoders[stream].decode(b"", final=True))

    def text(self, stream: Stream) -> str:
        return "".join(self._kept[stream])


async def _pump(reader: asyncio.StreamReader, stream: Stream, out: _Collector) -> None:
    while not out.full.is_set():
        data = await reader.read(_CHUNK)
        if not data:
            return
        await out.feed(stream, data)


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's stream protocol, plus an event for the leader's exit (which
    `Process.wait()` only reports once every pipe has closed too)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=4 * _CHUNK, loop=loop)
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()


async def _terminate(pgid: int, exited: asyncio.Event, grace: float) -> None:
    """SIGTERM the group, give the leader `grace` seconds, then SIGKILL the group."""
    kill_group(pgid, signal.SIGTERM)
    try:
        await asyncio.wait_for(exited.wait(), grace)
    except TimeoutError:
        pass
    finally:
        kill_group(pgid, signal.SIGKILL)


async def run_process(
    argv: Sequence[str],
    *,
    timeout: float,
    output_cap: int,
    on_output: OnOutput | None = None,
    keep_output: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    user: str | None = None,
    grace: float = GRACE,
    groups: GroupBook | None = None,
    executable: str | None = None,
    containment: Containment | None = None,
) -> ProcessResult:
    """Run `argv` in its own process group (and, with `containment` using
    cgroups, its own cgroup); see the module docstring. With `executable` that
    file runs, `argv[0]` being only the name it is given.

    Raises OSError (FileNotFoundError, PermissionError; ContainmentError when
    its cgroup cannot be made or joined) if it cannot start.
    """
    if not argv:
        raise ValueError("empty argv")
    out = _Collector(output_cap, on_output, keep_output)
    group = _primary_group(user) if user is not None else None
    loop = asyncio.get_running_loop()
    cgroup = containment.new_run() if containment is not None else None
    try:
        transport, protocol = await loop.subprocess_exec(
            lambda: _Protocol(loop),
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=dict(env) if env is not None else base_env(),
            cwd=cwd or "/",
            user=user,
            group=group,
            extra_groups=[] if user is not None else None,
            executable=executable,
            preexec_fn=cgroup.join if cgroup is not None else None,
        )
    except BaseException as exc:
        if cgroup is not None:
            await cgroup.finish()
        if isinstance(exc, subprocess.SubprocessError):  # the child could not join its cgroup
            raise ContainmentError(
                errno.EPERM, f"the program could not join its cgroup ({exc})"
            ) from None
        raise
    proc = asyncio.subprocess.Process(transport, protocol, loop)
    pgid = proc.pid
    if groups is not None:
        groups.add(pgid, cgroup=cgroup.path if cgroup is not None else None)
    assert proc.stdout is not None
    assert proc.stderr is not None
    pumps = asyncio.gather(_pump(proc.stdout, "stdout", out), _pump(proc.stderr, "stderr", out))
    timed_out = False
    try:
        async with asyncio.timeout(timeout):
            await _supervise(protocol.exited, out, pumps)
    except TimeoutError:
        timed_out = True
    finally:
        try:
            if not protocol.exited.is_set():
                await _terminate(pgid, protocol.exited, grace)
            else:
                kill_group(pgid)  # stragglers that outlived the leader
        except BaseException:
            kill_group(pgid)
            if cgroup is not None:
                cgroup.kill_now()
            raise
        finally:
            if cgroup is not None:
                await _finish_cgroup(cgroup)  # what left the group, too
            pumps.cancel()
            await asyncio.wait({pumps})
            if not pumps.cancelled():
                pumps.exception()  # retrieved: a failure here was raised above
            if groups is not None:
                groups.remove(pgid)  # the group (and cgroup) was killed above
            await _drain(proc, transport)
    await out.finish()
    return ProcessResult(
        exit_code=transport.get_returncode(),
        timed_out=timed_out,
        truncated=out.truncated,
        stdout=out.text("stdout"),
        stderr=out.text("stderr"),
        output_bytes=out.used,
    )


async def _finish_cgroup(cgroup: RunCgroup) -> None:
    """Kill and remove a run's cgroup, even while the run is being cancelled."""
    task = asyncio.ensure_future(cgroup.finish())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task  # killed already; let the removal finish (bounded), then go on
        raise


async def _supervise(
    exit_event: asyncio.Event, out: _Collector, pumps: asyncio.Future[Any]
) -> None:
    """Return when the run is over: the cap is hit, or the leader has exited
    and its output ended (or lingered too long). Re-raises a pump failure."""
    exited = asyncio.ensure_future(exit_event.wait())
    full = asyncio.ensure_future(out.full.wait())
    try:
        while True:
            watch = {full, *(f for f in (exited, pumps) if not f.done())}
            await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
            if full.done():
                return
            if pumps.done():
                pumps.result()  # a failing output callback ends the run
                if exited.done():
                    return
                continue  # output ended, the leader still runs
            if exited.done():
                # The leader is gone; children may still hold the pipes open.
                await asyncio.wait(
                    {pumps, full}, timeout=LINGER, return_when=asyncio.FIRST_COMPLETED
                )
                if pumps.done() and not full.done():
                    pumps.result()
                return
    finally:
        full.cancel()
        exited.cancel()


async def _drain(proc: asyncio.subprocess.Process, transport: asyncio.SubprocessTransport) -> None:
    """Read the pipes to their end so the transport can finish; close it if a
    process that left our group still holds a pipe."""
    try:
        async with asyncio.timeout(1.0):
            for reader in (proc.stdout, proc.stderr):
                while reader is not None and await reader.read(_CHUNK):
                    pass
            await proc.wait()
    except (TimeoutError, OSError):
        transport.close()


def _primary_group(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid
