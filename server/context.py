"""What HQ's handlers and background tasks share, built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from server.base.metrics import Metrics
from server.config.datadir import DataDir
from server.config.settings import Settings
from server.gateway.listener import Gateway

if TYPE_CHECKING:
    from server.engine.alerting import AlertEngine
    from server.engine.changes import ChangeRunner
    from server.engine.jobs import Jobs
    from server.engine.remote import Sessions
    from server.engine.webhooks import Sender


@dataclass
class Services:
    settings: Settings
    datadir: DataDir
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    metrics: Metrics
    gateway: Gateway
    fingerprint: str
    hq_public_key: str
    master_key: bytes
    ssh_port: int = 0
    http_port: int = 0
    extras: dict[str, object] = field(default_factory=dict)
    _jobs: Jobs | None = None
    _alerts: AlertEngine | None = None
    _webhooks: Sender | None = None
    _remote: Sessions | None = None
    _changes: ChangeRunner | None = None

    @property
    def changes(self) -> ChangeRunner:
        """Advances changes in progress (stages, the health gate, halting)."""
        assert self._changes is not None, "changes not started"
        return self._changes

    @property
    def remote(self) -> Sessions:
        """Remote sessions (shells, commands, file transfer) on machines."""
        assert self._remote is not None, "sessions not started"
        return self._remote

    @property
    def alerts(self) -> AlertEngine:
        assert self._alerts is not None, "alerts not started"
        return self._alerts

    @property
    def webhooks(self) -> Sender:
        assert self._webhooks is not None, "webhooks not started"
        return self._webhooks

    @property
    def jobs(self) -> Jobs:
        assert self._jobs is not None, "jobs not started"
        return self._jobs

    def public_ssh(self) -> tuple[str | None, int]:
        """What agents dial: (host or None for "the host in HQ's URL", port)."""
        return self.settings.ssh_public_host, self.settings.ssh_public_port or self.ssh_port


SERVICES = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]
