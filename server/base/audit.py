"""The audit trail's pure part: what an entry is, how it is hashed, how a
chain is verified. Storage is in `server.store.repo`.

hash = SHA-256( canonical JSON of the entry's fields, including prev_hash ).
The first entry's prev_hash is 64 zeros. Editing, inserting or deleting any
row breaks the chain at that row or the next.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

GENESIS = "0" * 64


@dataclass(frozen=True)
class Actor:
    type: str  # user | token | agent | system
    id: str | None = None
    name: str | None = None
    source: str | None = None

    @classmethod
    def system(cls, name: str = "hq") -> Actor:
        return cls("system", None, name)


@dataclass(frozen=True)
class Event:
    action: str
    outcome: str = "success"
    target_type: str | None = None
    target_id: str | None = None
    site_id: str | None = None
    ticket_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _time(value: datetime) -> str:
    return value.isoformat(timespec="microseconds")


def canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_fields(
    seq: int, at: datetime, actor: Actor, event: Event, prev_hash: str
) -> dict[str, Any]:
    return {
        "seq": seq,
        "at": _time(at),
        "actor_type": actor.type,
        "actor_id": actor.id,
        "actor_name": actor.name,
        "source": actor.source,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "site_id": event.site_id,
        "ticket_id": event.ticket_id,
        "outcome": event.outcome,
        "details": event.details,
        "prev_hash": prev_hash,
    }


def entry_hash(fields: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(fields)).hexdigest()


@dataclass(frozen=True)
class ChainBreak:
    seq: int
    reason: str


def verify(
    rows: Iterable[tuple[dict[str, Any], str]], start_prev: str = GENESIS
) -> ChainBreak | None:
    """Walk (fields, stored_hash) pairs in sequence order; the first break or None."""
    prev = start_prev
    expected_seq: int | None = 1 if start_prev == GENESIS else None
    for fields, stored in rows:
        seq = int(fields["seq"])
        if expected_seq is not None and seq != expected_seq:
            return ChainBreak(expected_seq, f"entry {expected_seq} is missing")
        if fields["prev_hash"] != prev:
            return ChainBreak(seq, "prev_hash does not match the previous entry's hash")
        if entry_hash(fields) != stored:
            return ChainBreak(seq, "contents do not match the stored hash (edited)")
        prev = stored
        expected_seq = seq + 1
    return None
