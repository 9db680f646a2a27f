"""The engineer CLI end to end: `fieldlink login/logout/agents/run/exec/job`
run exactly as the issue writes them, as separate processes, against a real
HQ and real agents on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent.policy import write_default
from server.auth.totp import code_for
from server.store import people, tickets
from server.store.models import Ticket
from tests import support
from tests.support import AgentHandle, HQHandle, free_port, machine_policy, make_user, wait_until

ENV_NAMES = ("FIELDLINK_SERVER", "FIELDLINK_TOKEN", "FIELDLINK_TLS_FINGERPRINT")


def base_env(config_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI process: our config dir, no inherited login."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    for name in ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR", "COLUMNS"):
        env.pop(name, None)
    env["FIELDLINK_CONFIG_DIR"] = str(config_dir)
    env.update(extra)
    return env


def as_user(config_dir: Path, hq: HQHandle, token: str, **extra: str) -> dict[str, str]:
    """A script's environment: HQ, token and pin from FIELDLINK_* variables."""
    login = {
        "FIELDLINK_SERVER": hq.url,
        "FIELDLINK_TOKEN": token,
        "FIELDLINK_TLS_FINGERPRINT": hq.fingerprint,
    }
    return base_env(config_dir, **{**login, **extra})


async def fieldlink(
    *argv: str, env: dict[str, str], stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """`fieldlink ARGV...` in its own process (off the event loop HQ runs on)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "server.cli", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
    )


async def ready_agent(hq: HQHandle, agent_factory: Any, site: str, **policy: Any) -> AgentHandle:
    """An enrolled agent with this local policy, connected and its catalog known to HQ."""
    agent: AgentHandle = await agent_factory(hq, site=site, run=False)
    write_default(agent.dir.policy_file, machine_policy(**policy))
    await agent.start()
    await catalog_known(hq, agent)
    return agent


async def catalog_known(hq: HQHandle, agent: AgentHandle) -> None:
    async with hq.client(hq.admin_token) as api:

        async def advertised() -> bool:
            status, body = await api.get(f"/api/v1/agents/{agent.agent_id}/catalog")
            return status == 200 and bool(body["items"])

        await wait_until(advertised, what="agent connected with its catalog")


async def open_ticket(hq: HQHandle, site: str) -> str:
    """A new ticket on `site`, made directly in the store; its FL- number."""
    async with hq.sessions.begin() as session:
        found = await people.site_by_name(session, site)
        assert found is not None
        number = await tickets.next_number(session)
        session.add(
            Ticket(
                number=number,
                title="till printer jams",
                type="incident",
                priority="P3",
                status="new",
                site_id=found.id,
                tier="hq",
                source="api",
            )
        )
    return f"FL-{number}"


def stored(config_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((config_dir / "login.json").read_text())
    return data


# --- login and logout ----------------------------------------------------------------


async def test_login_shows_fingerprint_asks_and_stores_token(sqlite_hq, tmp_path):
    """login asks trust, user, password and TOTP; stores a 0600 token pinned to HQ;
    later commands use it; logout revokes it at HQ and forgets it."""
    hq = sqlite_hq
    user = await make_user(hq, "hq_engineer", totp=True)
    assert user.totp_secret
    cfg = tmp_path / "cfg"
    env = base_env(cfg)
    answers = f"y\n{user.username}\n{user.password}\n{code_for(user.totp_secret)}\n"

    out = await fieldlink("login", hq.url, env=env, stdin=answers)

    assert out.returncode == 0, out.stderr
    assert hq.fingerprint in out.stderr and "Trust this certificate? [y/N]" in out.stderr
    assert "TOTP code" in out.stderr
    assert (cfg / "login.json").stat().st_mode & 0o777 == 0o600
    assert cfg.stat().st_mode & 0o777 == 0o700
    saved = stored(cfg)
    assert saved["url"] == hq.url and saved["fingerprint"] == hq.fingerprint
    assert saved["username"] == user.username and saved["expires_at"]
    token = saved["token"]
    assert user.password not in (cfg / "login.json").read_text()

    listed = await fieldlink("agents", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []

    out = await fieldlink("logout", env=env)
    assert out.returncode == 0, out.stderr
    assert not (cfg / "login.json").exists()
    async with hq.client(token) as api:
        status, _ = await api.get("/api/v1/me")
    assert status == 401
    after = await fieldlink("agents", env=env)
    assert after.returncode == 1 and "not logged in" in after.stderr


async def test_login_refuses_certificates_it_cannot_trust(sqlite_hq, tmp_path):
    """A --fingerprint mismatch or a "no" stores nothing; bad passwords are reported;
    a stored pin that HQ's certificate no longer matches stops every command."""
    hq = sqlite_hq
    user = await make_user(hq, "hq_engineer", totp=True)
    assert user.totp_secret
    cfg = tmp_path / "cfg"
    env = base_env(cfg)

    wrong = await fieldlink(
        "login",
        hq.url,
        "--fingerprint",
        "ab" * 32,
        "--username",
        user.username,
        "--password-stdin",
        env=env,
        stdin=user.password + "\n",
    )
    assert wrong.returncode == 1
    assert "refusing" in wrong.stderr and hq.fingerprint in wrong.stderr
    declined = await fieldlink("login", hq.url, env=env, stdin="n\n")
    assert declined.returncode == 1 and "not trusted" in declined.stderr
    assert not (cfg / "login.json").exists()

    bad = await fieldlink(
        "login",
        hq.url,
        "--fingerprint",
        hq.fingerprint.upper(),
        "--username",
        user.username,
        "--password-stdin",
        env=env,
        stdin="not-the-password\n",
    )
    assert bad.returncode == 1 and "invalid username or password" in bad.stderr

    good = await fieldlink(
        "login",
        hq.url,
        "--fingerprint",
        hq.fingerprint,
        "--username",
        user.username,
        "--password-stdin",
        "--totp",
        code_for(user.totp_secret),
        env=env,
        stdin=user.password + "\n",
    )
    assert good.returncode == 0, good.stderr
    assert stored(cfg)["fingerprint"] == hq.fingerprint

    # as if HQ's certificate had been swapped since: the pin no longer matches
    saved = stored(cfg)
    (cfg / "login.json").write_text(json.dumps({**saved, "fingerprint": "cd" * 32}))
    refused = await fieldlink("agents", env=env)
    assert refused.returncode == 1
    assert "not the pinned" in refused.stderr and "fieldlink login" in refused.stderr

    # logging in again shows the change and asks before pinning the new certificate
    again = await fieldlink(
        "login",
        hq.url,
        "--username",
        user.username,
        "--password-stdin",
        "--totp",
        code_for(user.totp_secret, time.time() + 30),  # codes are single-use per step
        env=env,
        stdin=f"y\n{user.password}\n",
    )
    assert again.returncode == 0, again.stderr
    assert "NOT the certificate pinned" in again.stderr
    assert stored(cfg)["fingerprint"] == hq.fingerprint


async def test_environment_replaces_the_stored_login(sqlite_hq, tmp_path):
    """FIELDLINK_SERVER/TOKEN/TLS_FINGERPRINT work without a login; a bad token says
    to log in; a wrong pin or an unreachable HQ fail clearly."""
    hq = sqlite_hq
    user = await make_user(hq, "hq_engineer", totp=True)
    cfg = tmp_path / "cfg"

    ok = await fieldlink("agents", "--json", env=as_user(cfg, hq, user.token))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == []

    expired = await fieldlink("agents", env=as_user(cfg, hq, "flk_not-a-token"))
    assert expired.returncode == 1 and "fieldlink login" in expired.stderr

    pinned = as_user(cfg, hq, user.token, FIELDLINK_TLS_FINGERPRINT="ef" * 32)
    mismatch = await fieldlink("agents", env=pinned)
    assert mismatch.returncode == 1 and "not the pinned" in mismatch.stderr

    nowhere = as_user(cfg, hq, user.token, FIELDLINK_SERVER=f"https://127.0.0.1:{free_port()}")
    down = await fieldlink("agents", env=nowhere)
    assert down.returncode == 1 and "cannot reach HQ" in down.stderr

    half = base_env(cfg, FIELDLINK_TOKEN=user.token)
    incomplete = await fieldlink("agents", env=half)
    assert incomplete.returncode == 1 and "FIELDLINK_SERVER" in incomplete.stderr


# --- agents, run, exec ---------------------------------------------------------------------


async def test_agents_table_and_json(sqlite_hq, agent_factory, tmp_path):
    """`agents` draws a table of every visible agent; --site filters; --json gives the items."""
    hq = sqlite_hq
    one = await ready_agent(hq, agent_factory, "shop-a")
    two = await ready_agent(hq, agent_factory, "shop-b")
    user = await make_user(hq, "hq_engineer", totp=True)
    env = as_user(tmp_path / "cfg", hq, user.token)

    table = await fieldlink("agents", env=env)
    assert table.returncode == 0, table.stderr
    for word in (one.agent_id, two.agent_id, "shop-a", "shop-b", "online", "last seen"):
        assert word in table.stdout

    only = await fieldlink("agents", "--site", "shop-a", "--json", env=env)
    assert only.returncode == 0, only.stderr
    items = json.loads(only.stdout)
    assert [i["id"] for i in items] == [one.agent_id]
    assert {"site", "hostname", "status", "health", "last_seen"} <= items[0].keys()

    tech = await make_user(hq, "site_tech", "shop-b")
    scoped = await fieldlink("agents", "--json", env=as_user(tmp_path / "t", hq, tech.token))
    assert [i["id"] for i in json.loads(scoped.stdout)] == [two.agent_id]


async def test_run_streams_output_and_exit_status(sqlite_hq, agent_factory, tmp_path):
    """run by hostname or id prints the entry's output; params are typed by the
    agent's schema; a bad param names the field; a refusal exits 1 with the reason."""
    hq = sqlite_hq
    agent = await ready_agent(hq, agent_factory, "shop-r")
    user = await make_user(hq, "hq_engineer", totp=True)
    env = as_user(tmp_path / "cfg", hq, user.token)
    hostname = os.uname().nodename

    summary = await fieldlink("run", hostname, "system.summary", env=env)
    assert summary.returncode == 0, summary.stderr
    assert summary.stdout.strip()

    usage = await fieldlink("run", agent.agent_id, "disk.usage", env=env)
    assert usage.returncode == 0, usage.stderr
    assert "mount" in usage.stdout and "/" in usage.stdout

    terminal = {**env, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "0", "NO_COLOR": "1"}
    terminal["COLUMNS"] = "120"
    drawn = await fieldlink("run", agent.agent_id, "disk.usage", env=terminal)
    assert drawn.returncode == 0, drawn.stderr
    assert "mount" in drawn.stdout and "│" in drawn.stdout  # a rich table on a terminal

    top = await fieldlink(
        "run", agent.agent_id, "process.top", "--json", "n=3", "sort=memory", env=env
    )
    assert top.returncode == 0, top.stderr
    result = json.loads(top.stdout)
    assert result["status"] == "ok" and result["params"] == {"n": 3, "sort": "memory"}
    assert result["result_id"] and "type" not in result

    invalid = await fieldlink("run", agent.agent_id, "process.top", "n=lots", env=env)
    assert invalid.returncode == 1
    assert "invalid parameters" in invalid.stderr and "params.n" in invalid.stderr

    refused = await fieldlink("run", agent.agent_id, "log.tail", "path=/etc/shadow", env=env)
    assert refused.returncode == 1
    assert "refused" in refused.stderr and "file roots" in refused.stderr

    unknown = await fieldlink("run", "no-such-host", "system.summary", env=env)
    assert unknown.returncode == 1 and "no agent with id or hostname" in unknown.stderr


async def test_exec_streams_and_exits_with_the_remote_status(sqlite_hq, agent_factory, tmp_path):
    """exec runs argv under a ticket where policy allows it, streams both outputs and
    exits with the command's status; elsewhere it is refused with the reason."""
    hq = sqlite_hq
    allowed = await ready_agent(
        hq, agent_factory, "shop-x", allow_exec=True, allow_shell=True, require_consent=False
    )
    strict = await ready_agent(hq, agent_factory, "shop-x")
    user = await make_user(hq, "hq_engineer", totp=True)
    env = as_user(tmp_path / "cfg", hq, user.token)
    ticket = await open_ticket(hq, "shop-x")

    hello = await fieldlink(
        "exec", allowed.agent_id, "--ticket", ticket, "--", "echo", "hi", env=env
    )
    assert hello.returncode == 0, hello.stderr
    assert hello.stdout == "hi\n"

    script = "echo out; echo err >&2; exit 3"
    mixed = await fieldlink(
        "exec", allowed.agent_id, "--ticket", ticket, "--", "sh", "-c", script, env=env
    )
    assert mixed.returncode == 3
    assert mixed.stdout == "out\n" and "err" in mixed.stderr

    refused = await fieldlink(
        "exec", strict.agent_id, "--ticket", ticket, "--", "echo", "hi", env=env
    )
    assert refused.returncode == 1
    assert "refused" in refused.stderr and "allow_exec" in refused.stderr

    no_ticket = await fieldlink("exec", allowed.agent_id, "--", "echo", "hi", env=env)
    assert no_ticket.returncode == 2 and "--ticket" in no_ticket.stderr

    # both agents run on this machine: its hostname names neither
    ambiguous = await fieldlink("run", os.uname().nodename, "system.summary", env=env)
    assert ambiguous.returncode == 1 and "ambiguous" in ambiguous.stderr


# --- jobs ---------------------------------------------------------------------------------


async def job_counts(hq: HQHandle, user: support.TestUser) -> dict[str, int]:
    async with hq.client(user.token) as api:
        jobs = await api.ok("GET", "/api/v1/jobs")
        if not jobs["items"]:
            return {}
        counts: dict[str, int] = jobs["items"][0]["counts"]
        return counts


async def test_job_waits_for_an_offline_agent_and_reports(sqlite_hq, agent_factory, tmp_path):
    """A job over a site runs at once on the connected agent and, when the offline one
    comes back, on it too; progress as items finish, a table, exit 0. A job whose
    items are refused exits 1, and --json prints the job."""
    hq = sqlite_hq
    online = await ready_agent(hq, agent_factory, "shop-j")
    offline: AgentHandle = await agent_factory(hq, site="shop-j", run=False)
    user = await make_user(hq, "hq_engineer", totp=True)
    env = as_user(tmp_path / "cfg", hq, user.token)

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.cli",
        "job",
        "disk.usage",
        "--site",
        "shop-j",
        "--ttl",
        "1h",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    await wait_until(lambda: job_counts(hq, user), timeout=30, what="job created")
    await wait_until(
        lambda: _ok_and_queued(hq, user), timeout=30, what="online agent done, other queued"
    )
    assert proc.returncode is None  # still following the queued item
    await offline.start()
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    out, err = stdout.decode(), stderr.decode()

    assert proc.returncode == 0, err
    assert "[1/2]" in err and "[2/2]" in err and "done: 2 ok" in err
    assert online.agent_id in out and offline.agent_id in out and out.count("ok") >= 2

    ticket = await open_ticket(hq, "shop-j")
    refused = await fieldlink(
        "job",
        "exec",
        "argv=echo,hi",
        "--agent",
        online.agent_id,
        offline.agent_id,
        "--ticket",
        ticket,
        "--json",
        env=env,
    )
    assert refused.returncode == 1, refused.stderr
    job = json.loads(refused.stdout)
    assert job["params"] == {"argv": ["echo", "hi"]} and job["status"] == "done"
    assert {i["status"] for i in job["items"]} == {"refused"}
    assert all("allow_exec" in i["result"]["reason"] for i in job["items"])


async def _ok_and_queued(hq: HQHandle, user: support.TestUser) -> bool:
    return await job_counts(hq, user) == {"ok": 1, "queued": 1}


def test_help_texts():
    """Every engineer command explains itself."""
    for command in ("login", "logout", "agents", "run", "exec", "job"):
        out = subprocess.run(
            [sys.executable, "-m", "server.cli", command, "--help"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0 and f"usage: fieldlink {command}" in out.stdout
        description = out.stdout.split("\n\n")[1]
        assert len(description) > 60 and not description.startswith("positional")
