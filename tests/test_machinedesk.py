"""The help desk as a machine sees it (server.ops.machinedesk), without SSH:
help requests open tickets once, ratings are taken once for resolved tickets
asked for from the machine, KB queries answer the site's published articles.
Real SQLite database, real operations; the frames are the wire models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest_asyncio
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.base.audit import Actor
from server.ops import helprequests, machinedesk, ticketing
from server.ops import kb as kb_ops
from server.store import people, tickets
from server.store.db import make_engine, migrate, sessionmaker
from server.store.models import Agent, Ticket, TicketEvent
from shared import protocol as p

LIMITS = helprequests.Limits(per_machine=10, per_asker=5, window=timedelta(hours=1))
ENGINEER = Actor("user", None, "engineer", "test")


@dataclass
class Desk:
    db: async_sessionmaker[AsyncSession]
    agent_id: str
    site_id: str
    other_site_id: str


@pytest_asyncio.fixture
async def desk(sqlite_url: str) -> AsyncIterator[Desk]:
    engine = make_engine(sqlite_url)
    await migrate(engine)
    db = sessionmaker(engine)
    async with db.begin() as session:
        await people.ensure_builtin_roles(session)
        site, _ = await people.get_or_create_site(session, "shop-1")
        other, _ = await people.get_or_create_site(session, "shop-2")
        agent = Agent(site_id=site.id, hostname="till-1", public_key="k", key_fingerprint="fp")
        session.add(agent)
    try:
        yield Desk(db, agent.id, site.id, other.id)
    finally:
        await engine.dispose()


def _help(seq: int, text: str = "the printer is jammed", **kw: object) -> p.Help:
    return p.Help(seq=seq, text=text, user="kim", asked_at=datetime.now(UTC), **kw)


async def _ask(desk: Desk, frame: p.Help) -> machinedesk.HelpOutcome:
    async with desk.db.begin() as session:
        return await machinedesk.ask_help(session, desk.agent_id, frame, LIMITS)


async def _count_tickets(desk: Desk) -> int:
    async with desk.db() as session:
        return int(await session.scalar(select(func.count()).select_from(Ticket)) or 0)


async def test_help_request_opens_a_ticket_once(desk: Desk) -> None:
    """A help frame opens a site-tier service request with a snapshot event; the
    same frame re-sent (after a reconnect) gets the same receipt, no second ticket."""
    outcome = await _ask(desk, _help(1))
    assert outcome.receipt.ok and outcome.receipt.ticket is not None
    assert outcome.opened is not None
    async with desk.db() as session:
        ticket = await session.get(Ticket, outcome.opened)
        assert ticket is not None
        assert (ticket.type, ticket.source, ticket.tier) == ("service_request", "help", "site")
        assert ticket.requester_agent_id == desk.agent_id
        assert ticket.requester_name == "kim@till-1"
        kinds = set(
            await session.scalars(
                select(TicketEvent.kind).where(TicketEvent.ticket_id == ticket.id)
            )
        )
    assert "snapshot" in kinds
    again = await _ask(desk, _help(1))
    assert again.receipt == outcome.receipt
    assert again.opened is None
    assert await _count_tickets(desk) == 1


async def test_repeated_help_folds_into_the_open_ticket(desk: Desk) -> None:
    """The same request asked again from the machine is folded into the open
    ticket instead of opening another."""
    first = await _ask(desk, _help(1))
    second = await _ask(desk, _help(2))
    assert second.receipt.ok and second.receipt.ticket == first.receipt.ticket
    assert second.opened is None
    assert await _count_tickets(desk) == 1


async def test_rating_is_taken_once_for_a_resolved_ticket(desk: Desk) -> None:
    """A rating waits for the ticket to be resolved, counts once, and only from
    the machine that asked."""
    number = (await _ask(desk, _help(1))).receipt.ticket
    assert number is not None

    async def rate(seq: int, score: int = 5) -> p.Receipt:
        frame = p.Rating(seq=seq, ticket=number, score=score, user="kim")
        async with desk.db.begin() as session:
            return await machinedesk.rate(session, desk.agent_id, frame)

    early = await rate(1)
    assert not early.ok and "rate it once resolved" in early.message
    async with desk.db.begin() as session:
        ticket = await tickets.find(session, number)
        assert ticket is not None
        await ticketing.act(session, ticket, "resolve", ENGINEER, resolution_code="fixed")
    taken = await rate(2, score=4)
    assert taken.ok and taken.ticket == number
    assert await rate(2, score=4) == taken  # the same frame again: the same receipt
    twice = await rate(3, score=1)
    assert not twice.ok and "rated already" in twice.message
    async with desk.db() as session:
        ticket = await tickets.find(session, number)
        assert ticket is not None and ticket.rating == 4


async def test_kb_query_answers_published_articles_for_the_site(desk: Desk) -> None:
    """Published public and own-site articles are suggested; drafts, internal
    articles and other sites' articles are not."""
    async with desk.db.begin() as session:
        for title, visibility, site, publish in [
            ("Printer jammed: open tray two", "public", None, True),
            ("Printer jammed at this shop", "site", desk.site_id, True),
            ("Printer jammed at the other shop", "site", desk.other_site_id, True),
            ("Printer jammed internal notes", "internal", None, True),
            ("Printer jammed draft", "public", None, False),
        ]:
            article = await kb_ops.create(
                session,
                kb_ops.Content(
                    title=title,
                    symptom="printer jammed",
                    resolution="open the tray",
                    visibility=visibility,
                    site_id=site,
                ),
                ENGINEER,
                author_id=None,
            )
            if publish:
                await kb_ops.transition(session, article, "publish", ENGINEER)
    async with desk.db() as session:
        found = await machinedesk.suggest_articles(
            session, desk.agent_id, p.KbQuery(id=7, text="printer jammed", limit=10)
        )
    assert found.id == 7
    assert sorted(s.title for s in found.items) == [
        "Printer jammed at this shop",
        "Printer jammed: open tray two",
    ]


async def test_help_solved_by_an_article_is_self_served(desk: Desk) -> None:
    """A request an article solved is recorded as a closed, self-served ticket
    (no ticket to work); an unknown article is refused and opens nothing."""
    async with desk.db.begin() as session:
        article = await kb_ops.create(
            session,
            kb_ops.Content(title="Printer jammed", resolution="open it", visibility="public"),
            ENGINEER,
            author_id=None,
        )
        await kb_ops.transition(session, article, "publish", ENGINEER)
        number = f"KB-{article.number}"
    solved = await _ask(desk, _help(1, solved_by=number))
    assert solved.receipt.ok and solved.opened is None
    async with desk.db() as session:
        ticket = await tickets.find(session, solved.receipt.ticket or "")
        assert ticket is not None and ticket.status == "closed"
    refused = await _ask(desk, _help(2, solved_by="KB-999"))
    assert not refused.receipt.ok and refused.receipt.ticket is None
    assert await _count_tickets(desk) == 1


async def test_ticket_list_for_the_machine(desk: Desk) -> None:
    """The machine's list names the tickets it asked for; the tickets map back
    to the machine for pushing."""
    outcome = await _ask(desk, _help(1))
    assert outcome.opened is not None
    async with desk.db() as session:
        frame = await machinedesk.tickets_frame(session, desk.agent_id)
        agents = await machinedesk.agents_of_tickets(session, {outcome.opened})
    assert [t.number for t in frame.items] == [outcome.receipt.ticket]
    assert frame.items[0].requested_here
    assert agents == {desk.agent_id}
