"""No process of a run escapes its cleanup (issue 17, item 8), end to end with a
real HQ, real agents and real processes: where the agent runs as root with a
usable cgroup v2, each run has a cgroup of its own that is killed whole when
the run ends, times out, or its agent died; elsewhere the process-group rule
applies, and `fieldlink-agent status` (and the hello) say which is in force."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import containment
from agent.policy import Policy, write_default
from server.links import dispatch
from shared import protocol as p
from tests.support import AgentHandle, HQHandle, spawn, start_agent, wait_until
from tests.test_e2e_sessions import agent_cli

PROBE = containment.probe()
CGROUPS = PROBE.base is not None
needs_cgroups = pytest.mark.skipif(not CGROUPS, reason=f"cgroup v2 not usable: {PROBE.reason}")


def marked(marker: str) -> list[int]:
    """Pids of live processes (not zombies) with `marker` in their argv, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        state = stat[stat.rfind(b")") + 2 :][:1]
        if state != b"Z" and any(marker.encode() in word for word in argv):
            found.append(int(entry))
    return found


@contextlib.contextmanager
def cleanup(marker: str) -> Iterator[None]:
    """Never leave a test's processes behind, whatever the agent did."""
    try:
        yield
    finally:
        for pid in marked(marker):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def new_marker() -> str:
    """Digits no other process has in its argv (also a valid sleep duration)."""
    return str(10**8 + secrets.randbelow(9 * 10**8))


def escaping(marker: str, then: str = "echo started") -> str:
    """A shell command whose children leave the run's process group: `setsid
    sleep` and a python that calls `os.setpgid(0, 0)`, each with `marker` in
    its argv; both sleep long."""
    py = sys.executable
    return (
        f"setsid sleep {marker} >/dev/null 2>&1 & "
        f"{py} -c 'import os, time; os.setpgid(0, 0); time.sleep(1000)' {marker} "
        f">/dev/null 2>&1 & sleep 0.3; {then}"
    )


async def linked(hq: HQHandle, agent_factory: Any, **config: Any) -> AgentHandle:
    agent: AgentHandle = await agent_factory(hq, run=False, **config)
    write_default(
        agent.dir.policy_file, Policy(allow_exec=True, allow_shell=True, require_consent=False)
    )
    await agent.start()
    registry = hq.hq.parts.links

    def hello_in() -> bool:
        link = registry.get(agent.agent_id)
        return link is not None and "hello_at" in link.info

    await wait_until(hello_in, what="the agent's hello at HQ")
    return agent


async def shell_run(
    hq: HQHandle, agent_id: str, command: str, timeout: float | None = None
) -> p.RunResult:
    request = p.RunRequest(
        id=uuid.uuid4().hex, name="exec", params={"command": command}, timeout=timeout
    )
    registry = hq.hq.parts.links
    frames = [f async for f in dispatch.run(registry, agent_id, request, timeout=60)]
    result = frames[-1]
    assert isinstance(result, p.RunResult)
    return result


@needs_cgroups
async def test_nothing_escapes_a_run_with_setsid_or_setpgid(sqlite_hq, agent_factory):
    """A run's children that leave its process group (`setsid`, `setpgid(0, 0)`)
    are killed when the run ends, and when it times out; its cgroup goes."""
    hq = sqlite_hq
    agent = await linked(hq, agent_factory)
    assert agent.daemon is not None and agent.daemon.containment.base is not None
    end, late = new_marker(), new_marker()
    with cleanup(end), cleanup(late):
        result = await shell_run(hq, agent.agent_id, escaping(end))
        assert result.status == "ok", result
        await wait_until(lambda: not marked(end), timeout=10, what="all killed")

        result = await shell_run(hq, agent.agent_id, escaping(late, then="sleep 1000"), timeout=1.5)
        assert result.status == "timeout", result
        await wait_until(lambda: not marked(late), timeout=10, what="all killed")
    base = agent.daemon.containment.base
    assert not [d for d in base.iterdir() if d.name.startswith("run-") and _ours(d, agent)]


def _ours(cgroup: Path, agent: AgentHandle) -> bool:
    return any(cgroup.name in f.read_text() for f in agent.dir.runs_dir.glob("*.json"))


@needs_cgroups
async def test_status_and_hello_say_which_containment_is_in_force(sqlite_hq, agent_factory):
    """`fieldlink-agent status` prints the containment in force, and HQ has it
    in the machine's facts."""
    hq = sqlite_hq
    agent = await linked(hq, agent_factory)
    assert agent.daemon is not None
    shown = agent.daemon.containment.describe()
    assert shown.startswith("cgroup v2 (/")
    code, text, err = await agent_cli(agent, "status")
    assert code == 0, err
    assert f"run containment  {shown}" in text or any(
        line.startswith("run containment") and line.endswith(shown) for line in text.splitlines()
    ), text
    async with hq.client(hq.admin_token) as api:
        body = await api.ok("GET", f"/api/v1/agents/{agent.agent_id}")
    assert body["facts"]["run_containment"] == shown


async def test_the_process_group_rule_where_cgroups_are_off(sqlite_hq, agent_factory):
    """With cgroups not in use (here: turned off in config.toml) the
    process-group rule is in force and said so; a grandchild that stays in the
    run's group is still killed when the run ends."""
    hq = sqlite_hq
    agent = await linked(hq, agent_factory, run_containment="process_group")
    assert agent.daemon is not None
    shown = agent.daemon.containment.describe()
    assert shown == (
        "process group (cgroups unavailable: turned off in config.toml "
        '(run_containment = "process_group"))'
    )
    code, text, err = await agent_cli(agent, "status")
    assert code == 0 and shown in text, (text, err)
    marker = new_marker()
    with cleanup(marker):
        result = await shell_run(
            hq, agent.agent_id, f"sleep {marker} >/dev/null 2>&1 & echo started"
        )
        assert result.status == "ok", result
        await wait_until(lambda: not marked(marker), timeout=10, what="the grandchild killed")


@needs_cgroups
@pytest.mark.timeout(180)
async def test_an_agent_in_its_own_cgroup_contains_runs_past_its_death(
    sqlite_hq, agent_factory, tmp_path
):
    """The agent as a service in a cgroup of its own (as systemd starts it with
    Delegate=yes): it moves itself into a leaf `agent`, puts each run in a
    sibling cgroup, shows that cgroup in `status`; killed with SIGKILL mid-run,
    the process a run moved out of its group with `setsid` goes on, and the
    restarted agent kills it before serving anything."""
    hq = sqlite_hq
    assert PROBE.base is not None
    service = PROBE.base / f"fltest-{secrets.token_hex(4)}"
    service.mkdir()
    agent = await start_agent(hq, tmp_path / "svc", run=False)
    write_default(
        agent.dir.policy_file, Policy(allow_exec=True, allow_shell=True, require_consent=False)
    )
    log = tmp_path / "agent.log"
    registry = hq.hq.parts.links
    marker = new_marker()
    procs: list[asyncio.subprocess.Process] = []

    async def run_service() -> asyncio.subprocess.Process:
        proc = await spawn(
            log,
            "fieldlink-agent",
            "run",
            "--config-dir",
            str(agent.dir.path),
        )
        procs.append(proc)
        (service / "cgroup.procs").write_text(str(proc.pid))
        return proc

    runner: asyncio.Task[Any] | None = None
    try:
        with cleanup(marker):
            # the agent process joins the service's cgroup at once (before its link is up)
            first = await run_service()
            await wait_until(lambda: registry.get(agent.agent_id), timeout=30, what="linked")

            def in_leaf() -> bool:
                return (
                    Path(f"/proc/{first.pid}/cgroup")
                    .read_text()
                    .rstrip()
                    .endswith(f"{service.name}/agent")
                )

            await wait_until(in_leaf, timeout=10, what="the agent in its leaf cgroup")
            code, text, err = await agent_cli(agent, "status")
            assert code == 0 and f"cgroup v2 ({service})" in text, (text, err)

            async def drive() -> None:
                with contextlib.suppress(Exception):
                    await shell_run(hq, agent.agent_id, escaping(marker, then="sleep 1000"))

            runner = asyncio.create_task(drive())
            await wait_until(
                lambda: len(marked(marker)) >= 2, timeout=30, what="the run's escapees"
            )
            runs = [d for d in service.iterdir() if d.name.startswith("run-")]
            assert len(runs) == 1, runs
            first.kill()
            assert await first.wait() == -9
            await asyncio.sleep(0.5)
            escapees = marked(marker)
            assert escapees, "the escapees outlive the killed agent"
            assert any(os.getsid(pid) == pid for pid in escapees)  # the setsid one

            await run_service()
            await wait_until(lambda: not marked(marker), timeout=30, what="the orphan run killed")
            await wait_until(lambda: not runs[0].exists(), timeout=10, what="its cgroup removed")
            await wait_until(lambda: registry.get(agent.agent_id), timeout=30, what="relinked")
            assert "orphaned_run_killed" in log.read_text()
    finally:
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
        with contextlib.suppress(OSError):
            (service / "cgroup.kill").write_text("1")
        for _ in range(100):
            for child in sorted(service.glob("*/"), reverse=True):
                with contextlib.suppress(OSError):
                    child.rmdir()
            with contextlib.suppress(OSError):
                service.rmdir()
            if not service.exists():
                break
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("cgroup", "mountinfo", "euid", "reason"),
    [
        ("0::/system.slice/fl.service\n", "", 1000, "the agent does not run as root"),
        (
            "4:memory:/x\n1:cpu:/\n",
            "",
            0,
            "no cgroup v2 hierarchy (this system uses cgroup v1 only)",
        ),
        ("0::/system.slice/fl.service\n", "", 0, "cgroup2 is not mounted"),
    ],
)
def test_why_cgroups_are_unavailable(cgroup, mountinfo, euid, reason):
    """The probe's reasons, from what /proc says (pure)."""
    assert containment.locate(cgroup, mountinfo, euid) == reason


def test_finding_the_agents_cgroup_directory():
    """Unified (/sys/fs/cgroup) and hybrid (/sys/fs/cgroup/unified) layouts,
    and a cgroup namespace whose root is not the hierarchy's (pure)."""
    unified = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
    hybrid = (
        "31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "32 25 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    )
    svc = "0::/system.slice/fl.service\n"
    assert containment.locate(svc, unified, 0) == Path("/sys/fs/cgroup/system.slice/fl.service")
    assert containment.locate("1:cpu:/\n" + svc, hybrid, 0) == Path(
        "/sys/fs/cgroup/unified/system.slice/fl.service"
    )
    nested = "40 25 0:26 /system.slice /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert containment.locate(svc, nested, 0) == Path("/sys/fs/cgroup/fl.service")
    assert containment.locate("0::/\n", unified, 0) == Path("/sys/fs/cgroup")


@needs_cgroups
async def test_a_session_shell_is_contained_too(sqlite_hq, agent_factory):
    """What an engineer's shell starts with `setsid` (leaving the shell's
    session) is killed when HQ ends the session."""
    from tests.test_agent_shell import Pty, session_id, tell
    from tests.test_agent_shell import linked as shell_linked

    agent, link = await shell_linked(sqlite_hq, agent_factory)
    sid = session_id()
    await tell(agent, link, sid)
    marker = new_marker()
    with cleanup(marker):
        pty = await Pty.open(link, sid)
        await pty.type(f"setsid sleep {marker} >/dev/null 2>&1 < /dev/null & echo go=$$\r")
        await pty.expect(r"go=\d+")
        await wait_until(lambda: marked(marker), what="the escapee started")
        [pid] = marked(marker)
        assert os.getsid(pid) == pid  # it left the shell's session
        await tell(agent, link, sid, "ended", end_reason="done")
        await pty.finished()
        await wait_until(lambda: not marked(marker), timeout=10, what="the escapee killed")
