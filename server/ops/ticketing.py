"""Ticket operations: create, act (lifecycle), comment, assign, escalate,
link agents, rate. Each one updates the ticket, appends to its timeline,
writes the audit entry and queues webhook deliveries in the same transaction.
The decisions come from the pure modules in `server.itsm`.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.base.audit import Actor, Event
from server.itsm import sla
from server.itsm.tickets import (
    DEFAULT_REOPEN_WINDOW,
    OPEN,
    IllegalTransition,
    number_text,
    priority_of,
    transition,
)
from server.ops import problems as problem_ops
from server.store import auditlog, tickets
from server.store.hooks import mark_ticket_changed
from server.store.models import (
    OutboxItem,
    Site,
    SlaPolicy,
    Ticket,
    TicketAgent,
    User,
    Webhook,
    utcnow,
)
from shared.errors import Conflict, Invalid


def calendar_of(site: Site) -> sla.Calendar:
    try:
        return sla.Calendar(
            site.timezone,
            dict.fromkeys(
                site.work_days or [],
                (time.fromisoformat(site.work_start), time.fromisoformat(site.work_end)),
            ),
            frozenset(date.fromisoformat(d) for d in site.holidays or []),
        )
    except ValueError:
        return sla.Calendar.business(site.timezone or "UTC")


async def targets_for(session: AsyncSession, priority: str) -> sla.Targets:
    row = await session.get(SlaPolicy, priority)
    if row is None:
        return sla.DEFAULT_TARGETS[priority]
    return sla.Targets(
        row.ack_seconds, row.response_seconds, row.resolve_seconds, row.warn_at, row.business_hours
    )


async def clocks(
    session: AsyncSession, ticket: Ticket, now: datetime | None = None
) -> dict[str, sla.Clock]:
    site = await session.get(Site, ticket.site_id)
    assert site is not None
    cal = calendar_of(site)
    targets = await targets_for(session, ticket.priority)
    now = now or utcnow()
    met = {
        "ack": ticket.acknowledged_at,
        "response": ticket.first_response_at,
        "resolve": ticket.resolved_at,
    }
    frozen = ticket.status in ("closed", "cancelled") and ticket.resolved_at is None
    return {
        kind: sla.clock(
            cal,
            kind,
            targets,
            created_at=ticket.created_at,
            met_at=met[kind] or (ticket.closed_at if frozen else None),
            paused_seconds=ticket.paused_seconds,
            paused_since=ticket.paused_since,
            now=now,
        )
        for kind in sla.CLOCKS
    }


async def refresh_dues(session: AsyncSession, ticket: Ticket) -> None:
    state = await clocks(session, ticket)
    ticket.ack_due = state["ack"].due
    ticket.response_due = state["response"].due
    ticket.resolve_due = state["resolve"].due


def ticket_payload(ticket: Ticket) -> dict[str, Any]:
    return {
        "id": ticket.id,
        "number": number_text(ticket.number),
        "title": ticket.title,
        "type": ticket.type,
        "priority": ticket.priority,
        "status": ticket.status,
        "site_id": ticket.site_id,
        "tier": ticket.tier,
        "source": ticket.source,
        "assignee_id": ticket.assignee_id,
    }


async def notify(session: AsyncSession, event: str, ticket: Ticket, **extra: Any) -> None:
    """Queue a webhook delivery for every enabled webhook that wants `event`."""
    hooks = (await session.scalars(select(Webhook).where(Webhook.enabled.is_(True)))).all()
    payload = {
        "event": event,
        "at": utcnow().isoformat(),
        "ticket": ticket_payload(ticket),
        **extra,
    }
    for hook in hooks:
        if not hook.events or event in hook.events or f"{event.split('.')[0]}.*" in hook.events:
            session.add(OutboxItem(webhook_id=hook.id, event=event, payload=payload))


async def record_event(
    session: AsyncSession,
    ticket: Ticket,
    actor: Actor,
    kind: str,
    action: str,
    body: str = "",
    *,
    internal: bool = False,
    data: dict[str, Any] | None = None,
) -> None:
    ticket.updated_at = utcnow()
    mark_ticket_changed(session, ticket.id)
    await tickets.add_event(session, ticket.id, actor, kind, body, internal=internal, data=data)
    await auditlog.append(
        session,
        actor,
        Event(
            f"ticket.{action}",
            target_type="ticket",
            target_id=ticket.id,
            site_id=ticket.site_id,
            ticket_id=ticket.id,
            details={"number": number_text(ticket.number), **(data or {})},
        ),
    )
    await notify(session, f"ticket.{action}", ticket, **({"data": data} if data else {}))


async def create(
    session: AsyncSession,
    *,
    site_id: str,
    title: str,
    actor: Actor,
    description: str = "",
    type: str = "incident",
    impact: int = 3,
    urgency: int = 3,
    priority: str | None = None,
    source: str = "api",
    tier: str = "hq",
    requester_id: str | None = None,
    requester_name: str = "",
    requester_agent_id: str | None = None,
    agent_ids: list[str] | None = None,
) -> Ticket:
    ticket = Ticket(
        number=await tickets.next_number(session),
        title=title,
        description=description,
        type=type,
        impact=impact,
        urgency=urgency,
        priority=priority or priority_of(impact, urgency),
        status="new",
        site_id=site_id,
        requester_id=requester_id,
        requester_name=requester_name,
        requester_agent_id=requester_agent_id,
        tier=tier,
        source=source,
        paused_seconds=0.0,
        reopen_count=0,
        escalation_count=0,
        human_touched=False,
        sla_warned=[],
        sla_breached=[],
        auto_resolved=False,
    )
    session.add(ticket)
    await session.flush()
    for agent_id in dict.fromkeys(agent_ids or []):
        session.add(TicketAgent(ticket_id=ticket.id, agent_id=agent_id))
    await refresh_dues(session, ticket)
    await record_event(
        session,
        ticket,
        actor,
        "created",
        "create",
        description[:2000],
        data={
            "source": source,
            "priority": ticket.priority,
            "tier": tier,
            "agents": list(agent_ids or []),
        },
    )
    return ticket


async def act(
    session: AsyncSession,
    ticket: Ticket,
    action: str,
    actor: Actor,
    *,
    reason: str | None = None,
    note: str | None = None,
    resolution_code: str | None = None,
    resolution_text: str | None = None,
    human: bool = True,
    reopen_window_seconds: float | None = None,
) -> Ticket:
    now = utcnow()
    window = (
        timedelta(seconds=reopen_window_seconds)
        if reopen_window_seconds is not None
        else DEFAULT_REOPEN_WINDOW
    )
    try:
        change = transition(
            ticket.status,
            action,
            reason=reason,
            resolved_at=ticket.resolved_at,
            now=now,
            reopen_window=window,
        )
    except IllegalTransition as exc:
        raise Conflict(str(exc), extra={"allowed": exc.allowed}) from None
    except ValueError as exc:
        raise Invalid(str(exc), fields={"reason": str(exc)}) from None
    before = ticket.status
    site = await session.get(Site, ticket.site_id)
    assert site is not None
    targets = await targets_for(session, ticket.priority)
    cal = calendar_of(site) if targets.business_hours else sla.ALWAYS
    if before == "waiting" and ticket.paused_since is not None:
        ticket.paused_seconds += sla.elapsed(cal, ticket.paused_since, now)
        ticket.paused_since = None
    if change.status == "waiting":
        ticket.paused_since = now
    ticket.status = change.status
    ticket.waiting_reason = change.waiting_reason
    if action == "ack" or (
        ticket.acknowledged_at is None
        and change.status != "cancelled"
        and action in ("start", "resolve")
        and human
    ):
        ticket.acknowledged_at = ticket.acknowledged_at or now
    if action == "resolve":
        ticket.resolved_at = now
        ticket.resolved_tier = ticket.tier
        ticket.resolution_code = resolution_code or ("auto_recovered" if not human else "fixed")
        ticket.resolution_text = resolution_text or note or ""
        ticket.auto_resolved = not human
        if human and ticket.first_response_at is None:
            ticket.first_response_at = now
    elif action == "close" or action == "cancel":
        ticket.closed_at = now
    elif action == "reopen":
        ticket.reopen_count += 1
        ticket.resolved_at = None
        ticket.resolved_tier = None
        ticket.auto_resolved = False
        ticket.closed_at = None
    if human:
        ticket.human_touched = True
    await refresh_dues(session, ticket)
    await record_event(
        session,
        ticket,
        actor,
        "state",
        action,
        note or "",
        data={
            "from": before,
            "to": ticket.status,
            "reason": reason,
            "resolution_code": ticket.resolution_code if action == "resolve" else None,
        },
    )
    if change.reopened:
        await problem_ops.after_reopen(session, ticket)
    return ticket


async def comment(
    session: AsyncSession,
    ticket: Ticket,
    actor: Actor,
    body: str,
    *,
    internal: bool,
    by_requester: bool,
) -> None:
    if not by_requester and not internal and ticket.first_response_at is None:
        ticket.first_response_at = utcnow()
    if not by_requester:
        ticket.human_touched = True
    await record_event(
        session,
        ticket,
        actor,
        "comment",
        "comment",
        body,
        internal=internal,
        data={"internal": internal},
    )


async def assign(session: AsyncSession, ticket: Ticket, user: User | None, actor: Actor) -> None:
    ticket.assignee_id = user.id if user else None
    ticket.human_touched = True
    await record_event(
        session,
        ticket,
        actor,
        "assignment",
        "assign",
        f"assigned to {user.username}" if user else "unassigned",
        data={"assignee": user.username if user else None},
    )


async def escalate(session: AsyncSession, ticket: Ticket, reason: str, actor: Actor) -> None:
    if ticket.status not in OPEN:
        raise Conflict(f"ticket is {ticket.status}; only open tickets escalate")
    if ticket.tier == "hq":
        raise Conflict("ticket is already at the HQ tier")
    ticket.tier = "hq"
    ticket.escalation_count += 1
    ticket.human_touched = True
    await record_event(
        session,
        ticket,
        actor,
        "escalation",
        "escalate",
        reason,
        data={"to": "hq", "reason": reason},
    )


async def link_agent(session: AsyncSession, ticket: Ticket, agent_id: str, actor: Actor) -> bool:
    exists = await session.get(TicketAgent, (ticket.id, agent_id))
    if exists is not None:
        return False
    session.add(TicketAgent(ticket_id=ticket.id, agent_id=agent_id))
    await record_event(
        session, ticket, actor, "agent_linked", "link_agent", data={"agent_id": agent_id}
    )
    return True


async def rate(
    session: AsyncSession, ticket: Ticket, score: int, comment_text: str, actor: Actor
) -> None:
    if ticket.status not in ("resolved", "closed"):
        raise Conflict("only resolved or closed tickets can be rated")
    if ticket.rating is not None:
        raise Conflict("this ticket has been rated already")
    ticket.rating = score
    ticket.rating_comment = comment_text
    ticket.rated_at = utcnow()
    await record_event(
        session, ticket, actor, "rating", "rate", comment_text, data={"score": score}
    )


async def agents_of(session: AsyncSession, ticket_id: str) -> list[str]:
    return list(
        await session.scalars(
            select(TicketAgent.agent_id).where(TicketAgent.ticket_id == ticket_id)
        )
    )
