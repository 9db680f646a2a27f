"""A bounded on-disk spool of frames HQ has not acknowledged yet.

Every spooled frame is written here first and deleted only when HQ acks it,
so an HQ restart, a network cut or an agent restart loses nothing. Sequence
numbers are allocated here and persisted, so they are never reused.

When the bound is hit the oldest frames are dropped and counted; the count is
sent to HQ and shown by `fieldlink-agent status`, so loss is visible. Health
reports go first: a person's help request or rating is dropped only when the
spool holds nothing else.

Beside the frames it keeps what people at the machine asked (`requests`: who,
what, when, and HQ's receipt once it came) and HQ's latest list of the
machine's tickets, so `fieldlink-agent tickets` can answer while HQ is away.

Storage is SQLite (stdlib `sqlite3`, WAL). Calls are blocking and short; the
daemon runs them in a worker thread.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    UNIQUE (kind, seq)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    kind TEXT NOT NULL,
    seq INTEGER NOT NULL,
    user TEXT NOT NULL,
    summary TEXT NOT NULL,
    asked_at REAL NOT NULL,
    answered_at REAL,
    ok INTEGER,
    ticket TEXT,
    message TEXT,
    PRIMARY KEY (kind, seq)
);
"""

# Answered requests are kept this long for `fieldlink-agent tickets`, then pruned.
KEEP_ANSWERED_SECONDS = 30 * 86400


@dataclass(frozen=True)
class Spooled:
    id: int
    kind: str
    seq: int
    data: bytes


RequestState = Literal["answered", "waiting", "lost"]


@dataclass(frozen=True)
class Asked:
    """Who asked for a spooled request, and a line saying what."""

    user: str
    summary: str


@dataclass(frozen=True)
class RequestRow:
    """A request made at this machine and what became of it.

    `state` is `answered` (HQ's receipt is in), `waiting` (its frame is still
    in the spool: not sent yet, or sent and not answered) or `lost` (neither:
    dropped from a full spool before HQ answered)."""

    kind: str
    seq: int
    user: str
    summary: str
    asked_at: float
    state: RequestState
    answered_at: float | None = None
    ok: bool | None = None
    ticket: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class SpoolStats:
    pending: int
    dropped: int
    last_seq: int
    values: dict[str, str]


class Spool:
    def __init__(self, path: Path, max_frames: int) -> None:
        self._lock = threading.Lock()
        self._max = max_frames
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        path.chmod(0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._count = self._db.execute("SELECT count(*) FROM frames").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _meta_int(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _set_meta(self, key: str, value: str | int) -> None:
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, str(value)),
        )

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._meta_int("dropped")

    def append(
        self, kind: str, build: Callable[[int, int], bytes], asked: Asked | None = None
    ) -> Spooled:
        """Allocate the next sequence number for `kind`, build the frame with
        `build(seq, dropped)` and store it, dropping the oldest frames (health
        reports first) if the bound is exceeded. With `asked`, the request is
        recorded in the same transaction. One transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._meta_int(f"seq:{kind}") + 1
                self._set_meta(f"seq:{kind}", seq)
                overflow = self._count + 1 - self._max
                dropped = self._meta_int("dropped")
                if overflow > 0:
                    cur = self._db.execute(
                        "DELETE FROM frames WHERE id IN (SELECT id FROM frames "
                        "ORDER BY kind != 'health', id LIMIT ?)",
                        (overflow,),
                    )
                    self._count -= cur.rowcount
                    dropped += cur.rowcount
                    self._set_meta("dropped", dropped)
                data = build(seq, dropped)
                cur = self._db.execute(
                    "INSERT INTO frames(kind, seq, data) VALUES (?, ?, ?)", (kind, seq, data)
                )
                if asked is not None:
                    self._db.execute(
                        "INSERT OR REPLACE INTO requests(kind, seq, user, summary, asked_at) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (kind, seq, asked.user, asked.summary, time.time()),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count += 1
            return Spooled(int(cur.lastrowid or 0), kind, seq, data)

    def pending(self, after_id: int = 0, limit: int = 500) -> list[Spooled]:
        """Frames not yet acknowledged, oldest first, with id greater than `after_id`."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kind, seq, data FROM frames WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [Spooled(r[0], r[1], r[2], bytes(r[3])) for r in rows]

    def ack(self, kind: str, seqs: Iterable[int]) -> int:
        """Forget acknowledged frames; returns how many were still here."""
        seq_list = list(seqs)
        if not seq_list:
            return 0
        with self._lock:
            self._db.execute("BEGIN")
            removed = 0
            for i in range(0, len(seq_list), 500):
                chunk = seq_list[i : i + 500]
                marks = ",".join("?" * len(chunk))
                cur = self._db.execute(
                    f"DELETE FROM frames WHERE kind = ? AND seq IN ({marks})",  # noqa: S608 - placeholders only
                    (kind, *chunk),
                )
                removed += cur.rowcount
            self._set_meta("last_ack_at", f"{time.time():.3f}")
            self._db.execute("COMMIT")
            self._count -= removed
            return removed

    def set_state(self, **values: str | int) -> None:
        """Record link state for `fieldlink-agent status` (connected, since, ...)."""
        with self._lock:
            self._db.execute("BEGIN")
            for key, value in values.items():
                self._set_meta(f"state:{key}", value)
            self._db.execute("COMMIT")

    def answer(self, kind: str, seq: int, *, ok: bool, ticket: str | None, message: str) -> bool:
        """Record HQ's receipt for a request; True if the request was known here.
        Answered requests older than KEEP_ANSWERED_SECONDS are pruned."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            cur = self._db.execute(
                "UPDATE requests SET answered_at = ?, ok = ?, ticket = ?, message = ? "
                "WHERE kind = ? AND seq = ?",
                (now, int(ok), ticket, message, kind, seq),
            )
            self._db.execute(
                "DELETE FROM requests WHERE answered_at IS NOT NULL AND answered_at < ?",
                (now - KEEP_ANSWERED_SECONDS,),
            )
            self._db.execute("COMMIT")
        return cur.rowcount > 0

    def requests(self, since: float = 0.0) -> list[RequestRow]:
        """Requests asked at or after `since` (and every one not answered yet), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT r.kind, r.seq, r.user, r.summary, r.asked_at, r.answered_at, r.ok, "
                "r.ticket, r.message, EXISTS (SELECT 1 FROM frames f "
                "WHERE f.kind = r.kind AND f.seq = r.seq) "
                "FROM requests r WHERE r.asked_at >= ? OR r.answered_at IS NULL "
                "ORDER BY r.asked_at, r.kind, r.seq",
                (since,),
            ).fetchall()
        out: list[RequestRow] = []
        for kind, seq, user, summary, asked_at, answered_at, ok, ticket, message, spooled in rows:
            state: RequestState = (
                "answered" if answered_at is not None else "waiting" if spooled else "lost"
            )
            out.append(
                RequestRow(
                    kind=kind,
                    seq=seq,
                    user=user,
                    summary=summary,
                    asked_at=asked_at,
                    state=state,
                    answered_at=answered_at,
                    ok=None if ok is None else bool(ok),
                    ticket=ticket,
                    message=message,
                )
            )
        return out

    def save_tickets(self, data: str, received_at: float) -> None:
        """Keep HQ's latest ticket list for this machine (JSON) and when it came."""
        with self._lock:
            self._db.execute("BEGIN")
            self._set_meta("tickets", data)
            self._set_meta("tickets_at", f"{received_at:.3f}")
            self._db.execute("COMMIT")

    def load_tickets(self) -> tuple[str, float] | None:
        """The ticket list saved by `save_tickets`, or None if HQ never sent one."""
        with self._lock:
            meta = dict(
                self._db.execute(
                    "SELECT key, value FROM meta WHERE key IN ('tickets', 'tickets_at')"
                ).fetchall()
            )
        if "tickets" not in meta:
            return None
        return meta["tickets"], float(meta.get("tickets_at", 0))

    def stats(self) -> SpoolStats:
        with self._lock:
            pending = self._db.execute("SELECT count(*) FROM frames").fetchone()[0]
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        return SpoolStats(
            pending=pending,
            dropped=int(meta.get("dropped", 0)),
            last_seq=int(meta.get("seq:health", 0)),
            values=meta,
        )
