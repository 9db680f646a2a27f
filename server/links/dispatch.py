"""HQ -> agent requests over the agent's live reverse-SSH connection.

`run()` opens one `fieldlink-run` channel, sends the request, yields output
frames as they arrive and ends with the agent's result. A link that drops
mid-run yields an `interrupted` result, never `ok`; an agent with no live
link here yields `offline` (the caller decides whether to queue).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncssh
import structlog

from server.links.registry import Registry
from shared import protocol as p

log = structlog.get_logger(__name__)

# Extra seconds HQ waits beyond the run's own timeout (the agent enforces it).
GRACE = 10.0


class Offline(Exception):
    """The agent has no live connection to this HQ."""


def _now() -> datetime:
    return datetime.now(UTC)


async def run(
    registry: Registry, agent_id: str, request: p.RunRequest, *, timeout: float
) -> AsyncIterator[p.RunOutput | p.RunResult]:
    """Stream a run on the agent. Raises Offline if the agent is not connected."""
    link = registry.get(agent_id)
    if link is None:
        raise Offline(agent_id)
    started = _now()
    try:
        writer, reader, _ = await link.conn.open_session(subsystem=p.RUN_SUBSYSTEM, encoding=None)
    except (asyncssh.Error, OSError) as exc:
        log.info("run_channel_failed", agent_id=agent_id, error=str(exc))
        raise Offline(agent_id) from exc
    decoder = p.FrameDecoder()
    result: p.RunResult | None = None
    try:
        writer.write(p.encode(request))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout + GRACE
        while result is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                result = p.RunResult(
                    status="timeout",
                    reason="the agent did not answer in time",
                    started_at=started,
                    finished_at=_now(),
                )
                break
            data = await asyncio.wait_for(reader.read(65536), timeout=remaining)
            if not data:
                break
            for line in decoder.feed(data):
                frame = p.decode_run_reply(line)
                if isinstance(frame, p.RunResult):
                    result = frame
                    break
                yield frame
    except TimeoutError:
        result = p.RunResult(
            status="timeout",
            reason="the agent did not answer in time",
            started_at=started,
            finished_at=_now(),
        )
    except (asyncssh.Error, OSError, p.FrameError) as exc:
        log.info("run_interrupted", agent_id=agent_id, error=str(exc))
    finally:
        writer.close()
    if result is None:
        result = p.RunResult(
            status="interrupted",
            reason="the connection to the agent was lost during the run",
            started_at=started,
            finished_at=_now(),
        )
    yield result
