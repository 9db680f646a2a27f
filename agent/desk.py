"""The help desk on the machine: what the daemon does with requests that come
over the local socket (agent.local).

A help request becomes a `Help` frame with a fresh health sample, a rating a
`Rating` frame; both go into the spool first (so nothing is lost while HQ is
away), wake the telemetry sender and wait, bounded, for HQ's receipt. An
answer is either HQ's receipt or "queued": saved here and sent when the link
returns, its receipt recorded then for `fieldlink-agent tickets`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog

from agent.config import AgentConfig
from agent.link import Telemetry
from agent.local import (
    Caller,
    HelpAnswer,
    HelpRequest,
    RateAnswer,
    RateRequest,
    Refusal,
    RequestInfo,
    StatusAnswer,
    StatusRequest,
    TicketsAnswer,
    TicketsRequest,
)
from agent.spool import Asked, RequestRow, Spool
from shared import protocol as p
from shared.version import __version__

log = structlog.get_logger(__name__)

# A person may have this many help requests waiting to reach HQ at once: enough
# for real needs while HQ is away, not enough for a stuck loop to flood HQ.
MAX_WAITING_HELP = 5
RECENT_SECONDS = 7 * 86400  # requests answered this recently are listed


def _when(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def request_info(row: RequestRow) -> RequestInfo:
    return RequestInfo(
        kind=row.kind,
        seq=row.seq,
        user=row.user,
        summary=row.summary,
        asked_at=datetime.fromtimestamp(row.asked_at, UTC),
        state=row.state,
        answered_at=_when(row.answered_at),
        ok=row.ok,
        ticket=row.ticket,
        message=row.message,
    )


class Desk:
    """Answers local requests for the daemon (the `handler` of a LocalServer)."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        spool: Spool,
        telemetry: Telemetry,
        sample: Callable[[], Awaitable[p.HealthReport | None]],
    ) -> None:
        self._config = config
        self._spool = spool
        self._telemetry = telemetry
        self._sample = sample

    async def __call__(
        self,
        caller: Caller,
        request: HelpRequest | RateRequest | TicketsRequest | StatusRequest,
    ) -> HelpAnswer | RateAnswer | TicketsAnswer | StatusAnswer:
        if isinstance(request, HelpRequest):
            return await self.help(caller, request)
        if isinstance(request, RateRequest):
            return await self.rate(caller, request)
        if isinstance(request, TicketsRequest):
            return await self.tickets()
        return await self.status(caller)

    async def _outcome(self, kind: str, seq: int, wait: float) -> dict[str, object]:
        """HQ's receipt for (kind, seq) if it comes within `wait` seconds."""
        connected = self._telemetry.open
        receipt = await self._telemetry.receipt(kind, seq, wait) if connected else None
        if receipt is None:
            return {"seq": seq, "state": "queued", "connected": connected}
        return {
            "seq": seq,
            "state": "answered",
            "connected": connected,
            "ok": receipt.ok,
            "ticket": receipt.ticket,
            "message": receipt.message,
        }

    async def help(self, caller: Caller, request: HelpRequest) -> HelpAnswer:
        rows = await asyncio.to_thread(self._spool.requests, time.time())
        waiting = [
            r for r in rows if r.kind == "help" and r.user == caller.user and r.state == "waiting"
        ]
        if len(waiting) >= MAX_WAITING_HELP:
            raise Refusal(
                "too_many_waiting",
                f"{len(waiting)} of your help requests are already waiting to reach HQ; "
                "they go as soon as the connection returns",
            )
        text = request.text.strip()
        snapshot = await self._sample()
        asked_at = datetime.now(UTC)

        def build(seq: int, dropped: int) -> bytes:
            frame = p.Help(
                seq=seq,
                text=text,
                user=caller.user,
                assist=request.assist,
                asked_at=asked_at,
                snapshot=snapshot,
            )
            return p.encode(frame)

        asked = Asked(caller.user, text.splitlines()[0][:200])
        spooled = await asyncio.to_thread(self._spool.append, "help", build, asked)
        self._telemetry.notify()
        log.info(
            "help_requested",
            seq=spooled.seq,
            user=caller.user,
            assist=request.assist,
            snapshot=snapshot is not None,
        )
        return HelpAnswer.model_validate(await self._outcome("help", spooled.seq, request.wait))

    async def rate(self, caller: Caller, request: RateRequest) -> RateAnswer:
        rows = await asyncio.to_thread(self._spool.requests, 0.0)
        asker = next(
            (r.user for r in rows if r.kind == "help" and r.ok and r.ticket == request.ticket),
            None,
        )
        if asker is not None and asker != caller.user and caller.uid not in (0, os.getuid()):
            raise Refusal(
                "forbidden", f"{request.ticket} was asked for by {asker}; only they can rate it"
            )

        def build(seq: int, dropped: int) -> bytes:
            frame = p.Rating(
                seq=seq,
                ticket=request.ticket,
                score=request.score,
                comment=request.comment,
                user=caller.user,
            )
            return p.encode(frame)

        asked = Asked(caller.user, f"rating {request.ticket} {request.score}/5")
        spooled = await asyncio.to_thread(self._spool.append, "rating", build, asked)
        self._telemetry.notify()
        log.info("rating_given", seq=spooled.seq, user=caller.user, ticket=request.ticket)
        return RateAnswer.model_validate(await self._outcome("rating", spooled.seq, request.wait))

    async def tickets(self) -> TicketsAnswer:
        rows = await asyncio.to_thread(self._spool.requests, time.time() - RECENT_SECONDS)
        latest = self._telemetry.tickets
        return TicketsAnswer(
            connected=self._telemetry.open,
            received_at=_when(latest.received_at) if latest else None,
            tickets=latest.items if latest else [],
            requests=[request_info(r) for r in rows],
        )

    async def status(self, caller: Caller) -> StatusAnswer:
        stats = await asyncio.to_thread(self._spool.stats)
        rows = await asyncio.to_thread(self._spool.requests, time.time())
        since = stats.values.get("state:since")
        return StatusAnswer(
            agent_id=self._config.agent_id,
            site=self._config.site,
            version=__version__,
            caller=caller.user,
            connected=self._telemetry.open,
            since=_when(float(since)) if since else None,
            spool_pending=stats.pending,
            spool_dropped=stats.dropped,
            requests_waiting=sum(1 for r in rows if r.state == "waiting"),
        )
