"""How a run's processes are contained, so that none outlives the run.

A process group is not a container: a child can leave it with `setsid` or
`setpgid(0, 0)` and then survives the run's cleanup. A cgroup cannot be left
by an unprivileged process. So, where it can, the agent puts every run (and
every session shell) in a cgroup v2 of its own and, when the run ends, times
out or is cancelled, kills the whole cgroup (`cgroup.kill`), waits until it
is empty (`cgroup.events`: `populated 0`) and removes it.

Decided once when the agent starts (`probe()`), and shown by
`fieldlink-agent status` and in the hello's facts (`describe()`):

- **cgroup v2** where the agent runs as root, the unified hierarchy is
  mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid
  system) and a test cgroup can be made, joined and killed. Run cgroups are
  made beside the agent, in the agent's own cgroup C (found from
  `/proc/self/cgroup` and `/proc/self/mountinfo`): `C/run-<id>`. When C is
  not the root of the hierarchy the agent first moves itself into a leaf
  `C/agent`, as a service with systemd's `Delegate=yes` must (a cgroup with
  processes in it cannot hand controllers to children), so C holds only
  cgroups: `agent` and the runs'. Without `Delegate=yes` systemd does not
  expect a service to make cgroups; set it in the unit (docs/agent-runs.md).
- **process group** otherwise (not root, no cgroup v2, no `cgroup.kill`
  (Linux < 5.14), a kernel that judges a move into a cgroup by the moving
  program's user rather than by who opened `cgroup.procs` (Linux < 5.16),
  a hierarchy the agent may not write), or when config.toml
  says `run_containment = "process_group"`: each run leads its own process
  group, which is killed (agent.runner), and what leaves it is not followed.

A child joins its cgroup itself, between fork and exec (`RunCgroup.join`,
given to subprocess as `preexec_fn`): writing to `cgroup.procs` from the
parent after the start would leave a moment in which the program could fork
a child that escapes. The file is opened by the agent beforehand; the child
only writes "0" to it (the kernel checks the opener's credentials, so this
works after the child has switched to `shell_user`). If that fails the
program does not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

LEAF = "agent"  # the agent's own leaf beside its runs' cgroups
RUN_PREFIX = "run-"
EMPTY_WAIT = 5.0  # seconds to wait for a killed cgroup to be empty
NOBODY = 65534  # the user the probe switches to, as a run under another shell_user does


class ContainmentError(OSError):
    """A run's cgroup could not be made, joined or killed."""


# --- where the agent's cgroup is (pure) ---------------------------------------------


def _own_path(cgroup_text: str) -> str | None:
    """The agent's path in the cgroup v2 hierarchy, from /proc/self/cgroup."""
    for line in cgroup_text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            return path
    return None


def _cgroup2_mount(mountinfo: str) -> tuple[str, str] | None:
    """(root within the hierarchy, mount point) of the cgroup2 mount."""
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if len(fields) > sep + 1 and fields[sep + 1] == "cgroup2" and len(fields) > 4:
            return fields[3], fields[4].replace("\\040", " ")
    return None


def locate(cgroup_text: str, mountinfo: str, euid: int) -> Path | str:
    """The directory of the agent's own cgroup v2, or why cgroups cannot be used
    (pure: from the texts of /proc/self/cgroup and /proc/self/mountinfo)."""
    if euid != 0:
        return "the agent does not run as root"
    own = _own_path(cgroup_text)
    if own is None:
        return "no cgroup v2 hierarchy (this system uses cgroup v1 only)"
    mount = _cgroup2_mount(mountinfo)
    if mount is None:
        return "cgroup2 is not mounted"
    root, point = mount
    if root != "/":
        if own != root and not own.startswith(root.rstrip("/") + "/"):
            return f"this process's cgroup {own} is outside the mounted hierarchy ({root})"
        own = own[len(root.rstrip("/")) :] or "/"
    return Path(point) / own.lstrip("/") if own != "/" else Path(point)


# --- the decision, made once ----------------------------------------------------------


@dataclass(frozen=True)
class Containment:
    """How runs are contained here: under `base` (cgroup v2), or by process
    group, for `reason`."""

    base: Path | None
    reason: str | None = None

    def describe(self) -> str:
        if self.base is not None:
            return f"cgroup v2 ({self.base})"
        return f"process group (cgroups unavailable: {self.reason})"

    def new_run(self) -> RunCgroup | None:
        """A fresh cgroup for one run, or None under the process-group rule.
        Raises ContainmentError if it cannot be made."""
        if self.base is None:
            return None
        return RunCgroup.create(self.base / f"{RUN_PREFIX}{secrets.token_hex(6)}")


def _write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def probe(setting: str = "auto") -> Containment:
    """Decide how runs are contained on this machine (blocking: reads /proc,
    may move the agent into its leaf, and tries a cgroup for real)."""
    if setting == "process_group":
        return Containment(None, 'turned off in config.toml (run_containment = "process_group")')
    if sys.platform != "linux":
        return Containment(None, f"cgroups are Linux's ({sys.platform} here)")
    try:
        cgroup_text = Path("/proc/self/cgroup").read_text()
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError as exc:
        return Containment(None, f"cannot read /proc: {exc.strerror or exc}")
    found = locate(cgroup_text, mountinfo, os.geteuid())
    if isinstance(found, str):
        return Containment(None, found)
    base = found
    try:
        mount = _cgroup2_mount(mountinfo)
        at_root = mount is not None and base == Path(mount[1])
        if base.name == LEAF and not at_root:
            base = base.parent  # already in our leaf (a restart that kept the cgroup)
        elif not at_root:
            leaf = base / LEAF
            with contextlib.suppress(FileExistsError):
                leaf.mkdir(mode=0o755)
            _write(leaf / "cgroup.procs", str(os.getpid()))
        _try(base)
    except OSError as exc:
        return Containment(None, f"{base}: {exc.strerror or exc}")
    return Containment(base)


def _try(base: Path) -> None:
    """Make a run cgroup under `base`, start a program in it, kill it, remove it."""
    cg = RunCgroup.create(base / f"{RUN_PREFIX}probe-{os.getpid()}-{secrets.token_hex(3)}")
    try:
        if not (cg.path / "cgroup.kill").exists():
            raise ContainmentError(errno.ENOTSUP, "no cgroup.kill here (it needs Linux 5.14)")
        true = "/bin/true" if os.path.exists("/bin/true") else "/usr/bin/true"
        subprocess.run(
            [true],
            preexec_fn=cg.join,  # the child joins its cgroup before exec
            check=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.SubprocessError as exc:
        raise ContainmentError(errno.EPERM, f"a program cannot join a run cgroup: {exc}") from None
    try:
        # as another user, as runs under a policy's shell_user do (the kernel must
        # judge the move by who opened cgroup.procs: Linux 5.16, or a backport)
        subprocess.run(
            [true],
            preexec_fn=cg.join,
            check=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
        )
    except subprocess.SubprocessError:
        raise ContainmentError(
            errno.EPERM,
            "a program that switched users cannot join a run cgroup here (this kernel "
            "checks the move against the program's own user; Linux 5.16 does not)",
        ) from None
    finally:
        cg.kill_now()
        cg.remove_now()


# --- one run's cgroup -------------------------------------------------------------------


class RunCgroup:
    """One run's cgroup: joined by the run's program before exec, killed whole
    and removed when the run is over."""

    def __init__(self, path: Path, procs: int) -> None:
        self.path = path
        self._procs = procs

    @classmethod
    def create(cls, path: Path) -> RunCgroup:
        try:
            path.mkdir(mode=0o755)
        except OSError as exc:
            raise ContainmentError(exc.errno, f"cannot make {path}: {exc.strerror}") from None
        try:
            procs = os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            with contextlib.suppress(OSError):
                path.rmdir()
            raise ContainmentError(exc.errno, f"cannot open {path}: {exc.strerror}") from None
        return cls(path, procs)

    def join(self) -> None:  # pragma: no cover - runs in the child, between fork and exec
        """Move the calling process into this cgroup (as `preexec_fn`)."""
        os.write(self._procs, b"0")

    def populated(self) -> bool:
        try:
            events = (self.path / "cgroup.events").read_text()
        except FileNotFoundError:
            return False
        return "populated 1" in events

    def kill_now(self) -> None:
        """SIGKILL every process in the cgroup (and any it forks meanwhile)."""
        with contextlib.suppress(FileNotFoundError):
            _write(self.path / "cgroup.kill", "1")

    def remove_now(self, wait: float = EMPTY_WAIT) -> bool:
        """Wait (blocking, up to `wait` s) until the killed cgroup is empty, then
        remove it. True if it is gone."""
        self._close()
        deadline = time.monotonic() + wait
        while True:
            try:
                self.path.rmdir()
                return True
            except FileNotFoundError:
                return True
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    log.warning("run_cgroup_not_removed", path=str(self.path), error=str(exc))
                    return False
            time.sleep(0.01)

    async def finish(self, wait: float = EMPTY_WAIT) -> bool:
        """Kill everything in the cgroup, wait until it is empty, remove it,
        without blocking the event loop for long. True if it is gone."""
        self.kill_now()
        self._close()
        deadline = time.monotonic() + wait
        delay = 0.002
        while self.populated() and time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        return await asyncio.to_thread(self.remove_now, max(0.0, deadline - time.monotonic()))

    def _close(self) -> None:
        if self._procs >= 0:
            with contextlib.suppress(OSError):
                os.close(self._procs)
            self._procs = -1


def reap(path: Path, base: Path | None) -> bool:
    """Kill and remove a run cgroup a previous agent left behind (blocking).
    Only a `run-*` directory directly under this agent's base is touched.
    True if it held processes."""
    if base is None or path.parent != base or not path.name.startswith(RUN_PREFIX):
        return False
    if not path.is_dir():
        return False
    cg = RunCgroup(path, -1)
    held = cg.populated()
    cg.kill_now()
    deadline = time.monotonic() + EMPTY_WAIT
    while cg.populated() and time.monotonic() < deadline:
        time.sleep(0.02)
    cg.remove_now()
    return held
