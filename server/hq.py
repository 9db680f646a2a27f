"""The HQ process: database, SSH gateway, HTTPS API and background tasks,
started and stopped as one unit (`fieldlink serve`, the demo, the tests)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import signal
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

import structlog
from aiohttp import web

from server.app import make_app
from server.base.metrics import Metrics
from server.config.datadir import DataDir
from server.config.settings import Settings
from server.context import Services
from server.control.socket import ControlServer
from server.engine import slamonitor
from server.engine.alerting import AlertEngine, ensure_default_rules
from server.engine.changes import ChangeRunner
from server.engine.ingest import Ingestor
from server.engine.jobs import Jobs
from server.engine.remote import Sessions
from server.engine.webhooks import Sender
from server.gateway.listener import Gateway
from server.ops import helprequests
from server.store import fleet, people
from server.store.db import make_engine, migrate, sessionmaker
from server.store.hooks import CommitHooks
from server.store.models import utcnow
from server.web.guard import Guard, GuardedSite
from shared.errors import FieldlinkError

log = structlog.get_logger(__name__)

# Revocations reach the gateway at once (API, control socket); this catches
# changes made by other HQ replicas.
KEY_REFRESH_SECONDS = 60.0
PRUNE_SECONDS = 3600.0
DRAIN_SECONDS = 10.0  # at shutdown, for health already received to be stored


class PortInUse(FieldlinkError):
    """A listen address HQ needs is taken (by another HQ or another program)."""

    code = "port_in_use"

    def __init__(self, what: str, address: str) -> None:
        super().__init__(
            f"the {what} port {address} is already in use (another Fieldlink or another "
            "program listens there)",
            fields={what.lower(): f"{address} is in use"},
        )
        self.what = what
        self.address = address


def _bind_error(exc: OSError, what: str, address: str) -> Exception:
    if exc.errno == errno.EADDRINUSE:
        return PortInUse(what, address)
    return exc


class HQ:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.datadir = DataDir(settings.data_dir)
        self.services: Services | None = None
        self._runner: web.AppRunner | None = None
        self._control: ControlServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped = asyncio.Event()

    @property
    def svc(self) -> Services:
        assert self.services is not None, "HQ not started"
        return self.services

    @property
    def url(self) -> str:
        host = self.settings.http_addr[0]
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - reading our own bind address
            host = "127.0.0.1"
        return f"https://{host}:{self.svc.http_port}"

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background_task_failed", task=name, error=repr(t.exception()))

        task.add_done_callback(done)

    async def start(self) -> None:
        self.datadir.require()
        engine = make_engine(self.settings.db_url())
        await migrate(engine)
        hooks = CommitHooks()
        sessions = sessionmaker(engine, hooks)
        async with sessions.begin() as session:
            await people.ensure_builtin_roles(session)
            await fleet.mark_node_offline(session, self.settings.node_id)
        metrics = Metrics()
        ingestor = Ingestor(sessions, metrics)
        gateway = Gateway(
            sessions=sessions,
            hq_key=self.datadir.ssh_key(),
            metrics=metrics,
            ingestor=ingestor,
            node_id=self.settings.node_id,
            keepalive_interval=self.settings.keepalive_interval,
            max_pending=self.settings.max_pending_handshakes,
            help_limits=helprequests.Limits.of(self.settings),
        )
        hooks.tickets_changed.append(gateway.tickets_changed)
        self.services = svc = Services(
            settings=self.settings,
            datadir=self.datadir,
            engine=engine,
            sessions=sessions,
            metrics=metrics,
            gateway=gateway,
            fingerprint=self.datadir.fingerprint(),
            hq_public_key=self.datadir.ssh_public_key(),
            master_key=self.datadir.master_key(),
        )
        self._spawn(ingestor.run(), "ingest")
        svc._jobs = jobs = Jobs(svc)
        await jobs.recover()
        gateway.on_connect.append(jobs.on_agent_connected)
        try:
            _, svc.ssh_port = await gateway.start(*self.settings.ssh_addr)
        except OSError as exc:
            raise _bind_error(exc, "SSH", self.settings.ssh) from exc

        app = make_app(svc)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, port = self.settings.http_addr
        guard = Guard(
            self.settings.http_header_timeout, self.settings.http_max_unauthenticated, metrics
        )
        site = GuardedSite(
            self._runner, host, port, ssl_context=self.datadir.ssl_context(), guard=guard
        )
        try:
            await site.start()
        except OSError as exc:
            raise _bind_error(exc, "HTTPS", self.settings.http) from exc
        svc.http_port = self._runner.addresses[0][1]

        self._spawn(self._refresh_keys_loop(), "key-refresh")
        self._spawn(self._prune_loop(), "prune")
        self._spawn(jobs.sweep_loop(), "job-sweep")
        self._spawn(jobs.writer(), "job-results")
        await ensure_default_rules(svc)
        svc._alerts = alert_engine = AlertEngine(svc)
        ingestor.listeners.append(alert_engine.on_ingest)
        self._spawn(alert_engine.run(), "alerts")
        self._spawn(alert_engine.offline_loop(), "alerts-offline")
        svc._webhooks = sender = Sender(svc)
        self._spawn(sender.run(), "webhooks")
        self._spawn(slamonitor.loop(svc), "sla")
        svc._remote = remote = Sessions(svc)
        hooks.tickets_changed.append(remote.tickets_changed)
        gateway.on_help.append(remote.offer_from_site)
        gateway.on_hello.append(remote.push_live)
        gateway.on_consent = remote.from_machine
        self._spawn(remote.loop(), "sessions")
        svc._changes = change_runner = ChangeRunner(svc)
        self._spawn(change_runner.run(), "changes")
        self._control = ControlServer(self.datadir.control_socket, self._on_control)
        await self._control.start()
        self.datadir.write_serve_info(
            {
                "pid": os.getpid(),
                "url": self.url,
                "http_port": svc.http_port,
                "ssh_port": svc.ssh_port,
                "node_id": self.settings.node_id,
            }
        )
        # Start-up objects (modules, models, validators) live for the whole run: keep
        # them out of the collector's full passes, which otherwise pause the loop.
        gc.freeze()
        log.info(
            "hq_started",
            url=self.url,
            ssh_port=svc.ssh_port,
            db=engine.url.get_backend_name(),
            fingerprint=svc.fingerprint,
        )

    async def _on_control(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "agent_revoked" and isinstance(message.get("agent_id"), str):
            await self.svc.gateway.refresh_keys()
            self.svc.gateway.agent_revoked(message["agent_id"])
        elif op == "refresh_keys":
            await self.svc.gateway.refresh_keys()
        else:
            raise ValueError(f"unknown control operation {op!r}")

    async def _refresh_keys_loop(self) -> None:
        while True:
            await asyncio.sleep(KEY_REFRESH_SECONDS)
            try:
                await self.svc.gateway.refresh_keys()
            except Exception as exc:
                log.warning("key_refresh_failed", error=str(exc))

    async def prune_once(self) -> int:
        cutoff = utcnow() - timedelta(days=self.settings.health_retention_days)
        total = 0
        while True:
            async with self.svc.sessions.begin() as session:
                removed = await fleet.prune_health(session, cutoff)
            total += removed
            if removed == 0:
                return total
            await asyncio.sleep(0)

    async def _prune_loop(self) -> None:
        while True:
            try:
                removed = await self.prune_once()
                if removed:
                    log.info("health_pruned", removed=removed)
            except Exception as exc:
                log.warning("prune_failed", error=str(exc))
            await asyncio.sleep(PRUNE_SECONDS)

    async def stop(self) -> None:
        if self.services is None:
            return
        if self._control is not None:
            await self._control.stop()
        if self.svc._remote is not None:
            await self.svc.remote.stop()
        await self.svc.gateway.stop()
        await self.svc.jobs.stop()
        if self.svc._alerts is not None:
            await self.svc.alerts.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.svc.gateway.ingestor.drain(DRAIN_SECONDS)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._mark_offline()
        await self.svc.engine.dispose()
        self.datadir.clear_serve_info()
        self._stopped.set()
        log.info("hq_stopped")

    async def _mark_offline(self) -> None:
        """The last write: none of this replica's agents is connected any more.

        A task cancelled in the middle of a statement leaves its SQLite
        connection closed only in name: the unfinished statement keeps the
        write lock until the garbage collector frees it, and nothing else runs
        the collector while HQ waits here. So collect while the write waits,
        with what start-up froze collectable again (the pool's connections are
        among it).
        """
        gc.unfreeze()

        async def mark() -> None:
            async with self.svc.sessions.begin() as session:
                await fleet.mark_node_offline(session, self.settings.node_id)

        task = asyncio.create_task(mark())
        while not task.done():
            gc.collect()
            await asyncio.wait({task}, timeout=0.2)
        if task.exception() is not None:  # the next start does it anyway
            log.warning("agents_not_marked_offline", error=str(task.exception()))

    async def run_until_signalled(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await self.stop()
