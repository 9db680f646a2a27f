"""Watches open tickets' SLA clocks: a warning event when a clock passes its
warn share, a breach event when it passes its target (once per clock and
ticket), and closes resolved tickets once their reopen window has passed."""

from __future__ import annotations

import asyncio

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.base.audit import Actor
from server.itsm.tickets import DEFAULT_REOPEN_WINDOW, OPEN
from server.ops import ticketing
from server.store.models import Ticket, utcnow

log = structlog.get_logger(__name__)

SYSTEM = Actor("system", None, "sla", "hq")
CHECK_SECONDS = 30.0


class SlaMonitor:
    """Marks SLA warnings and breaches on open tickets and closes resolved ones
    whose reopen window has passed."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def check(self) -> int:
        """One pass; returns the number of events written."""
        written = 0
        now = utcnow()
        async with self._sessions.begin() as session:
            open_tickets = (
                await session.scalars(select(Ticket).where(Ticket.status.in_(sorted(OPEN))))
            ).all()
            for ticket in open_tickets:
                clocks = await ticketing.clocks(session, ticket, now)
                warned, breached = list(ticket.sla_warned or []), list(ticket.sla_breached or [])
                for kind, c in clocks.items():
                    if c.state == "breached" and kind not in breached:
                        breached.append(kind)
                        await ticketing.record_event(
                            session,
                            ticket,
                            SYSTEM,
                            "sla_breach",
                            "sla_breach",
                            f"SLA {kind} target missed",
                            data={"clock": kind, "due": str(c.due)},
                        )
                        written += 1
                    elif c.state == "warning" and kind not in warned and kind not in breached:
                        warned.append(kind)
                        await ticketing.record_event(
                            session,
                            ticket,
                            SYSTEM,
                            "sla_warning",
                            "sla_warning",
                            f"SLA {kind} target at risk",
                            data={"clock": kind, "due": str(c.due)},
                        )
                        written += 1
                ticket.sla_warned, ticket.sla_breached = warned, breached
            stale = (
                await session.scalars(
                    select(Ticket).where(
                        Ticket.status == "resolved",
                        Ticket.resolved_at < now - DEFAULT_REOPEN_WINDOW,
                    )
                )
            ).all()
            for ticket in stale:
                await ticketing.act(
                    session,
                    ticket,
                    "close",
                    SYSTEM,
                    human=False,
                    note="closed automatically after the reopen window",
                )
                written += 1
        return written

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("sla_check_failed")
            await asyncio.sleep(CHECK_SECONDS)
