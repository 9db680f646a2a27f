"""The composition root: the one place that builds HQ's parts, each with
exactly what it needs, in dependency order, starts them (`fieldlink serve`,
the demo, the tests) and stops them in reverse. It also assembles the aiohttp
app from the API's and the console's routes and hands the handlers their
parts under typed keys (`server.web.keys`)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import signal
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from server import console
from server.api import (
    admin,
    agents,
    alerts,
    audit,
    auth,
    changeflow,
    changes,
    enroll,
    files,
    jobs,
    kb,
    problems,
    reports,
    roles,
    runs,
    service_levels,
    sessions,
    sites,
    system,
    terminal,
    tickets,
)
from server.base.metrics import Metrics
from server.config.datadir import DataDir
from server.config.settings import Settings
from server.console.documents import Documents
from server.control.socket import ControlServer
from server.engine.alerting import AlertEngine, ensure_default_rules
from server.engine.changes import ChangeRunner
from server.engine.ingest import Ingestor
from server.engine.jobs import Jobs
from server.engine.remote import Sessions
from server.engine.runs import Runs
from server.engine.slamonitor import SlaMonitor
from server.engine.webhooks import Sender
from server.gateway.listener import Gateway
from server.gateway.telemetry import Hooks, Telemetry
from server.links.keys import KeyDirectory
from server.links.registry import Registry
from server.ops import helprequests
from server.store import fleet, people
from server.store.db import make_engine, migrate, sessionmaker
from server.store.hooks import CommitHooks
from server.store.models import utcnow
from server.web import keys
from server.web.guard import Guard, GuardedSite, server_header
from server.web.middleware import enforce, errors
from server.web.routing import ApiRouter
from shared.errors import FieldlinkError

log = structlog.get_logger(__name__)

# Revocations reach the gateway at once (API, control socket); this catches
# changes made by other HQ replicas.
KEY_REFRESH_SECONDS = 60.0
PRUNE_SECONDS = 3600.0
DRAIN_SECONDS = 10.0  # at shutdown, for health already received to be stored

ROUTERS: list[ApiRouter] = [
    system.routes,
    auth.routes,
    admin.routes,
    roles.routes,
    sites.routes,
    audit.routes,
    enroll.routes,
    agents.routes,
    runs.routes,
    jobs.routes,
    tickets.routes,
    problems.routes,
    alerts.routes,
    service_levels.routes,
    sessions.routes,
    terminal.routes,
    files.routes,
    changes.routes,
    changeflow.routes,
    kb.routes,
    reports.routes,
]

MAX_BODY = 1024 * 1024


def make_app() -> web.Application:
    """The app's middlewares and routes (API and console); the caller sets its keys."""
    app = web.Application(middlewares=[errors, enforce], client_max_size=MAX_BODY)
    app.on_response_prepare.append(server_header)
    for router in ROUTERS:
        router.install(app)
    console.install(app)
    return app


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


@dataclass(frozen=True)
class Parts:
    """What a started HQ is made of; kept by the root (and read by tests), never
    handed to a part."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    metrics: Metrics
    datadir: DataDir
    fingerprint: str
    master_key: bytes
    links: Registry
    keys: KeyDirectory
    ingestor: Ingestor
    runs: Runs
    jobs: Jobs
    alerts: AlertEngine
    webhooks: Sender
    sla: SlaMonitor
    remote: Sessions
    changes: ChangeRunner
    gateway: Gateway
    ssh_port: int
    http_port: int


class HQ:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.datadir = DataDir(settings.data_dir)
        self._parts: Parts | None = None
        self._stack = contextlib.AsyncExitStack()
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped = asyncio.Event()

    @property
    def parts(self) -> Parts:
        if self._parts is None:
            raise RuntimeError("HQ not started")
        return self._parts

    @property
    def url(self) -> str:
        host = self.settings.http_addr[0]
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - reading our own bind address
            host = "127.0.0.1"
        return f"https://{host}:{self.parts.http_port}"

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background_task_failed", task=name, error=repr(t.exception()))

        task.add_done_callback(done)

    async def start(self) -> None:
        """Build and start every part in dependency order; each start pushes its
        stop, so `stop` (also after a start that failed half-way) undoes them in
        reverse."""
        settings, stack = self.settings, self._stack
        self.datadir.require()
        stack.callback(self.datadir.clear_serve_info)
        engine = make_engine(settings.db_url())
        stack.push_async_callback(engine.dispose)
        await migrate(engine)
        hooks = CommitHooks()
        db = sessionmaker(engine, hooks)
        async with db.begin() as session:
            await people.ensure_builtin_roles(session)
            await fleet.mark_node_offline(session, settings.node_id)
        stack.push_async_callback(self._mark_offline, db)
        stack.push_async_callback(self._cancel_tasks)
        metrics = Metrics()
        master_key = self.datadir.master_key()

        # the engine: agents' live links, then each part with what it needs
        links = Registry()
        directory = KeyDirectory(db, links)
        ingestor = Ingestor(db, metrics)
        self._spawn(ingestor.run(), "ingest")
        stack.push_async_callback(ingestor.drain, DRAIN_SECONDS)
        runner = Runs(db, links)
        job_queue = Jobs(db, links, runner)
        await ensure_default_rules(db)
        alert_engine = AlertEngine(db, runner)
        ingestor.listeners.append(alert_engine.on_ingest)
        sender = Sender(db, master_key)
        sla = SlaMonitor(db)
        remote = Sessions(db, links, master_key, self.datadir.path / "recordings")
        hooks.tickets_changed.append(remote.tickets_changed)
        change_runner = ChangeRunner(db, job_queue)

        # the SSH edge: frames go to operations and the engine parts above
        telemetry = Telemetry(
            sessions=db,
            links=links,
            metrics=metrics,
            ingestor=ingestor,
            help_limits=helprequests.Limits.of(settings),
            hooks=Hooks(
                on_help=remote.offer_from_site,
                on_hello=remote.push_live,
                on_consent=remote.from_machine,
            ),
        )
        gateway = Gateway(
            sessions=db,
            hq_key=self.datadir.ssh_key(),
            metrics=metrics,
            links=links,
            keys=directory,
            telemetry=telemetry,
            on_connect=job_queue.on_agent_connected,
            node_id=settings.node_id,
            keepalive_interval=settings.keepalive_interval,
            max_pending=settings.max_pending_handshakes,
        )
        hooks.tickets_changed.append(gateway.tickets_changed)

        await job_queue.recover()
        stack.push_async_callback(job_queue.stop)
        try:
            _, ssh_port = await gateway.start(*settings.ssh_addr)
        except OSError as exc:
            raise _bind_error(exc, "SSH", settings.ssh) from exc
        finally:
            stack.push_async_callback(gateway.stop)
        fingerprint = self.datadir.fingerprint()
        app = make_app()
        app[keys.CONFIG] = keys.Config(
            settings=settings,
            fingerprint=fingerprint,
            hq_public_key=self.datadir.ssh_public_key(),
            master_key=master_key,
            recordings=self.datadir.path / "recordings",
            ssh_port=ssh_port,
        )
        app[keys.DB] = db
        app[keys.DB_ENGINE] = engine
        app[keys.METRICS] = metrics
        app[keys.LINKS] = links
        app[keys.KEYS] = directory
        app[keys.RUNS] = runner
        app[keys.JOBS] = job_queue
        app[keys.ALERTS] = alert_engine
        app[keys.REMOTE] = remote
        app[keys.CHANGES] = change_runner
        app[keys.REPORT_DOCS] = Documents()
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        stack.push_async_callback(self._runner.cleanup)
        host, port = settings.http_addr
        guard = Guard(settings.http_header_timeout, settings.http_max_unauthenticated, metrics)
        site = GuardedSite(
            self._runner, host, port, ssl_context=self.datadir.ssl_context(), guard=guard
        )
        try:
            await site.start()
        except OSError as exc:
            raise _bind_error(exc, "HTTPS", settings.http) from exc
        http_port = self._runner.addresses[0][1]
        stack.push_async_callback(alert_engine.stop)
        stack.push_async_callback(remote.stop)

        self._spawn(self._refresh_keys_loop(directory), "key-refresh")
        self._spawn(self._prune_loop(db), "prune")
        self._spawn(job_queue.sweep_loop(), "job-sweep")
        self._spawn(job_queue.writer(), "job-results")
        self._spawn(alert_engine.run(), "alerts")
        self._spawn(alert_engine.offline_loop(), "alerts-offline")
        self._spawn(sender.run(), "webhooks")
        self._spawn(sla.run(), "sla")
        self._spawn(remote.loop(), "sessions")
        self._spawn(change_runner.run(), "changes")
        self._parts = Parts(
            engine=engine,
            sessions=db,
            metrics=metrics,
            datadir=self.datadir,
            fingerprint=fingerprint,
            master_key=master_key,
            links=links,
            keys=directory,
            ingestor=ingestor,
            runs=runner,
            jobs=job_queue,
            alerts=alert_engine,
            webhooks=sender,
            sla=sla,
            remote=remote,
            changes=change_runner,
            gateway=gateway,
            ssh_port=ssh_port,
            http_port=http_port,
        )
        control = ControlServer(self.datadir.control_socket, self._on_control)
        await control.start()
        stack.push_async_callback(control.stop)
        self.datadir.write_serve_info(
            {
                "pid": os.getpid(),
                "url": self.url,
                "http_port": http_port,
                "ssh_port": ssh_port,
                "node_id": settings.node_id,
            }
        )
        # Start-up objects (modules, models, validators) live for the whole run: keep
        # them out of the collector's full passes, which otherwise pause the loop.
        gc.freeze()
        log.info(
            "hq_started",
            url=self.url,
            ssh_port=ssh_port,
            db=engine.url.get_backend_name(),
            fingerprint=fingerprint,
        )

    async def _on_control(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        directory = self.parts.keys
        if op == "agent_revoked" and isinstance(message.get("agent_id"), str):
            await directory.refresh()
            directory.revoked(message["agent_id"])
        elif op == "refresh_keys":
            await directory.refresh()
        else:
            raise ValueError(f"unknown control operation {op!r}")

    async def _refresh_keys_loop(self, directory: KeyDirectory) -> None:
        while True:
            await asyncio.sleep(KEY_REFRESH_SECONDS)
            try:
                await directory.refresh()
            except Exception as exc:
                log.warning("key_refresh_failed", error=str(exc))

    async def prune_once(self) -> int:
        return await self._prune(self.parts.sessions)

    async def _prune(self, db: async_sessionmaker[AsyncSession]) -> int:
        cutoff = utcnow() - timedelta(days=self.settings.health_retention_days)
        total = 0
        while True:
            async with db.begin() as session:
                removed = await fleet.prune_health(session, cutoff)
            total += removed
            if removed == 0:
                return total
            await asyncio.sleep(0)

    async def _prune_loop(self, db: async_sessionmaker[AsyncSession]) -> None:
        while True:
            try:
                removed = await self._prune(db)
                if removed:
                    log.info("health_pruned", removed=removed)
            except Exception as exc:
                log.warning("prune_failed", error=str(exc))
            await asyncio.sleep(PRUNE_SECONDS)

    async def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Stop what `start` started, in reverse (nothing if it never started)."""
        started = bool(self._tasks) or self._parts is not None
        await self._stack.aclose()  # empty once done: a second stop does nothing
        self._stopped.set()
        if started:
            log.info("hq_stopped")

    async def _mark_offline(self, db: async_sessionmaker[AsyncSession]) -> None:
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
            async with db.begin() as session:
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
