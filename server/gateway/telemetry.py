"""HQ's end of an agent's `telemetry` channel: read frames, hand health to
the ingestor, ack what it committed. A malformed or oversized frame closes
the agent's connection; HQ carries on."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog

from server.engine import paramcheck
from server.gateway import requests
from server.store import fleet
from shared import protocol as p

if TYPE_CHECKING:
    from server.gateway.listener import Gateway
    from server.links.registry import AgentLink

log = structlog.get_logger(__name__)


async def run_telemetry(link: AgentLink, gw: Gateway) -> None:
    writer, reader, _ = await link.conn.open_session(subsystem=p.TELEMETRY_SUBSYSTEM, encoding=None)

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
                            f"hello names agent {frame.agent_id}, but the key is {link.agent_id}'s"
                        )
                    hello_seen = True
                    link.info["hello_at"] = time.time()  # not the frame: it is big
                    frame = await _vetted(frame)
                    async with gw.sessions.begin() as session:
                        await fleet.record_hello(session, link.agent_id, frame)
                    log.info("agent_hello", version=frame.version, dropped=frame.spool_dropped)
                    await gw.push_tickets({link.agent_id})
                    for hook in gw.on_hello:
                        await hook(link.agent_id)
                elif not hello_seen:
                    raise p.FrameError(f"{frame.type} frame before hello")
                elif isinstance(frame, p.Health):
                    await gw.ingestor.submit(link.agent_id, frame, ack)
                elif isinstance(frame, p.Help):
                    link.send(await requests.handle_help(gw, link.agent_id, frame))
                    link.send(p.Ack(kind="help", seqs=[frame.seq]))
                elif isinstance(frame, p.KbQuery):
                    link.send(await requests.handle_kb_query(gw, link.agent_id, frame))
                elif isinstance(frame, p.Rating):
                    link.send(await requests.handle_rating(gw, link.agent_id, frame))
                    link.send(p.Ack(kind="rating", seqs=[frame.seq]))
                else:
                    if gw.on_consent is not None:
                        await gw.on_consent(link.agent_id, frame)
                    link.send(p.Ack(kind="consent", seqs=[frame.seq]))
        except p.FrameError as exc:
            gw.metrics.bad_frames.inc()
            log.warning("agent_frame_rejected", peer=link.peer, error=str(exc))
            link.close()
            return


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
