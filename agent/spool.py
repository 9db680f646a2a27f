"""A bounded on-disk spool of frames HQ has not acknowledged yet.

Every spooled frame is written here first and deleted only when HQ acks it,
so an HQ restart, a network cut or an agent restart loses nothing. Sequence
numbers are allocated here and persisted, so they are never reused.

When the bound is hit the oldest frames are dropped and counted; the count is
sent to HQ and shown by `fieldlink-agent status`, so loss is visible.

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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    UNIQUE (kind, seq)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Spooled:
    id: int
    kind: str
    seq: int
    data: bytes


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

    def append(self, kind: str, build: Callable[[int, int], bytes]) -> Spooled:
        """Allocate the next sequence number for `kind`, build the frame with
        `build(seq, dropped)` and store it, dropping the oldest frames if the
        bound is exceeded. One transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._meta_int(f"seq:{kind}") + 1
                self._set_meta(f"seq:{kind}", seq)
                overflow = self._count + 1 - self._max
                dropped = self._meta_int("dropped")
                if overflow > 0:
                    cur = self._db.execute(
                        "DELETE FROM frames WHERE id IN "
                        "(SELECT id FROM frames ORDER BY id LIMIT ?)",
                        (overflow,),
                    )
                    self._count -= cur.rowcount
                    dropped += cur.rowcount
                    self._set_meta("dropped", dropped)
                data = build(seq, dropped)
                cur = self._db.execute(
                    "INSERT INTO frames(kind, seq, data) VALUES (?, ?, ?)", (kind, seq, data)
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
