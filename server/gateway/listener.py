"""The reverse-SSH listener: agents dial in, HQ plays the SSH client.

Pinning: HQ passes an empty trust list, so every agent host key goes through
`validate_host_public_key`, which accepts only keys of enrolled, non-revoked
agents (an in-memory directory loaded from the database, refreshed
periodically and at once on enroll and revoke). The acceptor re-checks the
database before the agent counts as connected.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import asyncssh
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.base.metrics import Metrics
from server.gateway.telemetry import Telemetry
from server.links.keys import KeyDirectory
from server.links.registry import AgentLink, Registry
from server.store import fleet

log = structlog.get_logger(__name__)

ConnectHook = Callable[[AgentLink], Awaitable[None]]


class _HQClient(asyncssh.SSHClient):
    """HQ's SSH-client side of one agent connection."""

    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway
        self._counted = False
        self._conn: asyncssh.SSHClientConnection | None = None
        self.peer = "?"

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self._gw._peers[conn] = self.peer
        self._gw._pending += 1
        self._counted = True
        if self._gw._pending > self._gw.max_pending:
            self._gw.metrics.agent_refusals.labels("too_many_handshakes").inc()
            log.warning("handshake_refused", reason="too many handshakes in progress")
            conn.abort()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._gw._pending -= 1

    def auth_completed(self) -> None:
        self._uncount()

    def connection_lost(self, exc: Exception | None) -> None:
        self._uncount()

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        fp = key.get_fingerprint("sha256")
        if fp in self._gw.keys:
            return True
        self._gw.metrics.agent_refusals.labels("unknown_key").inc()
        log.warning(
            "agent_key_refused",
            peer=self.peer,
            key_fingerprint=fp,
            reason="not an enrolled, non-revoked agent",
        )
        return False


class Gateway:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        hq_key: asyncssh.SSHKey,
        metrics: Metrics,
        links: Registry,
        keys: KeyDirectory,
        telemetry: Telemetry,
        on_connect: ConnectHook,
        node_id: str,
        keepalive_interval: float,
        max_pending: int,
    ) -> None:
        self.sessions = sessions
        self.hq_key = hq_key
        self.metrics = metrics
        self.registry = links
        self.keys = keys
        self.telemetry = telemetry
        self.on_connect = on_connect
        self.node_id = node_id
        self.keepalive_interval = keepalive_interval
        self.max_pending = max_pending
        self._pending = 0
        # Newly authenticated agents checked in at once: bounds database work in a storm.
        self._admitting = asyncio.Semaphore(32)
        self._peers: weakref.WeakKeyDictionary[asyncssh.SSHClientConnection, str] = (
            weakref.WeakKeyDictionary()
        )
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def tickets_changed(self, ticket_ids: set[str]) -> None:
        """After-commit hook: push the new lists to the machines concerned."""
        task = asyncio.create_task(self.telemetry.push_for(ticket_ids))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- listening -------------------------------------------------------------

    async def start(self, host: str, port: int) -> tuple[str, int]:
        await self.keys.refresh()
        self._acceptor = await asyncssh.listen_reverse(
            host,
            port,
            client_factory=lambda: _HQClient(self),
            acceptor=self._accept,
            error_handler=self._handshake_failed,
            username="fieldlink",
            client_keys=[self.hq_key],
            known_hosts=([], [], []),
            config=None,
            agent_path=None,
            encoding=None,
            keepalive_interval=self.keepalive_interval,
            keepalive_count_max=2,
            login_timeout=20,
            reuse_address=True,
        )
        sockname = self._acceptor.sockets[0].getsockname()
        return sockname[0], sockname[1]

    def _handshake_failed(self, conn: asyncssh.SSHClientConnection, exc: Exception) -> None:
        log.info("agent_handshake_failed", peer=self._peers.get(conn, "?"), error=str(exc))

    def _accept(self, conn: asyncssh.SSHClientConnection) -> None:
        task = asyncio.create_task(self._serve(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: asyncssh.SSHClientConnection) -> None:
        try:
            async with self._admitting:
                link = await self._admit(conn)
        except Exception:
            # e.g. the database pool is exhausted during a reconnect storm: drop the
            # connection so the agent tries again, rather than hold it without telemetry.
            log.exception("agent_admission_failed", peer=self._peers.get(conn, "?"))
            conn.close()
            return
        if link is None:
            return
        try:
            await self.on_connect(link)
            await self.telemetry.run(link)
        except (asyncssh.Error, OSError) as exc:
            log.info("agent_channel_failed", error=str(exc))
        except Exception:
            # e.g. the database went away while handling a frame: drop the link;
            # the agent re-sends whatever was not acknowledged after reconnecting.
            log.exception("agent_handling_failed")
        finally:
            conn.close()
            await conn.wait_closed()
            if self.registry.detach(link):
                try:
                    async with self.sessions.begin() as session:
                        await fleet.set_offline(session, link.agent_id, self.node_id)
                except Exception:
                    log.exception("agent_offline_not_recorded", agent_id=link.agent_id)
                log.info("agent_disconnected", peer=link.peer)
            self.metrics.agents_connected.set(len(self.registry))

    async def _admit(self, conn: asyncssh.SSHClientConnection) -> AgentLink | None:
        """Check the agent in the database and mark it online; None if refused."""
        key = conn.get_server_host_key()
        fp = key.get_fingerprint("sha256") if key is not None else ""
        peer = self._peers.get(conn, "?")
        async with self.sessions() as session:
            agent = await fleet.agent_by_fingerprint(session, fp)
        if agent is None or agent.revoked_at is not None:
            self.metrics.agent_refusals.labels("revoked").inc()
            log.warning(
                "agent_key_refused", peer=peer, key_fingerprint=fp, reason="revoked or unknown"
            )
            conn.close()
            return None
        link = AgentLink(agent.id, conn, peer)
        structlog.contextvars.bind_contextvars(agent_id=agent.id)
        self.registry.attach(link)
        self.metrics.agents_connected.set(len(self.registry))
        async with self.sessions.begin() as session:
            await fleet.set_online(session, agent.id, self.node_id)
        log.info("agent_connected", peer=peer)
        return link

    async def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
        for link in self.registry.all():
            link.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
