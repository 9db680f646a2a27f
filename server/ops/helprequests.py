"""Help requests from a site's people: limited per machine and per asker, and
a repeat folded into the request already open.

A help request comes from a person at a machine (`fieldlink-agent help`, a
`help` frame) or from site staff through `POST /api/v1/tickets`. Within
`help_limit_window_minutes`, `help_limit_per_machine` requests may be made at
one machine (whoever asks there; a site person's API request for a takeover
of the machine is held to that count too) and one asker (a local account at a
machine, or a user) may make `help_limit_per_asker`; one more is refused with
the time until the next is possible. A request whose text is the same as (or close to) one the same
asker still has open, from the same machine, is not a new ticket: it is
added to the open one as a `help_repeat` event, and the asker is told which
ticket. Repeats count against the limits too. The counts are read from the
tickets and their events, so they hold across restarts and replicas.

Self-served requests ("this solved it": a ticket closed at once with
resolution code `self_served`) are limited on their own: at most
`help_limit_self_served` per window from one machine (`--solved KB-N` there,
whoever asks) or one site user (`POST /api/v1/kb/{id}/solved`), and they never
count against the limits above, so recording what an article solved cannot use
up a machine's real help. The same asker saying the same article solved the
same request again within the window is added to the first record as a
`self_served_repeat` event (it counts against the self-served limit), so one
person cannot inflate the site's deflection rate by repeating it.
"""

from __future__ import annotations

import asyncio
import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Select, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.base.audit import Actor
from server.config.settings import Settings
from server.itsm.kpi import SELF_SERVED
from server.itsm.tickets import OPEN, number_text
from server.ops import ticketing
from server.store.models import KbLink, Ticket, TicketAgent, TicketEvent, utcnow
from shared import protocol as p
from shared.errors import RateLimited

REPEAT_KIND = "help_repeat"
SELF_SERVED_REPEAT_KIND = "self_served_repeat"
SIMILAR = 0.85  # difflib ratio from which two requests are "the same"
COMPARED_CHARS = 500  # bounds the comparison (quadratic) on the event loop


@dataclass(frozen=True)
class Limits:
    per_machine: int
    per_asker: int
    window: timedelta
    self_served: int = 10

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            settings.help_limit_per_machine,
            settings.help_limit_per_asker,
            timedelta(minutes=settings.help_limit_window_minutes),
            settings.help_limit_self_served,
        )


@dataclass(frozen=True)
class Asker:
    """Who asks: a local account at a machine (`agent_id` and `name` as
    "user@host"), or a HQ user (`user_id`, `name` its user name) about a
    machine or none."""

    site_id: str
    agent_id: str | None
    name: str
    user_id: str | None = None


@dataclass(frozen=True)
class Limited:
    message: str
    retry_after: float  # seconds

    def error(self) -> RateLimited:
        """The 429 for the API, with Retry-After in whole seconds (rounded up)."""
        return RateLimited(
            self.message, headers={"Retry-After": str(int(self.retry_after + 0.999))}
        )


def normal(text: str) -> str:
    """Text compared for repeats: case, punctuation and spacing do not count."""
    return " ".join(re.sub(r"[\W_]+", " ", text.casefold()).split())[:COMPARED_CHARS]


def similar(a: str, b: str) -> bool:
    x, y = normal(a), normal(b)
    if not x or not y:
        return x == y
    if x == y:
        return True
    m = difflib.SequenceMatcher(None, x, y)
    return m.real_quick_ratio() >= SIMILAR and m.quick_ratio() >= SIMILAR and m.ratio() >= SIMILAR


def _wait(times: list[datetime], limit: int, window: timedelta, now: datetime) -> float | None:
    """Seconds until one more request fits, or None if one fits now."""
    if len(times) < limit:
        return None
    times = sorted(times)
    frees_at = times[len(times) - limit] + window
    return max(1.0, (frees_at - now).total_seconds())


def _asked_for_help() -> ColumnElement[bool]:
    """Tickets that asked for help: not the self-served ones (their own limit)."""
    return or_(Ticket.resolution_code.is_(None), Ticket.resolution_code != SELF_SERVED)


async def _machine_times(session: AsyncSession, agent_id: str, since: datetime) -> list[datetime]:
    """When requests were made at the machine (help frames and their repeats)."""
    opened = await session.scalars(
        select(Ticket.created_at).where(
            Ticket.requester_agent_id == agent_id, Ticket.created_at >= since, _asked_for_help()
        )
    )
    repeated = await session.scalars(
        select(TicketEvent.at).where(
            TicketEvent.actor_type == "agent",
            TicketEvent.actor_id == agent_id,
            TicketEvent.kind == REPEAT_KIND,
            TicketEvent.at >= since,
        )
    )
    return [*opened, *repeated]


async def _asker_times(session: AsyncSession, asker: Asker, since: datetime) -> list[datetime]:
    mine: ColumnElement[bool]
    by: ColumnElement[bool]
    if asker.user_id is not None:
        mine = Ticket.requester_id == asker.user_id
        by = TicketEvent.actor_type.in_(("user", "token"))
    else:
        mine = (Ticket.requester_agent_id == asker.agent_id) & (Ticket.requester_name == asker.name)
        by = (TicketEvent.actor_type == "agent") & (TicketEvent.actor_id == asker.agent_id)
    opened = await session.scalars(
        select(Ticket.created_at).where(mine, Ticket.created_at >= since, _asked_for_help())
    )
    repeated = await session.scalars(
        select(TicketEvent.at).where(
            by,
            TicketEvent.actor_name == asker.name,
            TicketEvent.kind == REPEAT_KIND,
            TicketEvent.at >= since,
        )
    )
    return [*opened, *repeated]


async def check(session: AsyncSession, asker: Asker, limits: Limits) -> Limited | None:
    """None if the asker may make one more request now; else why not and for how long."""
    now = utcnow()
    since = now - limits.window
    minutes = f"{limits.window.total_seconds() / 60:g} minutes"
    if asker.agent_id is not None:
        times = await _machine_times(session, asker.agent_id, since)
        wait = _wait(times, limits.per_machine, limits.window, now)
        if wait is not None:
            return Limited(
                f"too many help requests from this machine ({len(times)} in the last "
                f"{minutes}); try again in {_human(wait)}",
                wait,
            )
    times = await _asker_times(session, asker, since)
    wait = _wait(times, limits.per_asker, limits.window, now)
    if wait is not None:
        return Limited(
            f"too many help requests from {asker.name} ({len(times)} in the last {minutes}); "
            f"try again in {_human(wait)}",
            wait,
        )
    return None


def _self_served_by(asker: Asker) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """(its self-served tickets, its repeat events): a user's, or a machine's
    whoever asked there."""
    if asker.user_id is not None:
        return (
            Ticket.requester_id == asker.user_id,
            TicketEvent.actor_type.in_(("user", "token")) & (TicketEvent.actor_name == asker.name),
        )
    return (
        Ticket.requester_agent_id == asker.agent_id,
        (TicketEvent.actor_type == "agent") & (TicketEvent.actor_id == asker.agent_id),
    )


async def check_self_served(session: AsyncSession, asker: Asker, limits: Limits) -> Limited | None:
    """None if one more self-served request may be recorded now; else why not
    and for how long. Per machine for `--solved` at a machine, per user through
    the API; repeats folded into a record count."""
    now = utcnow()
    since = now - limits.window
    mine, by = _self_served_by(asker)
    opened = await session.scalars(
        select(Ticket.created_at).where(
            mine, Ticket.resolution_code == SELF_SERVED, Ticket.created_at >= since
        )
    )
    repeated = await session.scalars(
        select(TicketEvent.at).where(
            by, TicketEvent.kind == SELF_SERVED_REPEAT_KIND, TicketEvent.at >= since
        )
    )
    times = [*opened, *repeated]
    wait = _wait(times, limits.self_served, limits.window, now)
    if wait is None:
        return None
    who = "this machine" if asker.user_id is None else asker.name
    minutes = f"{limits.window.total_seconds() / 60:g} minutes"
    return Limited(
        f"too many self-served requests from {who} ({len(times)} in the last {minutes}); "
        f"try again in {_human(wait)}",
        wait,
    )


async def self_served_repeat(
    session: AsyncSession, asker: Asker, article_id: str, text: str, limits: Limits
) -> Ticket | None:
    """The asker's self-served record of the same article, within the window,
    whose words `text` repeats (as for help requests), if any."""
    since = utcnow() - limits.window
    stmt = (
        select(Ticket)
        .join(
            KbLink,
            (KbLink.kind == "ticket")
            & (KbLink.target == Ticket.id)
            & (KbLink.article_id == article_id),
        )
        .where(
            Ticket.site_id == asker.site_id,
            Ticket.resolution_code == SELF_SERVED,
            Ticket.created_at >= since,
        )
    )
    return await _first_repeat(
        session, stmt.where(_requested_by(asker)), text, lambda t: t.description
    )


async def fold_self_served(session: AsyncSession, ticket: Ticket, actor: Actor, text: str) -> None:
    """Add the repeated "this solved it" to the first record."""
    await ticketing.record_event(
        session,
        ticket,
        actor,
        SELF_SERVED_REPEAT_KIND,
        "self_served_repeat",
        f"said again it is solved: {text}" if text else "said again it is solved",
        data={"text": text[:5000]},
    )


def _human(seconds: float) -> str:
    if seconds < 90:
        return f"{int(seconds + 0.999)} s"
    return f"{int(seconds / 60 + 0.999)} minutes"


async def open_repeat(session: AsyncSession, asker: Asker, text: str) -> Ticket | None:
    """The asker's open request from the same machine that `text` repeats, if any."""
    stmt = select(Ticket).where(
        Ticket.status.in_(sorted(OPEN)), Ticket.site_id == asker.site_id, _requested_by(asker)
    )
    if asker.user_id is not None and asker.agent_id is not None:
        stmt = stmt.where(
            Ticket.id.in_(
                select(TicketAgent.ticket_id).where(TicketAgent.agent_id == asker.agent_id)
            )
        )
    return await _first_repeat(
        session,
        stmt,
        text,
        lambda t: t.description or t.title,
        lambda t: f"{t.title}\n{t.description}",
    )


def _requested_by(asker: Asker) -> ColumnElement[bool]:
    """Tickets the asker opened: a user's, or those asked for at its machine by that name."""
    if asker.user_id is not None:
        return Ticket.requester_id == asker.user_id
    return (Ticket.requester_agent_id == asker.agent_id) & (Ticket.requester_name == asker.name)


async def _first_repeat(
    session: AsyncSession,
    stmt: Select[Ticket],
    text: str,
    said: Callable[[Ticket], str],
    said_too: Callable[[Ticket], str] | None = None,
) -> Ticket | None:
    """The newest of the (ten newest) tickets `stmt` finds whose words `text`
    repeats: `said(ticket)` or `said_too(ticket)` (default: the same)."""
    found = list(await session.scalars(stmt.order_by(Ticket.number.desc()).limit(10)))
    if not found:
        return None
    also = said_too or said
    # the comparison is quadratic in the (bounded) text: off the event loop
    hit = await asyncio.to_thread(_first_similar, text, [(said(t), also(t)) for t in found])
    return None if hit is None else found[hit]


def _first_similar(text: str, said: list[tuple[str, str]]) -> int | None:
    for i, (one, other) in enumerate(said):
        if similar(text, one) or similar(text, other):
            return i
    return None


async def fold(session: AsyncSession, ticket: Ticket, actor: Actor, text: str) -> str:
    """Add the repeated request to the open ticket; the receipt's message."""
    number = number_text(ticket.number)
    await ticketing.record_event(
        session,
        ticket,
        actor,
        REPEAT_KIND,
        "help_repeat",
        f"asked again: {text}",
        data={"text": text[:5000]},
    )
    return f"{p.HELP_REPEAT} {number}"
