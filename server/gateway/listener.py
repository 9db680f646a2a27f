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
from datetime import timedelta
from typing import Any

import asyncssh
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.base.metrics import Metrics
from server.engine.ingest import Ingestor
from server.gateway.telemetry import run_telemetry
from server.links.registry import AgentLink, Registry
from server.ops.helprequests import Limits
from server.store import fleet

log = structlog.get_logger(__name__)

ConnectHook = Callable[[AgentLink], Awaitable[None]]
HelpHook = Callable[[str, str, Any], Awaitable[None]]


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
        ingestor: Ingestor,
        node_id: str,
        keepalive_interval: float,
        max_pending: int,
        help_limits: Limits | None = None,
    ) -> None:
        self.help_limits = help_limits or Limits(10, 5, timedelta(hours=1))
        self.sessions = sessions
        self.hq_key = hq_key
        self.metrics = metrics
        self.ingestor = ingestor
        self.node_id = node_id
        self.keepalive_interval = keepalive_interval
        self.max_pending = max_pending
        self.keys: dict[str, str] = {}
        self.registry = Registry()
        self.on_connect: list[ConnectHook] = []
        self.on_help: list[HelpHook] = []
        self.on_hello: list[Callable[[str], Awaitable[None]]] = []
        self.on_consent: Callable[[str, Any], Awaitable[None]] | None = None
        self._pending = 0
        # Newly authenticated agents checked in at once: bounds database work in a storm.
        self._admitting = asyncio.Semaphore(32)
        self._peers: weakref.WeakKeyDictionary[asyncssh.SSHClientConnection, str] = (
            weakref.WeakKeyDictionary()
        )
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- key directory ---------------------------------------------------------

    async def refresh_keys(self) -> None:
        async with self.sessions() as session:
            keys = await fleet.active_keys(session)
        self.keys = keys
        allowed = set(keys.values())
        for link in self.registry.all():
            if link.agent_id not in allowed:
                log.info("agent_cut_off", agent_id=link.agent_id, reason="revoked")
                link.close()

    def key_enrolled(self, fingerprint: str, agent_id: str) -> None:
        self.keys[fingerprint] = agent_id

    def agent_revoked(self, agent_id: str) -> None:
        self.keys = {fp: a for fp, a in self.keys.items() if a != agent_id}
        if self.registry.disconnect(agent_id):
            log.info("agent_cut_off", agent_id=agent_id, reason="revoked")

    # --- pushing to agents ----------------------------------------------------------

    async def push_tickets(self, agent_ids: set[str]) -> None:
        """Send each connected agent among these its current ticket list."""
        from server.gateway.requests import tickets_frame

        links = [link for a in agent_ids if (link := self.registry.get(a)) is not None]
        if not links:
            return
        async with self.sessions() as session:
            for link in links:
                link.send(await tickets_frame(session, link.agent_id))

    def tickets_changed(self, ticket_ids: set[str]) -> None:
        """After-commit hook: push the new lists to the machines concerned."""
        task = asyncio.create_task(self._push_for(ticket_ids))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _push_for(self, ticket_ids: set[str]) -> None:
        from server.gateway.requests import agents_of_tickets

        if not len(self.registry):
            return
        try:
            async with self.sessions() as session:
                agents = await agents_of_tickets(session, ticket_ids)
            await self.push_tickets(agents)
        except Exception as exc:
            log.warning("ticket_push_failed", error=str(exc))

    # --- listening -------------------------------------------------------------

    async def start(self, host: str, port: int) -> tuple[str, int]:
        await self.refresh_keys()
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
            for hook in self.on_connect:
                await hook(link)
            await run_telemetry(link, self)
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
