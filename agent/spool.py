"""A bounded on-disk spool of frames HQ has not acknowledged yet.

Every spooled frame is written here first and deleted only when HQ acks it,
so an HQ restart, a network cut or an agent restart loses nothing. Sequence
numbers are allocated here and persisted, so they are never reused.

Two bounds, frames (`spool_max_frames`) and bytes (`spool_max_bytes`): past
either the oldest frames are dropped and counted; the count is sent to HQ
(every health report and hello carries it) and shown by `fieldlink-agent
status`, so loss is visible. Health reports go first: a person's help
request or rating is dropped only when the spool holds nothing else.

A full disk is not the end of the agent. The write-ahead log is kept small
(checkpoints every `WAL_PAGES` pages, truncated to `WAL_LIMIT`), so a link
that is up needs next to no room. Beside the database a reserve file
(`spool.db-reserve`, `RESERVE_BYTES`) holds room for the day the disk fills:
SQLite needs a little room for any change at all, even a delete, and after a
restart its write-ahead log must be made anew. A write the disk cannot take
makes room (gives up the reserve, drops the oldest health reports, truncates
the log) and tries once more; the reserve is made again once the disk has
ample room (`RESERVE_AGAIN_FREE`).
if that fails too the report is lost: `lost()` counts it (in memory, added
to the persisted drop count at the next write that succeeds) and `error`
says why until a write succeeds again. The caller goes on.

Beside the frames it keeps what people at the machine asked (`requests`: who,
what, when, and HQ's receipt once it came) and HQ's latest list of the
machine's tickets, so `fieldlink-agent tickets` can answer while HQ is away.

Storage is SQLite (stdlib `sqlite3`, WAL). Calls are blocking and short; the
daemon runs them in a worker thread.
"""

from __future__ import annotations

import contextlib
import os
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
WAL_PAGES = 64  # checkpoint the write-ahead log past this many pages (256 KiB)
WAL_LIMIT = 1024 * 1024  # and cut its file back to at most this after a checkpoint
MAKE_ROOM_FRACTION = 10  # a full disk drops 1/10 of the spooled health reports
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
RESERVE_BYTES = 512 * 1024  # room kept on disk for the spool, given up when the disk is full
RESERVE_AGAIN_FREE = 2 * RESERVE_BYTES  # made (again) only while this much of the disk is free
RESERVE_CHECK_EVERY = 60.0  # seconds between looks at the free space while it is given up


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
    pending_bytes: int = 0


@dataclass(frozen=True)
class SpoolError:
    """Why writes to the spool fail now, since when (epoch seconds), and how
    many frames were lost since."""

    message: str
    since: float
    lost: int


class SpoolFull(Exception):
    """A frame could not be written even after making room; it is lost."""


def _full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc)


class Spool:
    def __init__(self, path: Path, max_frames: int, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._lock = threading.Lock()
        self._max = max_frames
        self._max_bytes = max_bytes
        self._lost = 0  # frames lost to failed writes, not yet in the persisted count
        self.error: SpoolError | None = None
        self._reserve = path.with_name(path.name + "-reserve")
        self._reserve_whole = False
        self._reserve_checked = 0.0
        try:
            self._db = self._open(path)
        except sqlite3.Error:
            # a full disk: opening makes the write-ahead log anew; use the reserve
            if not self._reserve_size():
                raise
            self._release_reserve()
            self._db = self._open(path)
        self._keep_reserve()

    def _open(self, path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            path.chmod(0o600)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
            db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
            db.executescript(_SCHEMA)
            self._count, self._bytes = db.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0) FROM frames"
            ).fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def _reserve_size(self) -> int:
        try:
            return self._reserve.stat().st_size
        except OSError:
            return 0

    def _keep_reserve(self) -> None:
        """Make the reserve file whole again if the disk has ample room (best
        effort: a disk without that room keeps what there is)."""
        self._reserve_checked = time.monotonic()
        if self._reserve_size() >= RESERVE_BYTES:
            self._reserve_whole = True
            return
        try:
            disk = os.statvfs(self._reserve.parent)
            if disk.f_bavail * disk.f_frsize < RESERVE_AGAIN_FREE:
                return
            fd = os.open(self._reserve, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
            self._reserve_whole = True
        except OSError:
            pass

    def _release_reserve(self) -> None:
        """Give the reserve's room to the spool (the disk is full)."""
        with contextlib.suppress(OSError):
            os.truncate(self._reserve, 0)
        self._reserve_whole = False

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
        """Frames dropped or lost so far (what HQ is told)."""
        with self._lock:
            return self._meta_int("dropped") + self._lost

    def lost(self, exc: BaseException) -> bool:
        """Count a frame that could not be written (see the module docstring);
        True if it is the first of an episode of failing writes."""
        with self._lock:
            self._lost += 1
            first = self.error is None
            since = time.time() if self.error is None else self.error.since
            lost = 1 if self.error is None else self.error.lost + 1
            self.error = SpoolError(str(exc) or type(exc).__name__, since, lost)
            return first

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # a failed statement may have ended it
            self._db.execute("ROLLBACK")

    def _drop_oldest(self, count: int) -> int:
        """Delete the `count` oldest frames, health reports first; returns how many."""
        ids = [
            row[0]
            for row in self._db.execute(
                "SELECT id FROM frames ORDER BY kind != 'health', id LIMIT ?", (count,)
            )
        ]
        return self._delete_ids(ids)

    def _drop_bytes(self, need: int) -> int:
        """Delete the oldest frames (health first) until `need` bytes are freed."""
        ids: list[int] = []
        freed = 0
        for fid, size in self._db.execute(
            "SELECT id, length(data) FROM frames ORDER BY kind != 'health', id"
        ):
            if freed >= need:
                break
            ids.append(fid)
            freed += size
        return self._delete_ids(ids)

    def _delete_ids(self, ids: list[int]) -> int:
        removed = 0
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            where = f"WHERE id IN ({marks})"
            size = self._db.execute(
                f"SELECT coalesce(sum(length(data)), 0) FROM frames {where}",  # noqa: S608 - placeholders only
                chunk,
            ).fetchone()[0]
            cur = self._db.execute(f"DELETE FROM frames {where}", chunk)  # noqa: S608 - placeholders only
            removed += cur.rowcount
            self._count -= cur.rowcount
            self._bytes -= size
        return removed

    def _make_room(self) -> None:
        """After a write the disk could not take: give up the reserve, drop the
        oldest health reports (a tenth of them, at least one) and cut the
        write-ahead log back."""
        self._release_reserve()
        health = self._db.execute("SELECT count(*) FROM frames WHERE kind = 'health'").fetchone()[0]
        if health:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                removed = self._drop_oldest(max(1, health // MAKE_ROOM_FRACTION))
                self._set_meta("dropped", self._meta_int("dropped") + removed)
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()
                self._count, self._bytes = self._db.execute(
                    "SELECT count(*), coalesce(sum(length(data)), 0) FROM frames"
                ).fetchone()
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def append(
        self, kind: str, build: Callable[[int, int], bytes], asked: Asked | None = None
    ) -> Spooled:
        """Allocate the next sequence number for `kind`, build the frame with
        `build(seq, dropped)` and store it, dropping the oldest frames (health
        reports first) past either bound. With `asked`, the request is
        recorded in the same transaction. One transaction; if the disk is
        full, room is made and it is tried once more; then SpoolFull (the
        caller counts the frame with `lost()`). Other errors are raised as they are."""
        with self._lock:
            try:
                return self._append(kind, build, asked)
            except sqlite3.Error as exc:
                if not _full(exc):
                    raise
            self._make_room()
            try:
                return self._append(kind, build, asked)
            except sqlite3.Error as exc:
                if not _full(exc):
                    raise
                raise SpoolFull(str(exc)) from exc

    def _append(
        self, kind: str, build: Callable[[int, int], bytes], asked: Asked | None
    ) -> Spooled:
        count, size = self._count, self._bytes
        self._db.execute("BEGIN IMMEDIATE")
        try:
            seq = self._meta_int(f"seq:{kind}") + 1
            self._set_meta(f"seq:{kind}", seq)
            dropped = self._meta_int("dropped") + self._lost
            overflow = self._count + 1 - self._max
            if overflow > 0:
                dropped += self._drop_oldest(overflow)
            data = build(seq, dropped)
            over = self._bytes + len(data) - self._max_bytes
            if over > 0:
                dropped += self._drop_bytes(over)
                data = build(seq, dropped)
            self._set_meta("dropped", dropped)
            if self.error is not None:  # the end of an episode of failed writes
                self._set_meta("last_error", self.error.message)
                self._set_meta("last_error_at", f"{self.error.since:.3f}")
                self._set_meta("last_error_lost", self.error.lost)
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
            self._rollback()
            self._count, self._bytes = count, size
            raise
        self._count += 1
        self._bytes += len(data)
        self._lost = 0
        self.error = None
        if not self._reserve_whole and time.monotonic() - self._reserve_checked > (
            RESERVE_CHECK_EVERY
        ):
            self._keep_reserve()
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
            count, size = self._count, self._bytes
            self._db.execute("BEGIN")
            try:
                removed = 0
                for i in range(0, len(seq_list), 500):
                    chunk = seq_list[i : i + 500]
                    marks = ",".join("?" * len(chunk))
                    where = f"WHERE kind = ? AND seq IN ({marks})"
                    self._bytes -= self._db.execute(
                        f"SELECT coalesce(sum(length(data)), 0) FROM frames {where}",  # noqa: S608 - placeholders only
                        (kind, *chunk),
                    ).fetchone()[0]
                    cur = self._db.execute(f"DELETE FROM frames {where}", (kind, *chunk))  # noqa: S608 - placeholders only
                    removed += cur.rowcount
                self._set_meta("last_ack_at", f"{time.time():.3f}")
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                self._count, self._bytes = count, size
                raise
            self._count -= removed
            return removed

    def set_state(self, **values: str | int) -> None:
        """Record link state for `fieldlink-agent status` (connected, since, ...)."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for key, value in values.items():
                    self._set_meta(f"state:{key}", value)
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def answer(self, kind: str, seq: int, *, ok: bool, ticket: str | None, message: str) -> bool:
        """Record HQ's receipt for a request; True if the request was known here.
        Answered requests older than KEEP_ANSWERED_SECONDS are pruned."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            try:
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
            except BaseException:
                self._rollback()
                raise
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
            try:
                self._set_meta("tickets", data)
                self._set_meta("tickets_at", f"{received_at:.3f}")
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

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
            pending, size = self._db.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0) FROM frames"
            ).fetchone()
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            lost = self._lost
        return SpoolStats(
            pending=pending,
            dropped=int(meta.get("dropped", 0)) + lost,
            last_seq=int(meta.get("seq:health", 0)),
            values=meta,
            pending_bytes=size,
        )
