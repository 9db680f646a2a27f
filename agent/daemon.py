"""The agent daemon: samples health on a schedule into the spool, keeps the
link to HQ up, serves HQ's runs, shells, file transfers and desktop streams
under the local policy and the remote sessions HQ announced, and answers people at the
machine on its local socket (help requests, ratings, the ticket list,
consent). `fieldlink-agent run` runs `Daemon.run()`; SIGHUP reloads the
policy. SIGTERM and SIGINT stop it (exit 0); a part of it that fails stops
it with `failure` set (exit 1), so a supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

import asyncssh
import structlog

from agent import allowlist, catalog
from agent.config import AgentConfig, ConfigDir
from agent.containment import Containment, probe
from agent.desk import Desk
from agent.groups import GroupBook
from agent.link import Link, Telemetry
from agent.local import LocalServer
from agent.policy import Policy, PolicyError, ensure_policy, load_policy
from agent.run import RunService
from agent.sampler import Sampler, collect_facts
from agent.sessions import SessionBook
from agent.spool import Spool, SpoolFull
from shared import logs
from shared import protocol as p
from shared.version import PROTOCOL_VERSION, __version__

log = structlog.get_logger(__name__)


class Daemon:
    def __init__(self, config_dir: ConfigDir, *, interval: float | None = None) -> None:
        self.dir = config_dir
        self.config: AgentConfig = config_dir.load()
        self.interval = interval if interval is not None else self.config.interval
        if ensure_policy(config_dir.policy_file):
            log.warning("policy_written_default", path=str(config_dir.policy_file))
        self.sessions = SessionBook()
        self.groups = GroupBook(config_dir.runs_dir)
        # how runs are contained: decided at start (`run`), process groups until then
        self.containment = Containment(None, "not decided yet (the agent is starting)")
        policy = load_policy(config_dir.policy_file)
        self.runs = RunService(policy, sessions=self.sessions, groups=self.groups)
        self.runs.apply(policy, self._resolve(policy))
        self.spool = Spool(
            config_dir.spool_file, self.config.spool_max_frames, self.config.spool_max_bytes
        )
        self.telemetry = Telemetry(self.spool, self._hello, self.sessions)
        self._shells: Any = None  # agent.shell.ShellService, made at the first shell
        self._desktops: Any = None  # agent.desktop.DesktopService, made at the first stream
        self._lang = os.environ.get("LANG")  # a shell's LANG unless HQ sends one
        self.link = Link(
            host=self.config.ssh_host,
            port=self.config.ssh_port,
            host_key=asyncssh.read_private_key(config_dir.key_file),
            hq_key=asyncssh.import_public_key(self.config.hq_public_key),
            keepalive_interval=self.config.keepalive_interval,
            backoff_cap=self.config.backoff_cap,
            telemetry=self.telemetry,
            spool=self.spool,
            process_handlers={
                p.RUN_SUBSYSTEM: self.runs.serve,
                p.DESKTOP_SUBSYSTEM: self._desktop,
            },
            shell_handler=self._shell,
            sftp_factory=self._files,
        )
        self.desk = Desk(
            config=self.config,
            spool=self.spool,
            telemetry=self.telemetry,
            sample=self.fresh_sample,
            sessions=self.sessions,
            policy=lambda: self.policy,
            status_extra=self._status_extra,
        )
        socket_path = config_dir.socket_path(self.config)
        self.local = LocalServer(
            socket_path,
            self.desk,
            group=self.config.local_group,
            manage_dir=socket_path.parent == config_dir.path,
        )
        self._sampler: Sampler | None = None
        self._sampling = asyncio.Lock()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # why the agent stopped on its own (a task failed): `run` then exits non-zero
        self.failure: str | None = None

    async def _hello(self) -> p.Hello:
        facts = await asyncio.to_thread(collect_facts)
        facts = facts.model_copy(update={"run_containment": self.containment.describe()})
        return p.Hello(
            protocol=PROTOCOL_VERSION,
            agent_id=self.config.agent_id,
            version=__version__,
            facts=facts,
            spool_dropped=self.spool.dropped,
            catalog=catalog.advertise(),
            policy=self.policy.summary(self.runs.programs),
        )

    @property
    def policy(self) -> Policy:
        return self.runs.policy

    @property
    def policy_warnings(self) -> list[str]:
        """What is wrong with the policy in force (e.g. programs left out of the
        allow-list), for `status`."""
        return list(self.runs.programs.warnings)

    def _status_extra(self) -> dict[str, Any]:
        sink = logs.sink()
        return {
            "policy_warnings": self.policy_warnings,
            "run_containment": self.containment.describe(),
            "log_dropped": sink.dropped if sink is not None else 0,
            "log_error": sink.error if sink is not None else None,
        }

    def _resolve(self, policy: Policy) -> allowlist.AllowList:
        """The policy's allow-list resolved on this machine; each problem is
        logged once, at load."""
        programs = allowlist.resolve(policy)
        for warning in programs.warnings:
            if warning == allowlist.migration_notice():
                log.warning("exec_needs_allowed_programs", message=warning)
            else:
                log.warning("policy_warning", message=warning)
        return programs

    async def _shell(self, process: Any) -> None:
        """A shell channel (agent.shell, loaded at the first one)."""
        if self._shells is None:
            from agent.shell import ShellService

            self._shells = ShellService(
                lambda: self.policy,
                self.sessions,
                lang=self._lang,
                containment=lambda: self.containment,
            )
        await self._shells.serve(process)

    async def _desktop(self, process: Any) -> None:
        """A desktop channel (agent.desktop, loaded at the first one)."""
        if self._desktops is None:
            from agent.desktop import DesktopService

            self._desktops = DesktopService(
                lambda: self.policy,
                self.sessions,
                groups=self.groups,
                end_here=self.desk.end_at_screen,
            )
        await self._desktops.serve(process)

    def _files(self, chan: Any) -> Any:
        """An SFTP channel (agent.files, loaded at the first one)."""
        from agent.files import FileServer

        return FileServer(chan, lambda: self.policy, self.sessions)

    def reload_policy(self) -> bool:
        """Read policy.toml again. A broken file keeps the current policy (and
        says why in the log); a good one applies to runs from now on and is
        announced to HQ in a fresh hello. True if the new policy was taken."""
        path = self.dir.policy_file
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            log.error("policy_reload_failed", path=str(path), error=str(exc))
            return False
        old = self.runs.policy
        self.runs.apply(policy, self._resolve(policy))
        if not policy.allow_shell:
            self.sessions.stop_kind(
                "shell", "this machine's policy no longer allows shells (allow_shell = false)"
            )
        if policy.file_roots != old.file_roots:
            self.sessions.stop_kind("files", "this machine's file roots changed")
        self._desktop_policy_changed(old, policy)
        self.telemetry.resend_hello()
        log.info(
            "policy_reloaded", path=str(path), **policy.summary(self.runs.programs).model_dump()
        )
        return True

    def _desktop_policy_changed(self, old: Policy, new: Policy) -> None:
        """Open desktop streams under a reloaded policy: stopped when desktops
        are no longer allowed or the screen is another; control and clipboard
        looked at again otherwise."""
        if not new.allow_desktop:
            self.sessions.stop_kind(
                "desktop",
                "this machine's policy no longer allows desktop sessions (allow_desktop = false)",
            )
            return
        source = ("desktop_display", "desktop_xauthority", "desktop_vnc_address")
        if any(getattr(old, key) != getattr(new, key) for key in source):
            self.sessions.stop_kind("desktop", "this machine's screen settings changed")
            return
        self.sessions.recheck_control()

    async def sample(self) -> p.HealthReport:
        """One health sample, off the event loop. The sampler keeps counters
        between calls, so calls take turns."""
        async with self._sampling:
            sampler = await self._ensure_sampler()
            return await asyncio.to_thread(sampler.sample)

    async def _ensure_sampler(self) -> Sampler:
        if self._sampler is None:  # priming reads every process: not on the loop
            self._sampler = await asyncio.to_thread(Sampler)
        return self._sampler

    async def fresh_sample(self) -> p.HealthReport | None:
        """A sample for a help request; None (HQ then uses the last report) if it fails."""
        try:
            return await self.sample()
        except Exception:
            log.exception("sample_failed")
            return None

    async def _sample_loop(self) -> None:
        async with self._sampling:
            await self._ensure_sampler()
        next_at = time.monotonic() + min(self.interval, 1.0)
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += self.interval
            if next_at < time.monotonic():  # we fell behind (suspend): skip, don't burst
                next_at = time.monotonic() + self.interval
            try:
                report = await self.sample()
            except Exception:
                log.exception("sample_failed")
                continue
            sampled_at = datetime.now(UTC)

            def build(
                seq: int,
                dropped: int,
                report: p.HealthReport = report,
                sampled_at: datetime = sampled_at,
            ) -> bytes:
                frame = p.Health(
                    seq=seq, sampled_at=sampled_at, spool_dropped=dropped, report=report
                )
                return p.encode(frame)

            failing = self.spool.error
            try:
                await asyncio.to_thread(self.spool.append, "health", build)
            except (SpoolFull, sqlite3.Error, OSError) as exc:
                # the report is lost and counted; the agent and its link go on, and
                # the next report tries again (logged once per episode)
                if self.spool.lost(exc):
                    log.error("spool_write_failed", error=str(exc), dropped=self.spool.dropped)
                continue
            if failing is not None:
                log.warning(
                    "spool_write_recovered",
                    error=failing.message,
                    lost=failing.lost,
                    seconds=round(time.time() - failing.since, 1),
                    dropped=self.spool.dropped,
                )
            self.telemetry.notify()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failure = self.failure or repr(task.exception())
            self._stop.set()  # first: nothing below may keep the agent from stopping
            log.error("task_failed", error=repr(task.exception()))

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, install_signals: bool = True) -> None:
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.stop)
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGHUP, self.reload_policy)
        try:
            self.containment = await asyncio.to_thread(probe, self.config.run_containment)
            self.runs.containment = self.containment
            # runs a previous agent process left behind when it died: before any new one
            await asyncio.to_thread(self.groups.reap, self.containment.base)
            await self.local.start()
            log.info(
                "agent_started",
                agent_id=self.config.agent_id,
                hq=f"{self.config.ssh_host}:{self.config.ssh_port}",
                interval=self.interval,
                local_socket=str(self.local.path),
                run_containment=self.containment.describe(),
            )
            self._spawn(self._sample_loop())
            self._spawn(self.link.run())
            await self._stop.wait()
        finally:
            await self.local.close()
            self.sessions.stop_all("the agent is stopping")
            if self._shells is not None:
                await self._shells.close()
            if self._desktops is not None:
                await self._desktops.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.runs.close()
            self.link.close()
            self.spool.close()
            log.info("agent_stopped", agent_id=self.config.agent_id)
