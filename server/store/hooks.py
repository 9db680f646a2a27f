"""After-commit hooks: code that must react to a committed change (push a
machine's ticket list to its agent, end sessions of a resolved ticket) without
the change's code knowing about it, and never for a change that rolled back.

    mark_ticket_changed(session, ticket_id)   # inside the transaction
    hooks.tickets_changed.append(callback)    # at start-up; called after commit
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

INFO_KEY = "fieldlink_hooks"
_CHANGED = "fieldlink_changed_tickets"


class CommitHooks:
    def __init__(self) -> None:
        self.tickets_changed: list[Callable[[set[str]], None]] = []


def mark_ticket_changed(session: AsyncSession | Session, ticket_id: str) -> None:
    info = session.info
    info.setdefault(_CHANGED, set()).add(ticket_id)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    changed: set[str] | None = session.info.pop(_CHANGED, None)
    hooks: Any = session.info.get(INFO_KEY)
    if changed and isinstance(hooks, CommitHooks):
        for callback in hooks.tickets_changed:
            callback(set(changed))


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_CHANGED, None)
