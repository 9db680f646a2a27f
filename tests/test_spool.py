"""The agent's spool: sequence numbers persist, acks forget, the bound drops
the oldest and counts them."""

from __future__ import annotations

from agent.link import Backoff
from agent.spool import Spool


def build(seq: int, dropped: int) -> bytes:
    return f"{seq}:{dropped}\n".encode()


def test_sequence_numbers_survive_reopening(tmp_path):
    """Seq numbers continue after the spool is closed and opened again."""
    spool = Spool(tmp_path / "s.db", 100)
    assert [spool.append("health", build).seq for _ in range(3)] == [1, 2, 3]
    spool.close()
    spool = Spool(tmp_path / "s.db", 100)
    assert spool.append("health", build).seq == 4
    assert [f.seq for f in spool.pending()] == [1, 2, 3, 4]
    spool.close()
    assert (tmp_path / "s.db").stat().st_mode & 0o077 == 0


def test_ack_forgets_only_what_was_acked(tmp_path):
    """Acked frames leave the spool; others stay, oldest first."""
    spool = Spool(tmp_path / "s.db", 100)
    for _ in range(5):
        spool.append("health", build)
    assert spool.ack("health", [2, 4, 99]) == 2
    assert [f.seq for f in spool.pending()] == [1, 3, 5]
    first = spool.pending(limit=1)[0]
    assert [f.seq for f in spool.pending(after_id=first.id)] == [3, 5]
    assert spool.stats().pending == 3


def test_bound_drops_oldest_and_counts(tmp_path):
    """Past the bound the oldest frames go, and the drop count is kept and reported."""
    spool = Spool(tmp_path / "s.db", 10)
    for _ in range(15):
        spool.append("health", build)
    stats = spool.stats()
    assert stats.pending == 10 and stats.dropped == 5 and stats.last_seq == 15
    assert [f.seq for f in spool.pending()] == list(range(6, 16))
    assert spool.pending()[-1].data == b"15:5\n"  # the frame carries the count
    spool.close()
    assert Spool(tmp_path / "s.db", 10).dropped == 5


def test_backoff_grows_with_jitter_to_the_cap_and_resets():
    """Delays double up to the cap, each drawn from [d/2, d]; reset starts over."""
    b = Backoff(cap=8)
    delays = [b.next_delay() for _ in range(6)]
    for delay, ceiling in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    b.reset()
    assert b.next_delay() <= 1


def test_byte_bound_drops_oldest_health_first_and_counts(tmp_path):
    """Past `max_bytes` the oldest health reports go (a help request stays), the
    drop count goes into the next frame, and acks keep the byte count right."""
    spool = Spool(tmp_path / "s.db", 10_000, max_bytes=64 * 1024)

    def big(seq: int, dropped: int) -> bytes:
        return f"{seq}:{dropped}:".encode() + b"x" * 4000 + b"\n"

    spool.append("help", big)
    for _ in range(40):
        spool.append("health", big)
    stats = spool.stats()
    assert stats.pending_bytes <= 64 * 1024
    assert stats.dropped == 41 - stats.pending > 0
    kinds = [f.kind for f in spool.pending()]
    assert kinds[0] == "help" and kinds.count("health") == stats.pending - 1
    last = spool.pending()[-1]
    assert last.data.startswith(f"{last.seq}:{stats.dropped}:".encode())
    spool.ack("health", [f.seq for f in spool.pending() if f.kind == "health"])
    assert spool.stats().pending_bytes == len(spool.pending()[0].data)
    spool.close()


def test_a_lost_write_is_counted_until_one_succeeds(tmp_path):
    """A frame the disk could not take is counted at once (HQ hears it in the
    next frame) and the error kept until a write succeeds, then recorded."""
    spool = Spool(tmp_path / "s.db", 100)
    spool.append("health", build)
    assert spool.lost(OSError("database or disk is full")) is True
    assert spool.lost(OSError("database or disk is full")) is False
    assert spool.dropped == 2 and spool.error is not None and spool.error.lost == 2
    frame = spool.append("health", build)
    assert frame.data == b"2:2\n" and spool.error is None
    stats = spool.stats()
    assert stats.dropped == 2 and stats.values["last_error"] == "database or disk is full"
    spool.close()


def test_a_spool_reopened_on_a_full_disk_takes_reports(tmp_path, monkeypatch):
    """The spool keeps a reserve beside it: reopened (its write-ahead log made
    anew) on a disk that something else filled to the last byte, it gives the
    reserve up and takes reports, and acks; once the disk has room again, the
    reserve is made again (issue 17: a full disk never stalls the agent)."""
    from agent import spool as spool_module
    from tests.test_agent_hardening import fill, small_disk

    with small_disk(tmp_path / "disk", "3m") as disk:
        path = disk / "spool.db"
        spool = Spool(path, 1000)
        for _ in range(20):
            spool.append("health", build)
        spool.close()  # its write-ahead log goes with it
        reserve = disk / "spool.db-reserve"
        assert reserve.stat().st_size == spool_module.RESERVE_BYTES
        filler = fill(disk / "filler")

        spool = Spool(path, 1000)
        made = [spool.append("health", build) for _ in range(50)]
        assert made[-1].seq == 70 and spool.error is None
        assert reserve.stat().st_size == 0  # given up for the spool
        assert spool.ack("health", range(1, 71)) == 70

        filler.unlink()
        monkeypatch.setattr(spool_module, "RESERVE_CHECK_EVERY", 0.0)
        spool.append("health", build)
        assert reserve.stat().st_size == spool_module.RESERVE_BYTES
        spool.close()
