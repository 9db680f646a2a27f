"""Remote sessions as records, in the caller's transaction: a state change
written to the ticket's timeline (or, without a ticket, the audit trail) and
audited; and the session as the machine is told of it. The engine's
`server.engine.remote.Sessions` drives the sessions themselves."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from server.base.audit import Actor, Event
from server.itsm.tickets import number_text
from server.ops import ticketing
from server.store import auditlog
from server.store.models import RemoteSession, Ticket
from shared import protocol as p


async def record(
    session: AsyncSession,
    rs: RemoteSession,
    actor: Actor,
    action: str,
    text: str,
    **details: Any,
) -> None:
    ticket = await session.get(Ticket, rs.ticket_id)
    if ticket is not None:
        await ticketing.record_event(
            session,
            ticket,
            actor,
            "session",
            f"session_{action}",
            text,
            internal=True,
            data={
                "session_id": rs.id,
                "state": rs.state,
                "kind": rs.kind,
                "agent_id": rs.agent_id,
                **details,
            },
        )
    else:
        await auditlog.append(
            session,
            actor,
            Event(
                f"ticket.session_{action}",
                target_type="session",
                target_id=rs.id,
                site_id=rs.site_id,
                ticket_id=rs.ticket_id,
                details=details,
            ),
        )
    await auditlog.append(
        session,
        actor,
        Event(
            f"session.{action}",
            target_type="session",
            target_id=rs.id,
            site_id=rs.site_id,
            ticket_id=rs.ticket_id,
            details={"state": rs.state, "kind": rs.kind, "agent_id": rs.agent_id, **details},
        ),
    )


def info(rs: RemoteSession, ticket_number: int) -> p.SessionInfo:
    return p.SessionInfo(
        session_id=rs.id,
        kind=rs.kind,
        state=rs.state,
        origin=rs.origin,
        engineer=rs.requested_by_name,
        ticket=number_text(ticket_number),
        reason=rs.reason,
        consent_by=rs.consent_by,
        expires_at=rs.ends_at if rs.state == "active" else rs.expires_at,
        started_at=rs.started_at,
        end_reason=rs.end_reason,
        record_input=rs.record_input,
    )
