"""Hostile input and faults on the machine's side (issue 10, agent items), end to
end with a real HQ, real agents (in this process or as their own processes),
real SSH, real files and real processes:

- the machine's `require_consent` covers plain commands, and `allow_shell =
  false` covers shells and interpreters spelt as an argv;
- a full spool disk never stops the agent, and fatal errors exit non-zero;
- a run's processes never outlive the agent that started them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import func, select

from agent.policy import Policy, write_default
from server.links import dispatch
from server.store.models import HealthRecord
from shared import protocol as p
from tests.support import (
    TEST_PROGRAMS,
    AgentHandle,
    HQHandle,
    machine_policy,
    make_user,
    spawn,
    start_agent,
    wait_until,
)
from tests.test_client_cli import as_user, fieldlink
from tests.test_e2e_sessions import agent_cli, desk, site_policy


async def linked_agent(hq: HQHandle, agent_factory: Any, **policy: Any) -> AgentHandle:
    """An agent (in this process) with this policy, its hello known at HQ."""
    agent: AgentHandle = await agent_factory(hq, run=False)
    write_default(agent.dir.policy_file, machine_policy(**policy))
    await agent.start()
    registry = hq.hq.parts.links

    def hello_in() -> bool:
        link = registry.get(agent.agent_id)
        return link is not None and "hello_at" in link.info

    await wait_until(hello_in, what="the agent's hello at HQ")
    return agent


async def new_ticket(hq: HQHandle, agent: AgentHandle) -> str:
    async with hq.client(hq.admin_token) as api:
        made = await api.ok(
            "POST",
            "/api/v1/tickets",
            json={"title": "till slow", "site": "shop-1", "agent_ids": [agent.agent_id]},
        )
    return str(made["number"])


# --- item 2: consent and shells for plain commands ---------------------------------


async def test_exec_without_a_consented_session_is_refused_by_the_machine(
    sqlite_hq, agent_factory, tmp_path
):
    """With `require_consent = true` the agent runs a plain command only inside an
    active session the site consented to, for the same ticket and engineer:
    the issue's request (admin, a ticket, no session) is refused with the
    reason, through the API and `fieldlink exec`; once the site approves an
    exec session at the machine the engineer's command runs, and nobody
    else's; after the session ends it is refused again."""
    hq = sqlite_hq
    agent = await linked_agent(hq, agent_factory, allow_exec=True, require_consent=True)
    assert agent.daemon is not None
    ticket = await new_ticket(hq, agent)
    url = f"/api/v1/agents/{agent.agent_id}/run"
    run = {"name": "exec", "params": {"argv": ["id"]}, "ticket_id": ticket}
    async with hq.client(hq.admin_token) as admin:
        result = await admin.ok("POST", url, json=run)
        audit = await admin.ok("GET", "/api/v1/audit", params={"action": "run.exec"})
    assert result["status"] == "refused", result
    assert "require_consent = true" in result["reason"]
    assert f"admin has none on {ticket}" in result["reason"]
    assert result["stdout"] == "" and result["exit_code"] is None
    assert audit["items"][-1]["outcome"] == "denied"

    async with desk(hq, agent) as d:
        env = as_user(tmp_path / "cfg", hq, d.engineer.token)
        cli = await fieldlink(
            "exec", agent.agent_id, "--ticket", d.ticket, "--", "echo", "no-consent", env=env
        )
        assert cli.returncode == 1, cli
        assert "refused" in cli.stderr and "require_consent = true" in cli.stderr
        assert "no-consent" not in cli.stdout

        rs = await d.ask(kind="exec", reason="check the spooler")
        assert rs["state"] == "awaiting_consent"
        await d.heard(rs["id"], "awaiting_consent")
        waiting = await d.api.ok(
            "POST", url, json={**run, "ticket_id": d.ticket, "params": {"argv": ["true"]}}
        )
        assert waiting["status"] == "refused" and "awaiting consent" in waiting["reason"]

        code, _, err = await agent_cli(agent, "consent", "--approve", rs["id"])
        assert code == 0, err
        await d.heard(rs["id"], "active")
        cli = await fieldlink(
            "exec", agent.agent_id, "--ticket", d.ticket, "--", "echo", "consented", env=env
        )
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout == "consented\n"

        # the session is the engineer's, on this ticket: not the admin's, not another ticket's
        async with hq.client(hq.admin_token) as admin:
            other = await admin.ok("POST", url, json={**run, "ticket_id": d.ticket})
        assert other["status"] == "refused" and f"admin has none on {d.ticket}" in other["reason"]
        elsewhere = await d.api.ok("POST", url, json={**run, "ticket_id": ticket})
        assert elsewhere["status"] == "refused"

        await d.api.ok("POST", f"/api/v1/sessions/{rs['id']}/end", json={"reason": "done"})
        await d.heard(rs["id"], "ended")
        after = await d.api.ok("POST", url, json={**run, "ticket_id": d.ticket})
        assert after["status"] == "refused" and "is ended" in after["reason"]


async def test_exec_in_a_session_nobody_at_the_site_consented_to_is_refused(
    sqlite_hq, agent_factory
):
    """The machine's floor holds whatever HQ decided: a session HQ made active
    without consent (the site's setting, while the machine did not require it)
    does not let a command run once the machine requires consent."""
    hq = sqlite_hq
    agent = await linked_agent(hq, agent_factory, allow_exec=True, require_consent=False)
    assert agent.daemon is not None
    await site_policy(hq, consent={"shell": False, "exec": False, "files": False})
    async with desk(hq, agent) as d:
        rs = await d.ask(kind="exec")
        assert rs["state"] == "active" and rs["consent_by"] is None
        await d.heard(rs["id"], "active")
        url = f"/api/v1/agents/{agent.agent_id}/run"
        run = {"name": "exec", "params": {"argv": ["echo", "ok"]}, "ticket_id": d.ticket}
        assert (await d.api.ok("POST", url, json=run))["status"] == "ok"

        write_default(agent.dir.policy_file, machine_policy(allow_exec=True, require_consent=True))
        assert agent.daemon.reload_policy()
        refused = await d.api.ok("POST", url, json=run)
        assert refused["status"] == "refused"
        assert "nobody at the site gave it" in refused["reason"], refused["reason"]


SHELLS_IN_DISGUISE = [
    ["sh", "-c", "id"],
    ["/bin/sh", "-c", "id"],
    ["bash", "-c", "id"],
    ["dash", "-c", "id"],
    [os.path.realpath(sys.executable), "-c", "print(1)"],
    ["python3", "-c", "print(1)"],
    ["perl", "-e", "print 1"],
    ["env", "sh", "-c", "id"],
    ["env", "-i", "PATH=/bin", "/bin/sh", "-c", "id"],
    ["env", "-S", "sh -c id"],
    ["nice", "-n", "5", "bash", "-c", "id"],
    ["timeout", "5", "sh", "-c", "id"],
    ["find", "/", "-maxdepth", "0", "-exec", "sh", "-c", "id", ";"],
    ["awk", 'BEGIN { system("id") }'],
]


async def test_allow_shell_false_refuses_interpreters_invoked_as_shells(
    sqlite_hq, agent_factory, tmp_path
):
    """`allow_shell = false`: an argv whose program is a shell or interpreter,
    however spelt (path, version, behind env, nice, find ...), is refused with
    the reason; ordinary programs (listed in `allowed_programs`) run;
    `allowed_interpreters` lets the named ones through (when listed) and
    nothing else."""
    hq = sqlite_hq
    agent = await linked_agent(hq, agent_factory, allow_exec=True, require_consent=False)
    assert agent.daemon is not None
    ticket = await new_ticket(hq, agent)
    url = f"/api/v1/agents/{agent.agent_id}/run"
    async with hq.client(hq.admin_token) as api:
        for argv in SHELLS_IN_DISGUISE:
            body = {"name": "exec", "params": {"argv": argv}, "ticket_id": ticket}
            result = await api.ok("POST", url, json=body)
            assert result["status"] == "refused", (argv, result)
            assert "allow_shell = false" in result["reason"], (argv, result["reason"])
            assert result["stdout"] == "", argv
        fine = {"name": "exec", "params": {"argv": ["ls", "/bin/sh"]}, "ticket_id": ticket}
        result = await api.ok("POST", url, json=fine)
        assert result["status"] == "ok" and result["stdout"] == "/bin/sh\n"

    user = await make_user(hq, "hq_engineer", totp=True)
    env = as_user(tmp_path / "cfg", hq, user.token)
    cli = await fieldlink(
        "exec", agent.agent_id, "--ticket", ticket, "--", "sh", "-c", "echo leaked", env=env
    )
    assert cli.returncode == 1 and "leaked" not in cli.stdout
    assert "not in allowed_programs" in cli.stderr and "allow_shell = false" in cli.stderr

    write_default(
        agent.dir.policy_file,
        Policy(
            allow_exec=True,
            require_consent=False,
            allowed_programs=[*TEST_PROGRAMS, "python3", "sh"],
            allowed_interpreters=["python3"],
        ),
    )
    assert agent.daemon.reload_policy()
    ok = await fieldlink(
        "exec", agent.agent_id, "--ticket", ticket, "--", "python3", "-c", "print(6*7)", env=env
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "42\n"
    still = await fieldlink(
        "exec", agent.agent_id, "--ticket", ticket, "--", "sh", "-c", "echo leaked", env=env
    )
    assert still.returncode == 1 and "leaked" not in still.stdout
    assert "can run arbitrary code" in still.stderr  # listed, but a shell needs patterns


# --- item 8: no run outlives its agent -----------------------------------------------


def sleeping(duration: str) -> list[psutil.Process]:
    """Live `sleep DURATION` processes (zombies are dead)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["cmdline"] == ["sleep", duration] and proc.info["status"] != "zombie":
            found.append(proc)
    return found


async def agent_process(agent: AgentHandle, log: Path) -> asyncio.subprocess.Process:
    """`fieldlink-agent run` for this agent, as its own process."""
    return await spawn(log, "fieldlink-agent", "run", "--config-dir", str(agent.dir.path))


async def test_a_run_left_by_a_killed_agent_is_killed_at_its_restart(
    sqlite_hq, agent_factory, tmp_path
):
    """`kill -9` of the agent during `exec sh -c "sleep N"` leaves sh and sleep
    running; the restarted agent kills them before it serves anything."""
    hq = sqlite_hq
    agent: AgentHandle = await agent_factory(hq, run=False)
    policy = Policy(allow_exec=True, allow_shell=True, require_consent=False)
    write_default(agent.dir.policy_file, policy)
    duration = str(9000 + secrets.randbelow(900))  # this test's own sleep
    registry = hq.hq.parts.links
    log = tmp_path / "agent.log"
    first = await agent_process(agent, log)
    second: asyncio.subprocess.Process | None = None
    request = p.RunRequest(
        id=uuid.uuid4().hex, name="exec", params={"argv": ["sh", "-c", f"sleep {duration}; true"]}
    )

    async def drive() -> None:
        with contextlib.suppress(Exception):
            async for _ in dispatch.run(registry, agent.agent_id, request, timeout=120):
                pass

    runner: asyncio.Task[None] | None = None
    try:
        await wait_until(lambda: registry.get(agent.agent_id), timeout=30, what="agent linked")
        runner = asyncio.create_task(drive())
        [sleep] = await wait_until(lambda: sleeping(duration), timeout=30, what="the run's sleep")
        leader = psutil.Process(os.getpgid(sleep.pid))
        assert leader.cmdline()[1:] == ["-c", f"sleep {duration}; true"]

        # the agent records the group right after starting it: let it (on a busy
        # machine the sleep can be seen first); without records this waits in vain
        with contextlib.suppress(AssertionError):
            await wait_until(
                lambda: agent.dir.runs_dir.exists() and list(agent.dir.runs_dir.glob("*.json")),
                timeout=10,
                what="the run's group recorded",
            )
        first.kill()
        assert await first.wait() == -9
        await asyncio.sleep(0.5)
        assert sleep.is_running() and leader.is_running()  # orphaned, as the issue saw
        recorded = list(agent.dir.runs_dir.glob("*.json")) if agent.dir.runs_dir.exists() else []

        second = await agent_process(agent, log)
        await wait_until(lambda: not sleeping(duration), timeout=30, what="the orphan killed")
        assert [f.name for f in recorded] == [f"{leader.pid}.json"]
        assert not leader.is_running() or leader.status() == psutil.STATUS_ZOMBIE
        await wait_until(lambda: registry.get(agent.agent_id), timeout=30, what="relinked")
        assert not list(agent.dir.runs_dir.glob("*.json"))
        assert "orphaned_run_killed" in log.read_text()
    finally:
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.terminate()
                await proc.wait()
        for left in sleeping(duration):  # never leave this test's processes behind
            with contextlib.suppress(psutil.Error):
                left.kill()


async def test_a_run_ends_with_its_whole_group_killed(sqlite_hq, agent_factory):
    """A grandchild that stays in the run's group (a background sleep with its
    output elsewhere) is killed when the run ends, and the record goes."""
    hq = sqlite_hq
    agent = await linked_agent(
        hq, agent_factory, allow_exec=True, allow_shell=True, require_consent=False
    )
    duration = str(9000 + secrets.randbelow(900))
    request = p.RunRequest(
        id=uuid.uuid4().hex,
        name="exec",
        params={"argv": ["sh", "-c", f"sleep {duration} >/dev/null 2>&1 & echo started"]},
    )
    registry = hq.hq.parts.links
    frames = [f async for f in dispatch.run(registry, agent.agent_id, request, timeout=60)]
    result = frames[-1]
    assert isinstance(result, p.RunResult) and result.status == "ok", result
    await wait_until(lambda: not sleeping(duration), timeout=10, what="the grandchild killed")
    assert not list(agent.dir.runs_dir.glob("*.json"))


# --- item 3: a full spool disk ---------------------------------------------------------


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` at `path` (mounting needs root: skipped without)."""
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Write a file at `path` until the disk is full."""
    chunk = b"\0" * 4096
    with path.open("wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(chunk)
    with contextlib.suppress(OSError), path.open("ab", buffering=0) as fh:
        while True:  # the last few bytes too
            fh.write(b"\0")
    return path


async def reports_at_hq(hq: HQHandle, agent_id: str) -> int:
    async with hq.sessions() as session:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(HealthRecord)
                .where(HealthRecord.agent_id == agent_id)
            )
            or 0
        )


async def status_json(config_dir: Path) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent.cli",
        "status",
        "--json",
        "--config-dir",
        str(config_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


@pytest.mark.timeout(300)
async def test_a_full_spool_disk_never_stops_the_agent(sqlite_hq, tmp_path):
    """The issue's set-up: the config dir on a 3 MB tmpfs, reports as fast as
    they come. The agent keeps running and reporting far past the ~105
    reports where it used to stop (250 here); with the disk filled by something else it
    still runs, restarts and keeps its link; while HQ is away too, reports
    that cannot be written are dropped, counted and shown by `status` with
    the error; once there is room again the count reaches HQ and reports
    flow. SIGTERM ends it with status 0."""
    hq = sqlite_hq
    registry = hq.hq.parts.links
    with small_disk(tmp_path / "disk", "3m") as disk:
        agent = await start_agent(hq, disk / "agent", run=False)
        cdir = agent.dir.path
        log = tmp_path / "agent.log"

        async def run_agent() -> asyncio.subprocess.Process:
            return await spawn(
                log, "fieldlink-agent", "run", "--config-dir", str(cdir), "--interval", "0.02"
            )

        proc = await run_agent()
        try:
            await wait_until(lambda: registry.get(agent.agent_id), timeout=30, what="linked")
            await wait_until(
                lambda: reports_at_hq(hq, agent.agent_id),
                timeout=30,
                what="first report",
            )

            async def many() -> bool:
                assert proc.returncode is None, log.read_text()[-3000:]
                return await reports_at_hq(hq, agent.agent_id) >= 250

            await wait_until(many, timeout=120, interval=0.5, what="250 reports at HQ")

            # something else fills the disk: the agent goes on, and comes back after a restart
            filler = fill(disk / "filler")
            assert shutil.disk_usage(disk).free < 8192
            proc.terminate()
            assert await proc.wait() == 0
            proc = await run_agent()
            before = await reports_at_hq(hq, agent.agent_id)

            async def flowing() -> bool:
                assert proc.returncode is None, log.read_text()[-3000:]
                return await reports_at_hq(hq, agent.agent_id) >= before + 50

            await wait_until(flowing, timeout=120, interval=0.5, what="reports on a full disk")

            # HQ away as well: the spool must grow and cannot; reports are dropped, counted
            await hq.stop()

            async def failing() -> dict[str, Any] | None:
                assert proc.returncode is None, log.read_text()[-3000:]
                status = await status_json(cdir)
                return status if status["spool_error"] and status["spool_dropped"] else None

            status = await wait_until(failing, timeout=60, interval=0.5, what="drops in status")
            assert "full" in status["spool_error"] and status["spool_error_since"]
            assert log.read_text().count("spool_write_failed") == 1  # once per episode

            filler.unlink()
            await hq.restart()
            registry = hq.hq.parts.links

            # HQ's count climbs to the agent's: the reports spooled while HQ was
            # away reach it oldest first, each with the count of its own moment
            # (the first ones carry the few reports dropped to make room), so the
            # first non-zero count HQ shows can be below what `status` showed.
            async def dropped_at_hq() -> int | None:
                async with hq.client(hq.admin_token) as api:
                    body = await api.ok("GET", f"/api/v1/agents/{agent.agent_id}")
                count = int(body["spool_dropped"])
                return count if count >= status["spool_dropped"] else None

            shown = await wait_until(
                dropped_at_hq,
                timeout=60,
                what=f"the drop count at HQ to reach the agent's {status['spool_dropped']}",
            )
            assert shown >= status["spool_dropped"]
            recovered = await status_json(cdir)
            assert recovered["spool_error"] is None and recovered["link"] == "connected"
            assert "full" in recovered["spool_last_error"]
            assert "spool_write_recovered" in log.read_text()
            after = await reports_at_hq(hq, agent.agent_id)

            async def again() -> bool:
                return await reports_at_hq(hq, agent.agent_id) > after + 10

            await wait_until(again, timeout=60, interval=0.5, what="reports again")
        finally:
            if proc.returncode is None:
                proc.terminate()
                code = await proc.wait()
                assert code == 0


async def test_a_fatal_start_error_exits_non_zero(sqlite_hq, tmp_path):
    """An agent that cannot open its spool at all (a full disk, no spool yet)
    exits non-zero with the reason, so a supervisor restarts it later."""
    with small_disk(tmp_path / "disk", "1m") as disk:
        agent = await start_agent(sqlite_hq, disk / "agent", run=False)
        for leftover in agent.dir.path.glob("spool.db*"):
            leftover.unlink()
        fill(disk / "filler")
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "agent.cli", "run", "--config-dir", str(agent.dir.path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1, done
    assert "fieldlink-agent: cannot start:" in done.stderr and "full" in done.stderr
    assert "Traceback" not in done.stderr
