"""The typed keys under which the composition root (`server.hq`) hands HQ's
parts to the HTTP handlers: one key per part, each set before the app is
built, none optional. Handlers read `request.app[JOBS]` and the like."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from server.base.metrics import Metrics
from server.config.settings import Settings
from server.engine.alerting import AlertEngine
from server.engine.changes import ChangeRunner
from server.engine.jobs import Jobs
from server.engine.remote import Sessions
from server.engine.runs import Runs
from server.links.keys import KeyDirectory
from server.links.registry import Registry


@dataclass(frozen=True)
class Config:
    """The plain values handlers need, all known before the app is built."""

    settings: Settings
    fingerprint: str  # of HQ's TLS certificate, for enrollment tokens
    hq_public_key: str  # HQ's SSH client key, pinned by enrolling agents
    master_key: bytes  # seals TOTP secrets, webhook secrets and recordings
    recordings: Path  # where session recordings are kept
    ssh_port: int  # the port the SSH gateway listens on

    def public_ssh(self) -> tuple[str | None, int]:
        """What agents dial: (host or None for "the host in HQ's URL", port)."""
        return self.settings.ssh_public_host, self.settings.ssh_public_port or self.ssh_port


class ReportDocuments(Protocol):
    """Renders a review report (as `GET /api/v1/reports` answers it) for people:
    the console's templates, handed to the API so it need not import them."""

    def language_of(self, request: web.Request) -> str: ...

    def html(self, report: dict[str, Any], lang: str) -> str: ...

    def pdf(self, report: dict[str, Any], lang: str) -> bytes: ...


CONFIG = web.AppKey("config", Config)
DB = web.AppKey("db", async_sessionmaker[AsyncSession])
DB_ENGINE = web.AppKey("db_engine", AsyncEngine)
METRICS = web.AppKey("metrics", Metrics)
LINKS = web.AppKey("links", Registry)
KEYS = web.AppKey("keys", KeyDirectory)
RUNS = web.AppKey("runs", Runs)
JOBS = web.AppKey("jobs", Jobs)
ALERTS = web.AppKey("alerts", AlertEngine)
REMOTE = web.AppKey("remote", Sessions)
CHANGES = web.AppKey("changes", ChangeRunner)
REPORT_DOCS: web.AppKey[ReportDocuments] = web.AppKey("report_docs")
