"""HQ's end of an agent's `telemetry` channel: read frames, decode them and
hand each to its operation or engine part (health to the ingestor, help, KB
queries and ratings to `server.ops.machinedesk`, consent to remote sessions),
then answer with acks and receipts. A malformed or oversized frame closes the
agent's connection; HQ carries on. Ticket lists are pushed on this channel."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.base.metrics import Metrics
from server.engine import paramcheck
from server.engine.ingest import Ingestor
from server.links.registry import AgentLink, Registry
from server.ops import helprequests, machinedesk
from shared import protocol as p

log = structlog.get_logger(__name__)

HelpHook = Callable[[str, str, p.Help], Awaitable[None]]
HelloHook = Callable[[str], Awaitable[None]]
ConsentHook = Callable[[str, p.Consent], Awaitable[None]]


@dataclass(frozen=True)
class Hooks:
    """What the engine wants to hear of: a help request that opened a ticket
    (agent id, ticket id, frame), a machine's hello, a consent answer."""

    on_help: HelpHook
    on_hello: HelloHook
    on_consent: ConsentHook


class Telemetry:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        links: Registry,
        metrics: Metrics,
        ingestor: Ingestor,
        help_limits: helprequests.Limits,
        hooks: Hooks,
    ) -> None:
        self._sessions = sessions
        self._links = links
        self._metrics = metrics
        self._ingestor = ingestor
        self._help_limits = help_limits
        self._hooks = hooks

    async def run(self, link: AgentLink) -> None:
        """Serve one agent's telemetry channel until it closes."""
        writer, reader, _ = await link.conn.open_session(
            subsystem=p.TELEMETRY_SUBSYSTEM, encoding=None
        )
        link.writer = writer

        def ack(seqs: list[int]) -> None:
            # If the link went away the agent re-sends after reconnecting.
            link.send(p.Ack(kind="health", seqs=seqs))

        decoder = p.FrameDecoder()
        hello_seen = False
        while True:
            data = await reader.read(65536)
            if not data:
                return
            try:
                for line in decoder.feed(data):
                    frame = p.decode_agent_frame(line)
                    if isinstance(frame, p.Hello):
                        if frame.agent_id != link.agent_id:
                            raise p.FrameError(
                                f"hello names agent {frame.agent_id}, "
                                f"but the key is {link.agent_id}'s"
                            )
                        hello_seen = True
                        link.info["hello_at"] = time.time()  # not the frame: it is big
                        await self._hello(link, await _vetted(frame))
                    elif not hello_seen:
                        raise p.FrameError(f"{frame.type} frame before hello")
                    elif isinstance(frame, p.Health):
                        await self._ingestor.submit(link.agent_id, frame, ack)
                    elif isinstance(frame, p.Help):
                        link.send(await self._help(link.agent_id, frame))
                        link.send(p.Ack(kind="help", seqs=[frame.seq]))
                    elif isinstance(frame, p.KbQuery):
                        async with self._sessions() as session:
                            found = await machinedesk.suggest_articles(
                                session, link.agent_id, frame
                            )
                        link.send(found)
                    elif isinstance(frame, p.Rating):
                        async with self._sessions.begin() as session:
                            receipt = await machinedesk.rate(session, link.agent_id, frame)
                        link.send(receipt)
                        link.send(p.Ack(kind="rating", seqs=[frame.seq]))
                    else:
                        await self._hooks.on_consent(link.agent_id, frame)
                        link.send(p.Ack(kind="consent", seqs=[frame.seq]))
            except p.FrameError as exc:
                self._metrics.bad_frames.inc()
                log.warning("agent_frame_rejected", peer=link.peer, error=str(exc))
                link.close()
                return

    async def _hello(self, link: AgentLink, frame: p.Hello) -> None:
        async with self._sessions.begin() as session:
            await machinedesk.hello(session, link.agent_id, frame)
        log.info("agent_hello", version=frame.version, dropped=frame.spool_dropped)
        await self.push_tickets({link.agent_id})
        await self._hooks.on_hello(link.agent_id)

    async def _help(self, agent_id: str, frame: p.Help) -> p.Receipt:
        async with self._sessions.begin() as session:
            outcome = await machinedesk.ask_help(session, agent_id, frame, self._help_limits)
        if outcome.opened is not None:
            await self._hooks.on_help(agent_id, outcome.opened, frame)
        return outcome.receipt

    # --- pushing ticket lists -----------------------------------------------------

    async def push_tickets(self, agent_ids: set[str]) -> None:
        """Send each connected agent among these its current ticket list."""
        links = [link for a in agent_ids if (link := self._links.get(a)) is not None]
        if not links:
            return
        async with self._sessions() as session:
            for link in links:
                link.send(await machinedesk.tickets_frame(session, link.agent_id))

    async def push_for(self, ticket_ids: set[str]) -> None:
        """Push the new lists to the machines these tickets concern."""
        if not len(self._links):
            return
        try:
            async with self._sessions() as session:
                agents = await machinedesk.agents_of_tickets(session, ticket_ids)
            await self.push_tickets(agents)
        except Exception as exc:
            log.warning("ticket_push_failed", error=str(exc))


async def _vetted(hello: p.Hello) -> p.Hello:
    """The hello with only the catalog entries whose parameter schema HQ can
    check in bounded time (see server.engine.paramcheck); the others are logged and
    not offered."""
    kept, refused = await asyncio.to_thread(paramcheck.vet_catalog, list(hello.catalog))
    for name, reason in refused.items():
        log.warning("agent_catalog_entry_refused", entry=name[:100], reason=reason)
    if not refused:
        return hello
    return hello.model_copy(update={"catalog": kept})
