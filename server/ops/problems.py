"""Problem operations: open, change, move through the lifecycle, link and
unlink incidents, and HQ's own proposals (an alert rule firing on several
machines, an incident reopened twice). Each one updates the record, appends
to its history, writes the audit entry and, where incidents are concerned,
notes it on their timelines, in the same transaction. Decisions come from
`server.itsm.problems`.
"""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.base.audit import Actor, Event
from server.itsm import problems as pure
from server.itsm.tickets import OPEN as TICKET_OPEN
from server.itsm.tickets import number_text as ticket_number
from server.itsm.tickets import priority_of
from server.store import auditlog, problems, tickets
from server.store.hooks import mark_ticket_changed
from server.store.models import (
    Alert,
    AlertRule,
    OutboxItem,
    Problem,
    ProblemTicket,
    Ticket,
    Webhook,
    utcnow,
)
from shared.errors import Conflict, Invalid

log = structlog.get_logger(__name__)

SYSTEM = Actor("system", None, "problems", "hq")
TEXT_FIELDS = ("root_cause", "workaround", "resolution")


async def record(
    session: AsyncSession,
    problem: Problem,
    actor: Actor,
    kind: str,
    action: str,
    body: str = "",
    *,
    data: dict[str, Any] | None = None,
    ticket_id: str | None = None,
) -> None:
    """History event + audit entry for one change of a problem."""
    problem.updated_at = utcnow()
    await problems.add_event(session, problem.id, actor, kind, body, data=data)
    await notify(session, f"problem.{action}", problem, data)
    await auditlog.append(
        session,
        actor,
        Event(
            f"problem.{action}",
            target_type="problem",
            target_id=problem.id,
            site_id=problem.site_id,
            ticket_id=ticket_id,
            details={"number": pure.number_text(problem.number), **(data or {})},
        ),
    )


def problem_payload(problem: Problem) -> dict[str, Any]:
    return {
        "id": problem.id,
        "number": pure.number_text(problem.number),
        "title": problem.title,
        "status": problem.status,
        "priority": problem.priority,
        "site_id": problem.site_id,
        "origin": problem.origin,
        "workaround": problem.workaround if problem.status == "known_error" else None,
    }


async def notify(
    session: AsyncSession, event: str, problem: Problem, data: dict[str, Any] | None
) -> None:
    """Queue a webhook delivery of `event` for every enabled webhook that wants it
    (no list: every event; `problem.*`: every problem event)."""
    hooks = (await session.scalars(select(Webhook).where(Webhook.enabled.is_(True)))).all()
    wanted = [h for h in hooks if not h.events or event in h.events or "problem.*" in h.events]
    if not wanted:
        return
    payload = {
        "event": event,
        "at": utcnow().isoformat(),
        "problem": problem_payload(problem),
        **({"data": data} if data else {}),
    }
    for hook in wanted:
        session.add(OutboxItem(webhook_id=hook.id, event=event, payload=payload))


async def note_on_ticket(
    session: AsyncSession, ticket: Ticket, actor: Actor, body: str, data: dict[str, Any]
) -> None:
    """A line on an incident's timeline about its problem."""
    ticket.updated_at = utcnow()
    mark_ticket_changed(session, ticket.id)
    await tickets.add_event(session, ticket.id, actor, "problem", body, data=data)


async def create(
    session: AsyncSession,
    *,
    title: str,
    actor: Actor,
    description: str = "",
    site_id: str | None = None,
    impact: int = 3,
    urgency: int = 3,
    priority: str | None = None,
    assignee_id: str | None = None,
    created_by: str | None = None,
    status: str = "new",
    origin: str = "manual",
    origin_ref: str | None = None,
    proposed_reason: str = "",
    incidents: list[Ticket] | None = None,
) -> Problem:
    now = utcnow()
    problem = Problem(
        number=await tickets.next_number(session, problems.COUNTER),
        title=title,
        description=description,
        status=status,
        impact=impact,
        urgency=urgency,
        priority=priority or priority_of(impact, urgency),
        site_id=site_id,
        assignee_id=assignee_id,
        root_cause="",
        workaround="",
        resolution="",
        origin=origin,
        origin_ref=origin_ref,
        proposed_reason=proposed_reason,
        created_by=created_by,
        created_by_name=actor.name or "",
        created_at=now,
        updated_at=now,
        accepted_at=now if status == "new" else None,
    )
    session.add(problem)
    await session.flush()
    proposal = status == "proposed"
    await record(
        session,
        problem,
        actor,
        "proposed" if proposal else "created",
        "propose" if proposal else "create",
        proposed_reason if proposal else description[:2000],
        data={"origin": origin, "origin_ref": origin_ref, "priority": problem.priority},
    )
    for ticket in incidents or []:
        await link(session, problem, ticket, actor)
    return problem


async def update(
    session: AsyncSession, problem: Problem, changes: dict[str, Any], actor: Actor
) -> None:
    """Change fields (title, description, impact, urgency, priority, site,
    assignee, root cause, workaround, resolution)."""
    if problem.status in ("closed", "dismissed"):
        raise Conflict(f"a {problem.status} problem does not change")
    if (
        problem.status == "known_error"
        and "workaround" in changes
        and not str(changes["workaround"] or "").strip()
    ):
        raise Invalid(
            "a known error keeps its workaround",
            fields={"workaround": "cannot be emptied while the problem is a known error"},
        )
    for key, value in changes.items():
        setattr(problem, key, value)
    if ("impact" in changes or "urgency" in changes) and "priority" not in changes:
        problem.priority = priority_of(problem.impact, problem.urgency)
    await record(
        session,
        problem,
        actor,
        "update",
        "update",
        data={"changed": sorted(changes), "priority": problem.priority},
    )
    if "workaround" in changes and problem.status == "known_error":
        await announce_workaround(session, problem, actor)


async def note(session: AsyncSession, problem: Problem, actor: Actor, text: str) -> None:
    """A work note on the problem's history (findings, what was tried)."""
    await record(session, problem, actor, "note", "note", text)


async def announce(
    session: AsyncSession, problem: Problem, actor: Actor, body: str, data: dict[str, Any]
) -> None:
    for ticket in await problems.linked_tickets(session, problem.id):
        if ticket.status in TICKET_OPEN:
            await note_on_ticket(
                session,
                ticket,
                actor,
                body,
                {"problem": pure.number_text(problem.number), "problem_id": problem.id, **data},
            )


async def announce_workaround(session: AsyncSession, problem: Problem, actor: Actor) -> None:
    await announce(
        session,
        problem,
        actor,
        f"known error {pure.number_text(problem.number)}: workaround: {problem.workaround}",
        {"state": "known_error", "workaround": problem.workaround},
    )


async def link(session: AsyncSession, problem: Problem, ticket: Ticket, actor: Actor) -> bool:
    """Tie an incident to the problem; False if it was tied already."""
    if problem.status in ("closed", "dismissed"):
        raise Conflict(f"a {problem.status} problem takes no more incidents")
    if problem.site_id is not None and ticket.site_id != problem.site_id:
        raise Invalid(
            "this problem belongs to one site; the incident is on another",
            fields={"ticket": f"{ticket_number(ticket.number)} is not on the problem's site"},
        )
    if await session.get(ProblemTicket, (problem.id, ticket.id)) is not None:
        return False
    session.add(ProblemTicket(problem_id=problem.id, ticket_id=ticket.id, linked_by=actor.name))
    await session.flush()
    number = pure.number_text(problem.number)
    data = {"ticket": ticket_number(ticket.number), "ticket_id": ticket.id}
    await record(session, problem, actor, "ticket_linked", "link", data=data, ticket_id=ticket.id)
    body = f"linked to problem {number}: {problem.title}"
    if problem.status == "known_error":
        body += f"\nknown error; workaround: {problem.workaround}"
    await note_on_ticket(
        session,
        ticket,
        actor,
        body,
        {"problem": number, "problem_id": problem.id, "state": "linked"},
    )
    return True


async def unlink(session: AsyncSession, problem: Problem, ticket: Ticket, actor: Actor) -> bool:
    row = await session.get(ProblemTicket, (problem.id, ticket.id))
    if row is None:
        return False
    await session.delete(row)
    await session.flush()
    number = pure.number_text(problem.number)
    data = {"ticket": ticket_number(ticket.number), "ticket_id": ticket.id}
    await record(
        session, problem, actor, "ticket_unlinked", "unlink", data=data, ticket_id=ticket.id
    )
    await note_on_ticket(
        session,
        ticket,
        actor,
        f"unlinked from problem {number}",
        {"problem": number, "problem_id": problem.id, "state": "unlinked"},
    )
    return True


# --- proposals ------------------------------------------------------------------------------


async def _active_for(session: AsyncSession, origin: str, ref: str) -> Problem | None:
    stmt = (
        select(Problem)
        .where(
            Problem.origin == origin,
            Problem.origin_ref == ref,
            Problem.status.in_(sorted(pure.ACTIVE)),
        )
        .order_by(Problem.number.desc())
        .limit(1)
    )
    return await session.scalar(stmt)


async def after_alert_fired(session: AsyncSession, rule: AlertRule, ticket: Ticket) -> None:
    """An alert of `rule` fired with `ticket` as its incident. While a problem
    from this rule is still active, the incident joins it; otherwise, when the
    rule's open incidents not yet tied to any problem span enough machines, HQ
    proposes one problem for all of them."""
    if ticket.type != "incident" or ticket.status not in TICKET_OPEN:
        return
    active = await _active_for(session, "alert_rule", rule.id)
    if active is not None:
        if active.site_id is None or active.site_id == ticket.site_id:
            await link(session, active, ticket, SYSTEM)
        return
    linked = select(ProblemTicket.ticket_id)
    rows = (
        await session.execute(
            select(Ticket, Alert.agent_id)
            .join(Alert, Alert.ticket_id == Ticket.id)
            .where(
                Alert.rule_id == rule.id,
                Ticket.status.in_(sorted(TICKET_OPEN)),
                Ticket.type == "incident",
                Ticket.id.not_in(linked),
            )
            .order_by(Ticket.number)
        )
    ).all()
    pairs = [(t.id, agent_id) for t, agent_id in rows]
    if not pure.proposes_for_alerts(pairs):
        return
    incidents = list({t.id: t for t, _ in rows}.values())
    machines = len(pure.machines_firing(pairs))
    sites = {t.site_id for t in incidents}
    site_id = next(iter(sites)) if len(sites) == 1 else rule.site_id
    numbers = ", ".join(ticket_number(t.number) for t in incidents)
    problem = await create(
        session,
        title=f"{rule.name}: firing on {machines} machines",
        description=f"Alert rule {rule.name!r} ({rule.metric} {rule.op} {rule.threshold:g}) "
        f"fires on {machines} machines at once: {numbers}.",
        actor=SYSTEM,
        site_id=site_id,
        priority=rule.priority,
        status="proposed",
        origin="alert_rule",
        origin_ref=rule.id,
        proposed_reason=f"alert rule {rule.name!r} fires on {machines} machines "
        f"(at least {pure.ALERT_MACHINES})",
        incidents=incidents,
    )
    log.info(
        "problem_proposed",
        problem=pure.number_text(problem.number),
        rule=rule.name,
        machines=machines,
    )


async def after_reopen(session: AsyncSession, ticket: Ticket) -> None:
    """An incident was reopened: the second time, HQ proposes a problem for it
    (once per incident, and not when it is tied to an active problem)."""
    if not pure.proposes_for_reopens(ticket.reopen_count, ticket.type):
        return
    tied = await problems.problems_of_ticket(session, ticket.id, include=pure.ACTIVE)
    if tied:
        return
    earlier = await session.scalar(
        select(Problem.id).where(Problem.origin == "reopened", Problem.origin_ref == ticket.id)
    )
    if earlier is not None:
        return
    number = ticket_number(ticket.number)
    problem = await create(
        session,
        title=f"Reopened twice: {ticket.title}"[:300],
        description=f"{number} was resolved and reopened {ticket.reopen_count} times: "
        "the fix does not hold, something underneath may keep causing it.",
        actor=SYSTEM,
        site_id=ticket.site_id,
        priority=ticket.priority,
        status="proposed",
        origin="reopened",
        origin_ref=ticket.id,
        proposed_reason=f"{number} was reopened {ticket.reopen_count} times",
        incidents=[ticket],
    )
    log.info("problem_proposed", problem=pure.number_text(problem.number), ticket=number)
