"""The process groups of runs in progress, kept on disk so that no run outlives
the agent that started it.

Every run's program leads its own session and process group (agent.runner),
and the runner kills the whole group when the run ends, times out or is
cancelled. That cannot happen if the agent itself dies (SIGKILL, a crash, the
OOM killer): its runs would go on, as whatever user they run as. So while a
run is going, `DIR/runs/<pgid>.json` records its group: the leader's pid
(which is the group id), the leader's start time and this boot's id. The
record goes when the run is over. At start the agent calls `reap()`: each
group recorded by an agent that did not live to remove it is killed, if it
is still the same group, and the record removed.

"Still the same group": same boot, and either the leader is alive with the
recorded start time, or the leader is gone and processes remain in the group
(Linux does not hand out a pid while it is still some group's id, so those
are the run's). A leader pid that now belongs to another process means the
run's group is long gone: nothing is killed.

Where runs have cgroups (agent.containment), the record names the run's
cgroup too, and `reap()` kills that cgroup whole and removes it: a process
that left its group on purpose (setsid, a double fork into a new session) is
found that way. Under the process-group rule it is not. Nor is a run whose
agent died in the instant between starting its program and writing the
record (its cgroup, if any, stays, and so does what runs in it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import psutil
import structlog

from agent import containment

log = structlog.get_logger(__name__)

REAP_WAIT = 5.0  # seconds to wait for a killed group to be gone


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _started(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def members(pgid: int) -> list[int]:
    """Live (not zombie) processes whose process group is `pgid`."""
    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


class GroupBook:
    """Records of live runs' process groups in one directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._boot = boot_id()

    def _file(self, pgid: int) -> Path:
        return self.path / f"{pgid}.json"

    def add(self, pgid: int, cgroup: Path | None = None) -> None:
        """Record a run's group (and cgroup) as soon as it started. Best effort:
        a failure (a full disk) is logged and the run goes on."""
        record: dict[str, object] = {
            "pgid": pgid,
            "started": _started(pgid),
            "boot_id": self._boot,
            "agent_pid": os.getpid(),
        }
        if cgroup is not None:
            record["cgroup"] = str(cgroup)
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = self.path / f".{pgid}.tmp"
            tmp.write_text(json.dumps(record))
            tmp.replace(self._file(pgid))
        except OSError as exc:
            log.warning("run_group_unrecorded", pgid=pgid, error=str(exc))

    def remove(self, pgid: int) -> None:
        with contextlib.suppress(OSError):
            self._file(pgid).unlink()

    def recorded(self) -> list[dict[str, object]]:
        out = []
        try:
            files = sorted(self.path.glob("*.json"))
        except OSError:
            return []
        for file in files:
            try:
                data = json.loads(file.read_text())
                if isinstance(data, dict) and isinstance(data.get("pgid"), int):
                    out.append(data)
                    continue
            except (OSError, ValueError):
                pass
            log.warning("run_group_record_unreadable", path=str(file))
            with contextlib.suppress(OSError):
                file.unlink()
        return out

    def _still_ours(self, record: dict[str, object]) -> bool:
        pgid = record["pgid"]
        assert isinstance(pgid, int)
        if pgid <= 1 or record.get("boot_id") != self._boot:
            return False
        if record.get("agent_pid") == os.getpid():
            return False  # a run of this very process: not an orphan
        started = _started(pgid)
        if started is not None:  # the leader's pid is in use: by the leader?
            recorded = record.get("started")
            return isinstance(recorded, float) and abs(started - recorded) < 0.01
        return bool(members(pgid))

    def reap(self, base: Path | None = None) -> list[int]:
        """Kill every recorded group (and run cgroup under `base`, this agent's
        cgroup) a previous agent left running; forget the records. Returns the
        groups killed. Blocking (up to REAP_WAIT s each)."""
        killed = []
        for record in self.recorded():
            pgid = record["pgid"]
            assert isinstance(pgid, int)
            cgroup = record.get("cgroup")
            if (
                isinstance(cgroup, str)
                and record.get("boot_id") == self._boot
                and record.get("agent_pid") != os.getpid()
                and containment.reap(Path(cgroup), base)
            ):
                log.warning("orphaned_run_killed", pgid=pgid, cgroup=cgroup)
                killed.append(pgid)
                self.remove(pgid)
                continue
            if self._still_ours(record):
                left = members(pgid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
                deadline = time.monotonic() + REAP_WAIT
                while members(pgid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                log.warning("orphaned_run_killed", pgid=pgid, processes=len(left))
                killed.append(pgid)
            self.remove(pgid)
        return killed
