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
import os
import secrets
import sys
import uuid
from pathlib import Path
from typing import Any

import psutil

from agent.policy import Policy, write_default
from server.gateway import dispatch
from shared import protocol as p
from tests.support import AgentHandle, HQHandle, make_user, spawn, wait_until
from tests.test_client_cli import as_user, fieldlink
from tests.test_e2e_sessions import agent_cli, desk, site_policy


async def linked_agent(hq: HQHandle, agent_factory: Any, **policy: Any) -> AgentHandle:
    """An agent (in this process) with this policy, its hello known at HQ."""
    agent: AgentHandle = await agent_factory(hq, run=False)
    write_default(agent.dir.policy_file, Policy(**policy))
    await agent.start()
    registry = hq.hq.svc.gateway.registry

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

        write_default(agent.dir.policy_file, Policy(allow_exec=True, require_consent=True))
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
    the reason; ordinary programs run; `allowed_interpreters` lets the named
    ones through and nothing else."""
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
    assert "sh is a shell" in cli.stderr and "allow_shell = false" in cli.stderr

    write_default(
        agent.dir.policy_file,
        Policy(allow_exec=True, require_consent=False, allowed_interpreters=["python3"]),
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
    registry = hq.hq.svc.gateway.registry
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
    registry = hq.hq.svc.gateway.registry
    frames = [f async for f in dispatch.run(registry, agent.agent_id, request, timeout=60)]
    result = frames[-1]
    assert isinstance(result, p.RunResult) and result.status == "ok", result
    await wait_until(lambda: not sleeping(duration), timeout=10, what="the grandchild killed")
    assert not list(agent.dir.runs_dir.glob("*.json"))
