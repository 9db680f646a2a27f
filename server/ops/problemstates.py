"""Moving a problem through its lifecycle. Resolving one may resolve its open
incidents too, a ticket operation; and a ticket reopened may propose a
problem (`server.ops.ticketing` calls `server.ops.problems`). So this sits
above both, and neither of them imports the other back."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession

from server.base.audit import Actor
from server.itsm import problems as pure
from server.itsm.tickets import OPEN as TICKET_OPEN
from server.itsm.tickets import number_text as ticket_number
from server.ops import problems as problem_ops
from server.ops import ticketing
from server.store import problems
from server.store.models import Problem, Ticket, utcnow
from shared.errors import Conflict, Invalid


async def move(
    session: AsyncSession,
    problem: Problem,
    target: str,
    actor: Actor,
    *,
    workaround: str | None = None,
    root_cause: str | None = None,
    resolution: str | None = None,
    reason: str | None = None,
    note: str | None = None,
    resolve_incidents: Callable[[Ticket], bool] | None = None,
) -> None:
    """Move the problem to `target`; texts given here are stored with the move.
    Resolving it with `resolve_incidents` also resolves each open linked
    incident that callable allows (the caller may work it)."""
    if resolve_incidents is not None and target != "resolved":
        raise Invalid(
            "only resolving a problem resolves its incidents",
            fields={"resolve_incidents": "only with status resolved"},
        )
    given = {"workaround": workaround, "root_cause": root_cause, "resolution": resolution}
    texts = {k: v if v is not None else getattr(problem, k) for k, v in given.items()}
    try:
        status = pure.transition(problem.status, target, reason=reason, **texts)
    except pure.IllegalTransition as exc:
        raise Conflict(str(exc), extra={"allowed": exc.allowed}) from None
    except pure.MissingField as exc:
        raise Invalid(str(exc), fields={exc.field: str(exc)}) from None
    before = problem.status
    for key, value in given.items():
        if value is not None:
            setattr(problem, key, value)
    now = utcnow()
    problem.status = status
    if status == "new":
        problem.accepted_at = now
    elif status == "known_error":
        problem.known_error_at = now
    elif status == "resolved":
        problem.resolved_at = now
    elif status == "closed":
        problem.closed_at = now
    elif status == "dismissed":
        problem.dismissed_at = now
    elif status == "investigating" and before == "resolved":
        problem.resolved_at = None
    action = {"new": "accept", "dismissed": "dismiss"}.get(status, "transition")
    await problem_ops.record(
        session,
        problem,
        actor,
        "state",
        action,
        note or reason or "",
        data={"from": before, "to": status, "changed": sorted(k for k, v in given.items() if v)},
    )
    if status == "known_error":
        await problem_ops.announce_workaround(session, problem, actor)
    elif status == "resolved":
        number = pure.number_text(problem.number)
        await problem_ops.announce(
            session,
            problem,
            actor,
            f"{number} resolved: {problem.resolution}",
            {"state": "resolved"},
        )
        if resolve_incidents is not None:
            await _resolve_incidents(session, problem, actor, resolve_incidents)


async def _resolve_incidents(
    session: AsyncSession, problem: Problem, actor: Actor, may: Callable[[Ticket], bool]
) -> None:
    number = pure.number_text(problem.number)
    done: list[str] = []
    for ticket in await problems.linked_tickets(session, problem.id):
        if ticket.status in TICKET_OPEN and may(ticket):
            await ticketing.act(
                session,
                ticket,
                "resolve",
                actor,
                resolution_code="problem_resolved",
                resolution_text=f"{number}: {problem.resolution}",
            )
            done.append(ticket_number(ticket.number))
    await problem_ops.record(
        session,
        problem,
        actor,
        "incidents_resolved",
        "resolve_incidents",
        ", ".join(done),
        data={"tickets": done},
    )
