"""The help desk as a machine sees it. The SSH gateway decodes these requests
from people at a machine off the agent's telemetry channel and hands them here:
help requests (-> a service-request ticket with a fresh health snapshot, or,
when a knowledge-base article solved it, a self-served request closed at once),
knowledge-base queries (-> the best published articles for the machine's site)
and ratings; and the machine's ticket list, pushed back to it.

Each request is answered once: the outcome is stored per (agent, kind, seq),
so a frame re-sent after a reconnect gets the same receipt, not a second ticket.
Each function works in the caller's transaction and knows nothing of SSH.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import structlog
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.base.audit import Actor
from server.itsm import kb as kb_rules
from server.itsm.tickets import OPEN, number_text
from server.ops import helprequests, ticketing
from server.ops import kb as kb_ops
from server.store import fleet, tickets
from server.store import kb as kb_store
from server.store.models import Agent, AgentRequest, Ticket, TicketAgent, User, utcnow
from shared import protocol as p

log = structlog.get_logger(__name__)

RECENT_DAYS = 7


async def _answered(
    session: AsyncSession, agent_id: str, kind: Literal["help", "rating"], seq: int
) -> p.Receipt | None:
    row = await session.get(AgentRequest, (agent_id, kind, seq))
    if row is None:
        return None
    ticket = await session.get(Ticket, row.ticket_id) if row.ticket_id else None
    return p.Receipt(
        kind=kind,
        seq=seq,
        ok=row.ok,
        ticket=number_text(ticket.number) if ticket else None,
        message=row.message,
    )


async def _remember(
    session: AsyncSession,
    agent_id: str,
    kind: str,
    seq: int,
    receipt: p.Receipt,
    ticket_id: str | None,
) -> None:
    session.add(
        AgentRequest(
            agent_id=agent_id,
            kind=kind,
            seq=seq,
            ok=receipt.ok,
            ticket_id=ticket_id,
            message=receipt.message,
        )
    )


@dataclass(frozen=True)
class HelpOutcome:
    receipt: p.Receipt
    opened: str | None = None  # the id of a ticket this request opened


async def ask_help(
    session: AsyncSession, agent_id: str, frame: p.Help, limits: helprequests.Limits
) -> HelpOutcome:
    """A help request: a new service-request ticket with the machine's health
    snapshot, a repeat folded into the open one, a refusal over the limits, or a
    request an article solved, recorded as self-served."""
    done = await _answered(session, agent_id, "help", frame.seq)
    if done is not None:
        return HelpOutcome(done)
    agent = await session.get(Agent, agent_id)
    assert agent is not None
    who = f"{frame.user}@{agent.hostname}" if frame.user else agent.hostname
    actor = Actor("agent", agent_id, who, "machine")
    if frame.solved_by is not None:
        receipt, ticket_id = await _self_served(session, agent, frame, actor, who, limits)
        await _remember(session, agent_id, "help", frame.seq, receipt, ticket_id)
        log.info("help_self_served", agent_id=agent_id, ok=receipt.ok, ticket=receipt.ticket)
        return HelpOutcome(receipt)
    # Text of only whitespace passes the frame's min_length; it must not
    # crash the channel (the frame would come back after every reconnect).
    title = (frame.text.strip().splitlines() or ["help requested"])[0][:120]
    description = frame.text.strip()
    asker = helprequests.Asker(agent.site_id, agent_id, who[:200])
    limited = await helprequests.check(session, asker, limits)
    repeat = (
        None
        if limited is not None or frame.assist
        else await helprequests.open_repeat(session, asker, description)
    )
    if limited is not None or repeat is not None:
        if repeat is not None:
            message = await helprequests.fold(session, repeat, actor, description)
            receipt = p.Receipt(
                kind="help",
                seq=frame.seq,
                ok=True,
                ticket=number_text(repeat.number),
                message=message,
            )
        else:
            assert limited is not None
            receipt = p.Receipt(kind="help", seq=frame.seq, ok=False, message=limited.message)
        await _remember(
            session, agent_id, "help", frame.seq, receipt, repeat.id if repeat else None
        )
        log.info(
            "help_request_repeat" if repeat is not None else "help_request_limited",
            agent_id=agent_id,
            ticket=receipt.ticket,
            message=receipt.message,
        )
        return HelpOutcome(receipt)
    ticket = await ticketing.create(
        session,
        site_id=agent.site_id,
        title=title,
        description=description,
        type="service_request",
        impact=3,
        urgency=2,
        source="help",
        tier="site",
        requester_name=who,
        requester_agent_id=agent_id,
        agent_ids=[agent_id],
        actor=actor,
    )
    snapshot = (
        frame.snapshot.model_dump(mode="json", by_alias=True)
        if frame.snapshot
        else agent.latest_health
    )
    await ticketing.record_event(
        session,
        ticket,
        actor,
        "snapshot",
        "snapshot",
        "health of the machine when help was asked",
        internal=True,
        data={
            "snapshot": snapshot,
            "sampled_at": frame.asked_at.isoformat(),
            "assist": frame.assist,
        },
    )
    receipt = p.Receipt(
        kind="help",
        seq=frame.seq,
        ok=True,
        ticket=number_text(ticket.number),
        message=f"ticket {number_text(ticket.number)} opened",
    )
    await _remember(session, agent_id, "help", frame.seq, receipt, ticket.id)
    log.info("help_request", agent_id=agent_id, ticket=receipt.ticket, assist=frame.assist)
    return HelpOutcome(receipt, opened=ticket.id)


async def _self_served(
    session: AsyncSession,
    agent: Agent,
    frame: p.Help,
    actor: Actor,
    who: str,
    limits: helprequests.Limits,
) -> tuple[p.Receipt, str | None]:
    """A help request an article solved: self-served if the article is a
    published one for this machine's site, else refused (nothing is opened:
    the person said it is solved). Past the machine's self-served limit it is
    refused; the same person saying the same again is added to the first
    record (see server.ops.helprequests)."""
    assert frame.solved_by is not None
    article = await kb_store.find(session, frame.solved_by)
    viewer = kb_store.Viewer.for_site(agent.site_id)
    if article is None or not kb_store.can_read(viewer, article) or article.state != "published":
        refused = p.Receipt(
            kind="help",
            seq=frame.seq,
            ok=False,
            message=f"{frame.solved_by} is not a published article for this machine",
        )
        return refused, None
    asker = helprequests.Asker(agent.site_id, agent.id, who[:200])
    limited = await helprequests.check_self_served(session, asker, limits)
    if limited is not None:
        return p.Receipt(kind="help", seq=frame.seq, ok=False, message=limited.message), None
    text = frame.text.strip()
    repeat = await helprequests.self_served_repeat(session, asker, article.id, text, limits)
    if repeat is not None:
        await helprequests.fold_self_served(session, repeat, actor, text)
        number = number_text(repeat.number)
        receipt = p.Receipt(
            kind="help",
            seq=frame.seq,
            ok=True,
            ticket=number,
            message=f"already recorded as solved by {kb_rules.number_text(article.number)} "
            f"in {number}",
        )
        return receipt, repeat.id
    ticket = await kb_ops.self_served(
        session,
        article,
        actor,
        site_id=agent.site_id,
        text=frame.text.strip(),
        source="help",
        voter=f"agent:{agent.id}:{frame.user}",
        requester_name=who,
        requester_agent_id=agent.id,
        agent_ids=[agent.id],
    )
    number = number_text(ticket.number)
    receipt = p.Receipt(
        kind="help",
        seq=frame.seq,
        ok=True,
        ticket=number,
        message=f"recorded as solved by {kb_rules.number_text(article.number)}; {number} is closed",
    )
    return receipt, ticket.id


async def suggest_articles(
    session: AsyncSession, agent_id: str, frame: p.KbQuery
) -> p.KbSuggestions:
    """The best published articles for the machine's site: public ones and
    the site's own (never internal ones), any word matching, best first."""
    agent = await session.get(Agent, agent_id)
    assert agent is not None
    hits = await kb_store.search(
        session,
        kb_store.Viewer.for_site(agent.site_id),
        frame.text,
        match="any",
        states=("published",),
        limit=frame.limit,
    )
    return p.KbSuggestions(
        id=frame.id,
        items=[
            p.KbSuggestion(
                number=kb_rules.number_text(h.article.number),
                title=h.article.title,
                symptom=h.article.symptom[:2000],
                resolution=h.article.resolution[:4000],
                snippet=(h.snippet or "")[:1000],
            )
            for h in hits
        ],
    )


async def rate(session: AsyncSession, agent_id: str, frame: p.Rating) -> p.Receipt:
    """A rating (CSAT) of a resolved ticket asked for from this machine, once."""
    done = await _answered(session, agent_id, "rating", frame.seq)
    if done is not None:
        return done
    ticket = await tickets.find(session, frame.ticket)
    agent = await session.get(Agent, agent_id)
    assert agent is not None
    who = f"{frame.user}@{agent.hostname}" if frame.user else agent.hostname
    ticket_id = None
    if ticket is None or ticket.requester_agent_id != agent_id:
        receipt = p.Receipt(
            kind="rating",
            seq=frame.seq,
            ok=False,
            message=f"{frame.ticket} was not asked for from this machine",
        )
    elif ticket.status not in ("resolved", "closed"):
        receipt = p.Receipt(
            kind="rating",
            seq=frame.seq,
            ok=False,
            message=f"{frame.ticket} is {ticket.status}; rate it once resolved",
        )
    elif ticket.rating is not None:
        receipt = p.Receipt(
            kind="rating",
            seq=frame.seq,
            ok=False,
            message=f"{frame.ticket} has been rated already",
        )
    else:
        await ticketing.rate(
            session,
            ticket,
            frame.score,
            frame.comment,
            Actor("agent", agent_id, who, "machine"),
        )
        ticket_id = ticket.id
        receipt = p.Receipt(
            kind="rating",
            seq=frame.seq,
            ok=True,
            ticket=frame.ticket,
            message=f"thank you: {frame.ticket} rated {frame.score}/5",
        )
    await _remember(session, agent_id, "rating", frame.seq, receipt, ticket_id)
    return receipt


async def tickets_frame(session: AsyncSession, agent_id: str) -> p.Tickets:
    """The machine's open tickets and those resolved in the last week."""
    since = utcnow() - timedelta(days=RECENT_DAYS)
    linked = select(TicketAgent.ticket_id).where(TicketAgent.agent_id == agent_id)
    rows = (
        await session.execute(
            select(Ticket, User.username)
            .outerjoin(User, User.id == Ticket.assignee_id)
            .where(or_(Ticket.id.in_(linked), Ticket.requester_agent_id == agent_id))
            .where(or_(Ticket.status.in_(sorted(OPEN)), Ticket.updated_at >= since))
            .order_by(Ticket.number.desc())
            .limit(50)
        )
    ).all()
    return p.Tickets(
        items=[
            p.TicketBrief(
                number=number_text(t.number),
                title=t.title,
                status=t.status,
                priority=t.priority,
                updated_at=t.updated_at,
                assignee=user,
                rated=t.rating is not None,
                requested_here=t.requester_agent_id == agent_id,
            )
            for t, user in rows
        ]
    )


async def hello(session: AsyncSession, agent_id: str, frame: p.Hello) -> None:
    """A machine checked in: its version, facts and catalog."""
    await fleet.record_hello(session, agent_id, frame)


async def agents_of_tickets(session: AsyncSession, ticket_ids: set[str]) -> set[str]:
    rows = await session.execute(
        select(TicketAgent.agent_id).where(TicketAgent.ticket_id.in_(ticket_ids))
    )
    direct = await session.execute(
        select(Ticket.requester_agent_id).where(
            Ticket.id.in_(ticket_ids), Ticket.requester_agent_id.is_not(None)
        )
    )
    return {r[0] for r in rows} | {r[0] for r in direct if r[0] is not None}
