"""Knowledge-base operations: write, edit (keeping every version), move
through the states, link, vote, turn a resolved ticket into a draft, and
close a help request the knowledge base answered (self-served). Each one
writes its audit entry in the same transaction. Permissions are decided by
the caller (the API); the rules live in `server.itsm.kb`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.base.audit import Actor, Event
from server.itsm import kb as rules
from server.ops import ticketing
from server.store import auditlog, tickets
from server.store.models import KbArticle, KbLink, KbVersion, KbVote, Ticket, utcnow
from shared.errors import Conflict, Invalid

CONTENT = ("title", "symptom", "cause", "resolution", "tags", "visibility", "site_id")


@dataclass
class Content:
    title: str
    symptom: str = ""
    cause: str = ""
    resolution: str = ""
    tags: list[str] | None = None
    visibility: str = "internal"
    site_id: str | None = None


async def _audit(
    session: AsyncSession, actor: Actor, action: str, article: KbArticle, **details: Any
) -> None:
    await auditlog.append(
        session,
        actor,
        Event(
            f"kb.{action}",
            target_type="kb_article",
            target_id=article.id,
            site_id=article.site_id,
            details={"number": rules.number_text(article.number), **details},
        ),
    )


def _snapshot(article: KbArticle, actor: Actor, note: str) -> KbVersion:
    return KbVersion(
        article_id=article.id,
        version=article.version,
        title=article.title,
        symptom=article.symptom,
        cause=article.cause,
        resolution=article.resolution,
        tags=article.tags,
        visibility=article.visibility,
        site_id=article.site_id,
        editor_id=actor.id,
        editor_name=actor.name or "",
        note=note,
    )


def _check_scope(visibility: str, site_id: str | None) -> None:
    if visibility == "site" and site_id is None:
        raise Invalid("a site article names its site", fields={"site": "required for site"})
    if visibility != "site" and site_id is not None:
        raise Invalid(
            "only site articles name a site", fields={"site": f"not used with {visibility}"}
        )


async def create(
    session: AsyncSession, content: Content, actor: Actor, *, author_id: str | None
) -> KbArticle:
    _check_scope(content.visibility, content.site_id)
    article = KbArticle(
        number=await tickets.next_number(session, "kb"),
        title=content.title,
        symptom=content.symptom,
        cause=content.cause,
        resolution=content.resolution,
        tags=rules.tags_text(content.tags or []),
        visibility=content.visibility,
        site_id=content.site_id,
        state="draft",
        version=1,
        author_id=author_id,
        author_name=actor.name or "",
        views=0,
    )
    session.add(article)
    await session.flush()
    session.add(_snapshot(article, actor, "created"))
    await _audit(session, actor, "create", article, visibility=article.visibility)
    return article


async def edit(
    session: AsyncSession,
    article: KbArticle,
    changes: dict[str, Any],
    actor: Actor,
    note: str = "",
) -> list[str]:
    """Change content; a real change makes a new version (the earlier ones
    stay). Answers the names of the fields that changed."""
    if article.state == "archived":
        raise Conflict("an archived article is not edited; restore it first")
    if "tags" in changes:
        changes["tags"] = rules.tags_text(changes["tags"])
    changed = [k for k in CONTENT if k in changes and getattr(article, k) != changes[k]]
    if not changed:
        return []
    visibility = changes.get("visibility", article.visibility)
    site_id = changes.get("site_id", article.site_id)
    if "visibility" in changes and visibility != "site" and "site_id" not in changes:
        site_id = None
        changes["site_id"] = None
        if "site_id" not in changed and article.site_id is not None:
            changed.append("site_id")
    _check_scope(visibility, site_id)
    for key in changed:
        setattr(article, key, changes[key])
    article.version += 1
    article.updated_at = utcnow()
    session.add(_snapshot(article, actor, note))
    await session.flush()
    await _audit(session, actor, "edit", article, changed=changed, version=article.version)
    return changed


async def transition(
    session: AsyncSession, article: KbArticle, action: str, actor: Actor, note: str = ""
) -> None:
    try:
        state, _ = rules.transition(article.state, action)
    except rules.IllegalTransition as exc:
        raise Conflict(str(exc), extra={"allowed": exc.allowed}) from None
    before = article.state
    article.state = state
    now = utcnow()
    article.updated_at = now
    if state == "published":
        article.published_at = now
        article.archived_at = None
    elif state == "archived":
        article.archived_at = now
    await _audit(session, actor, action, article, **{"from": before, "to": state, "note": note})


async def link(
    session: AsyncSession, article: KbArticle, kind: str, target: str, actor: Actor
) -> KbLink:
    existing = await session.scalar(
        select(KbLink).where(
            KbLink.article_id == article.id, KbLink.kind == kind, KbLink.target == target
        )
    )
    if existing is not None:
        return existing
    made = KbLink(article_id=article.id, kind=kind, target=target, created_by=actor.name or "")
    session.add(made)
    await session.flush()
    await _audit(session, actor, "link", article, kind=kind, target=target)
    return made


async def unlink(session: AsyncSession, article: KbArticle, made: KbLink, actor: Actor) -> None:
    await session.delete(made)
    await _audit(session, actor, "unlink", article, kind=made.kind, target=made.target)


async def vote(
    session: AsyncSession, article: KbArticle, voter: str, helped: bool, actor: Actor
) -> None:
    """One vote per voter; a new one replaces the old."""
    row = await session.get(KbVote, (article.id, voter))
    if row is None:
        session.add(KbVote(article_id=article.id, voter=voter, helped=helped))
    else:
        row.helped = helped
        row.at = utcnow()
    await session.flush()
    await _audit(session, actor, "vote", article, helped=helped)


async def from_ticket(
    session: AsyncSession,
    ticket: Ticket,
    actor: Actor,
    *,
    author_id: str | None,
    visibility: str,
    site_id: str | None,
    title: str | None = None,
) -> KbArticle:
    """A draft from a resolved ticket: its title, symptom from the
    description, resolution from the resolution text; linked to it."""
    if ticket.status not in ("resolved", "closed"):
        raise Conflict(
            f"ticket is {ticket.status}; only resolved or closed tickets become articles"
        )
    article = await create(
        session,
        Content(
            title=title or ticket.title,
            symptom=ticket.description or ticket.title,
            resolution=ticket.resolution_text or "",
            visibility=visibility,
            site_id=site_id,
        ),
        actor,
        author_id=author_id,
    )
    await link(session, article, "ticket", ticket.id, actor)
    await ticketing.record_event(
        session,
        ticket,
        actor,
        "kb",
        "kb_article",
        f"draft article {rules.number_text(article.number)} written from this ticket",
        internal=True,
        data={"article": rules.number_text(article.number), "article_id": article.id},
    )
    return article


async def self_served(
    session: AsyncSession,
    article: KbArticle,
    actor: Actor,
    *,
    site_id: str,
    text: str,
    source: str,
    voter: str,
    requester_id: str | None = None,
    requester_name: str = "",
    requester_agent_id: str | None = None,
    agent_ids: list[str] | None = None,
) -> Ticket:
    """A help request the article answered: recorded as a ticket closed at
    once with resolution code `self_served` (it counts in the deflection
    rate), linked to the article, and a "helped" vote."""
    first_line = text.strip().splitlines()[0] if text.strip() else article.title
    ticket = await ticketing.create(
        session,
        site_id=site_id,
        title=first_line[:300],
        description=text,
        type="service_request",
        source=source,
        tier="site",
        requester_id=requester_id,
        requester_name=requester_name,
        requester_agent_id=requester_agent_id,
        agent_ids=agent_ids,
        actor=actor,
    )
    now = utcnow()
    number = rules.number_text(article.number)
    ticket.status = "closed"
    ticket.acknowledged_at = ticket.first_response_at = now  # answered at once
    ticket.resolved_at = now
    ticket.closed_at = now
    ticket.resolved_tier = "site"
    ticket.resolution_code = rules.SELF_SERVED
    ticket.resolution_text = f"solved by {number}: {article.title}"
    ticket.ack_due = ticket.response_due = ticket.resolve_due = None
    await ticketing.record_event(
        session,
        ticket,
        actor,
        "state",
        "self_served",
        ticket.resolution_text,
        data={"from": "new", "to": "closed", "article": number, "article_id": article.id},
    )
    await link(session, article, "ticket", ticket.id, actor)
    await vote(session, article, voter, True, actor)
    return ticket
