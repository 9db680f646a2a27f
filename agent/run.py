"""The agent's end of the `fieldlink-run` subsystem: one run per channel.

HQ writes one `RunRequest` line. The agent looks the entry up, validates the
parameters with the entry's model, asks the local policy, waits briefly for
a free slot (`max_concurrent`); a plain command, where the policy requires
consent, also needs a consented session on its ticket for its engineer
(agent.sessions.exec_refusal). Then it runs the entry within the effective
timeout and output cap (the least of the entry's, the policy's and the
request's), streaming `RunOutput` frames, and ends with exactly one
`RunResult` before closing the channel. Any problem, including a bug in an
entry, still ends in a `RunResult` (status `failed` or `refused`, with a
reason). If HQ closes the channel first, the run is cancelled, which kills
its processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncssh
import structlog
from pydantic import ValidationError

from agent import allowlist, catalog
from agent.catalog.base import Context, Outcome, Problem
from agent.containment import Containment
from agent.groups import GroupBook
from agent.policy import Policy, check_run
from agent.runner import Stream
from agent.sessions import SessionBook
from shared import protocol as p

log = structlog.get_logger(__name__)

REQUEST_LIMIT = 256 * 1024  # bytes one request line may take
REQUEST_WAIT = 10.0  # seconds HQ has to send the request after opening the channel
RESULT_DATA_LIMIT = p.MAX_FRAME_BYTES - 64 * 1024  # room for the rest of the result


class Slots:
    """Counts runs in progress against a limit that the policy may change."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self._cond = asyncio.Condition()
        self.active = 0

    async def acquire(self, wait: float) -> bool:
        async with self._cond:
            try:
                await asyncio.wait_for(
                    self._cond.wait_for(lambda: self.active < self._limit()), wait
                )
            except TimeoutError:
                return False
            self.active += 1
            return True

    async def release(self) -> None:
        async with self._cond:
            self.active -= 1
            self._cond.notify_all()


def _now() -> datetime:
    return datetime.now(UTC)


def describe_validation(exc: ValidationError) -> str:
    """A one-line reason naming each bad field, for the engineer."""
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(x) for x in err["loc"]) or "params"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "not a parameter of this entry"
        elif err["type"] == "string_pattern_mismatch":
            msg = "contains characters that are not allowed (or starts with '-')"
        parts.append(f"{where}: {msg}")
    return "invalid parameters: " + "; ".join(parts)


class RunService:
    """Serves `fieldlink-run` channels with the current policy."""

    def __init__(
        self,
        policy: Policy,
        *,
        queue_wait: float = 5.0,
        sessions: SessionBook | None = None,
        groups: GroupBook | None = None,
        containment: Containment | None = None,
    ) -> None:
        self.policy = policy
        # how runs' processes are contained (agent.containment; set at start)
        self.containment = containment
        # the policy's allowed_programs as resolved on this machine (see `apply`)
        self.programs = allowlist.EMPTY
        self.groups = groups
        self.queue_wait = queue_wait
        self.sessions = sessions if sessions is not None else SessionBook()
        self.slots = Slots(lambda: self.policy.max_concurrent)
        self._runs: set[asyncio.Task[Any]] = set()

    def apply(self, policy: Policy, programs: allowlist.AllowList) -> None:
        """Take a (re)loaded policy and its resolved allow-list, for runs from now on."""
        self.policy = policy
        self.programs = programs

    async def serve(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """One channel: read the request, run it, send the result, close."""
        started = _now()
        try:
            request = await self._read_request(process)
        except (p.FrameError, TimeoutError, asyncssh.Error, OSError) as exc:
            log.warning("run_request_rejected", error=str(exc) or type(exc).__name__)
            result = p.RunResult(
                status="refused",
                reason=f"bad run request: {exc}",
                started_at=started,
                finished_at=_now(),
            )
            await self._finish(process, result)
            return
        if request is None:  # HQ went away before asking anything
            process.exit(0)
            return
        task = asyncio.create_task(self._run(process, request))
        self._runs.add(task)
        watcher = asyncio.create_task(self._watch_close(process, task))
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:  # the agent is shutting down
            task.cancel()
            await asyncio.wait({task})
            raise
        finally:
            self._runs.discard(task)
            watcher.cancel()
        if task.cancelled():  # HQ closed the channel: nobody left to tell
            process.exit(0)
            return
        error = task.exception()
        if error is not None:
            log.error("run_crashed", run_id=request.id, name=request.name, error=repr(error))
            result = p.RunResult(
                status="failed",
                reason=f"the agent hit an internal error: {type(error).__name__}: {error}",
                started_at=started,
                finished_at=_now(),
            )
        else:
            result = task.result()
        await self._finish(process, result)

    async def _read_request(self, process: asyncssh.SSHServerProcess[bytes]) -> p.RunRequest | None:
        decoder = p.FrameDecoder(limit=REQUEST_LIMIT)
        async with asyncio.timeout(REQUEST_WAIT):
            while True:
                data = await process.stdin.read(65536)
                if not data:
                    return None
                lines = decoder.feed(data)
                if lines:
                    return p.decode_run_request(lines[0])

    async def _watch_close(
        self, process: asyncssh.SSHServerProcess[bytes], task: asyncio.Task[Any]
    ) -> None:
        """Cancel the run when HQ closes the channel before the result."""
        with contextlib.suppress(asyncssh.Error, OSError):
            await process.wait_closed()
        if not task.done():
            log.info("run_abandoned_by_hq")
            task.cancel()

    async def _finish(self, process: asyncssh.SSHServerProcess[bytes], result: p.RunResult) -> None:
        try:
            process.stdout.write(p.encode(_fit(result)))
            await process.stdout.drain()
        except (asyncssh.Error, OSError, BrokenPipeError) as exc:
            log.info("run_result_undelivered", error=str(exc))
        process.exit(0)

    async def _run(
        self, process: asyncssh.SSHServerProcess[bytes], request: p.RunRequest
    ) -> p.RunResult:
        started = _now()
        policy, programs = self.policy, self.programs
        fields = {
            "run_id": request.id,
            "name": request.name,
            "ticket_id": request.ticket_id,
            "engineer": request.engineer,
            "session_id": request.session_id,
        }

        def result(status: p.RunStatus, **kw: Any) -> p.RunResult:
            return p.RunResult(status=status, started_at=started, finished_at=_now(), **kw)

        def refuse(reason: str) -> p.RunResult:
            log.info("run_finished", status="refused", reason=reason, **fields)
            return result("refused", reason=reason)

        entry = catalog.get(request.name)
        if entry is None:
            return refuse(f"this agent has no catalog entry named {request.name!r}")
        try:
            params = entry.params.model_validate(request.params)
        except ValidationError as exc:
            return refuse(describe_validation(exc))
        argv = entry.argv(params)
        program: allowlist.Identity | str | None = None
        if entry.tier == "exec" and argv and not policy.allow_shell:
            program = await asyncio.to_thread(allowlist.identify, argv[0])
        denied = check_run(
            policy,
            entry.tier,
            shell=entry.wants_shell(params),
            argv=argv,
            programs=programs,
            program=program,
            agent_uid=os.geteuid(),
        )
        if denied is None and entry.tier == "exec" and policy.require_consent:
            denied = self.sessions.exec_refusal(
                request.session_id, request.ticket_id, request.engineer
            )
        if denied is not None:
            return refuse(denied)
        if not await self.slots.acquire(self.queue_wait):
            return refuse(
                f"this machine is already running {self.slots.active} runs, its policy's "
                f"limit (max_concurrent = {policy.max_concurrent}); try again shortly"
            )
        timeout = min(entry.timeout, policy.max_runtime_seconds, request.timeout or entry.timeout)
        cap = min(entry.output_cap, policy.max_output_bytes)

        async def send(stream: Stream, text: str) -> None:
            process.stdout.write(p.encode(p.RunOutput(stream=stream, data=text)))
            await process.stdout.drain()

        ctx = Context(
            policy=policy,
            timeout=timeout,
            output_cap=cap,
            send=send,
            groups=self.groups,
            containment=self.containment,
        )
        if isinstance(program, allowlist.Identity) and argv:
            # the very file the allow-list checked, named as its entry was listed
            ctx.program = allowlist.launch(programs, argv, program)
        log.info("run_started", tier=entry.tier, timeout=timeout, **fields)
        clock = time.monotonic()
        final: p.RunResult
        try:
            deadline = asyncio.timeout(timeout)
            try:
                async with deadline:
                    outcome: Outcome = await entry.run(ctx, params)
                final = result(
                    outcome.status,
                    exit_code=outcome.exit_code,
                    data=outcome.data,
                    reason=outcome.reason,
                    truncated=ctx.truncated,
                )
            except TimeoutError:
                if not deadline.expired():
                    raise
                final = result(
                    "timeout",
                    reason=f"stopped after the time limit of {timeout:g} s; "
                    "its processes were killed",
                    truncated=ctx.truncated,
                )
            except Problem as exc:
                final = result(
                    exc.status,
                    reason=exc.reason,
                    data=exc.data,
                    exit_code=exc.exit_code,
                    truncated=ctx.truncated,
                )
            except asyncio.CancelledError:
                log.info(
                    "run_finished",
                    status="interrupted",
                    seconds=round(time.monotonic() - clock, 3),
                    **fields,
                )
                raise
            except (asyncssh.Error, BrokenPipeError, ConnectionError) as exc:
                final = result("interrupted", reason=f"the channel to HQ failed: {exc}")
            except Exception as exc:
                log.exception("run_crashed", **fields)
                final = result(
                    "failed",
                    reason=f"the agent hit an internal error: {type(exc).__name__}: {exc}",
                    truncated=ctx.truncated,
                )
        finally:
            ctx.stop.set()
            await self.slots.release()
        log.info(
            "run_finished",
            status=final.status,
            exit_code=final.exit_code,
            truncated=final.truncated,
            output_bytes=ctx.used,
            seconds=round(time.monotonic() - clock, 3),
            reason=final.reason,
            **fields,
        )
        return final

    async def close(self) -> None:
        """Cancel every run in progress (daemon shutdown) and wait for them."""
        for task in list(self._runs):
            task.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)


def _fit(result: p.RunResult) -> p.RunResult:
    """Keep the result within one frame: drop structured data that is too big."""
    if result.data is None:
        return result
    size = len(p.encode(result))
    if size <= RESULT_DATA_LIMIT:
        return result
    return result.model_copy(
        update={
            "data": {"omitted": f"the structured result ({size} bytes) was too large to send"},
            "truncated": True,
        }
    )
