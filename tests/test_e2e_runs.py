"""Runs end to end over real SSH on 127.0.0.1: HQ's dispatch opens a
`fieldlink-run` channel on a real agent, which runs real catalog entries on
this machine under its real local policy file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
from structlog.testing import capture_logs

from agent import catalog
from agent.catalog.base import systemd_running, which
from agent.policy import Policy, write_default
from server.links import dispatch
from shared import protocol as p
from tests.support import AgentHandle, HQHandle, machine_policy, wait_until

Frames = tuple[list[p.RunOutput], p.RunResult]


async def start_agent(hq: HQHandle, agent_factory: Any, **policy: Any) -> AgentHandle:
    """Enroll an agent, give it this policy file, start it and wait for its link.
    Runs here come straight from HQ's dispatch, outside any session: unless a
    test says otherwise the machine does not require consent for commands
    (tests/test_agent_hardening.py covers that it does by default)."""
    agent: AgentHandle = await agent_factory(hq, run=False)
    policy.setdefault("require_consent", False)
    write_default(agent.dir.policy_file, machine_policy(**policy))
    await agent.start()
    registry = hq.hq.parts.links
    await wait_until(lambda: registry.get(agent.agent_id), what="agent connected")
    return agent


async def run(
    hq: HQHandle, agent: AgentHandle, name: str, params: dict[str, Any] | None = None, **kw: Any
) -> Frames:
    request = p.RunRequest(id=uuid.uuid4().hex, name=name, params=params or {}, **kw)
    registry = hq.hq.parts.links
    frames = [f async for f in dispatch.run(registry, agent.agent_id, request, timeout=60)]
    result = frames[-1]
    assert isinstance(result, p.RunResult)
    outputs = [f for f in frames[:-1] if isinstance(f, p.RunOutput)]
    return outputs, result


def stdout(outputs: list[p.RunOutput]) -> str:
    return "".join(f.data for f in outputs if f.stream == "stdout")


def group_alive(pgid: int) -> list[psutil.Process]:
    """Processes of group `pgid` that are still running (zombies are dead)."""
    alive = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the catalog, every entry, on this machine --------------------------------


async def test_hello_carries_catalog_and_policy(sqlite_hq, agent_factory):
    """The hello advertises every entry with its JSON schema, and the policy summary."""
    agent = await start_agent(sqlite_hq, agent_factory, allow_exec=True, max_concurrent=3)

    async def advertised() -> dict[str, Any] | None:
        async with sqlite_hq.client(sqlite_hq.admin_token) as api:
            body = await api.ok("GET", f"/api/v1/agents/{agent.agent_id}/catalog")
        return body if body["items"] and body["policy"] else None

    body = await wait_until(advertised, what="hello stored at HQ")
    hello = SimpleNamespace(
        catalog=[SimpleNamespace(**e) for e in body["items"]],
        policy=SimpleNamespace(**body["policy"]),
    )
    names = [e.name for e in hello.catalog]
    assert set(names) == set(catalog.entries())
    assert len(names) == len(set(names))
    by_name = {e.name: e for e in hello.catalog}
    for entry in hello.catalog:
        assert entry.description
        assert entry.timeout > 0 and entry.output_cap > 0
        schema = entry.params_schema
        assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert by_name["disk.usage"].tier == "diagnostic"
    assert by_name["service.restart"].tier == "action"
    assert by_name["exec"].tier == "exec"
    host = by_name["net.ping"].params_schema["properties"]["host"]
    assert host["type"] == "string" and host["pattern"].startswith("^[A-Za-z0-9")
    assert by_name["process.top"].params_schema["properties"]["sort"]["enum"] == ["cpu", "memory"]
    assert hello.policy.allow_exec is True and hello.policy.allow_shell is False
    assert hello.policy.max_concurrent == 3 and hello.policy.file_roots == ["/var/log"]


def _expect_tool(result: p.RunResult, tools: list[str], missing_reason: str) -> bool:
    """Where none of `tools` is installed the entry must fail with a clear reason;
    returns True if a tool is there (and the caller checks the real answer)."""
    if any(which(t) for t in tools):
        return True
    assert result.status == "failed", result
    assert missing_reason in (result.reason or ""), result.reason
    return False


async def test_every_entry_runs_on_this_machine(sqlite_hq, agent_factory, tmp_path):
    """Each catalog entry runs here and answers with sane content, or, where this
    machine lacks what it needs, with a clear reason."""
    logs = tmp_path / "logs"
    (logs / "app").mkdir(parents=True)
    (logs / "app" / "big.log").write_bytes(b"x" * 200_000)
    (logs / "small.log").write_text("".join(f"line {i}\n" for i in range(1, 101)))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    old = scratch / "old.tmp"
    old.write_bytes(b"o" * 5000)
    past = time.time() - 3 * 86400
    os.utime(old, (past, past))
    (scratch / "new.tmp").write_bytes(b"n" * 10)

    agent = await start_agent(
        sqlite_hq,
        agent_factory,
        allow_exec=True,
        file_roots=[str(logs)],
        cleanup_dirs=[str(scratch)],
    )
    ssh_port = sqlite_hq.hq.parts.ssh_port
    victim = await asyncio.create_subprocess_exec("sleep", "60")
    no_systemd = "systemd is not running on this machine"

    def summary(out: str, r: p.RunResult) -> None:
        assert r.status == "ok"
        assert r.data["hostname"] == socket.gethostname()
        assert r.data["memory_total"] > 0 and r.data["process_count"] > 0
        assert r.data["uptime_seconds"] >= 0
        assert socket.gethostname() in out and "memory" in out

    def top(out: str, r: p.RunResult) -> None:
        assert r.status == "ok"
        cols, rows = r.data["columns"], r.data["rows"]
        assert cols[:3] == ["pid", "user", "name"] and len(rows) == 5
        rss = [row[cols.index("rss")] for row in rows]
        assert rss == sorted(rss, reverse=True) and rss[0] > 0
        assert "pid" in out.splitlines()[0]

    def sensors(out: str, r: p.RunResult) -> None:
        assert r.status == "ok"
        assert set(r.data) == {"temperatures", "fans", "battery"}
        assert r.data["temperatures"]["columns"][0] == "sensor"
        assert "temperatures:" in out

    def time_sync(out: str, r: p.RunResult) -> None:
        assert r.status == "ok"
        clock = datetime.fromisoformat(r.data["clock_utc"])
        assert abs((datetime.now(UTC) - clock).total_seconds()) < 60
        if r.data["source"] is None:
            assert "offset unknown" in r.data["note"] and r.data["offset_seconds"] is None
        else:
            assert isinstance(r.data["synchronized"], bool)
        assert "clock (UTC)" in out

    def updates(out: str, r: p.RunResult) -> None:
        if not _expect_tool(r, ["apt", "dnf"], "neither is installed"):
            return
        assert r.status == "ok", r.reason
        assert r.data["manager"] in ("apt", "dnf")
        assert r.data["count"] == len(r.data["rows"])
        assert all(len(row) == len(r.data["columns"]) for row in r.data["rows"])
        assert "package(s) can be upgraded" in out

    def disk_usage(out: str, r: p.RunResult) -> None:
        assert r.status == "ok"
        root = [row for row in r.data["rows"] if row[0] == "/"]
        assert root and root[0][3] > 0 and 0 <= root[0][6] <= 100
        assert "mount" in out

    def largest(out: str, r: p.RunResult) -> None:
        assert r.status == "ok"
        files = r.data["files"]["rows"]
        assert files[0][0] == str(logs / "app" / "big.log") and files[0][1] >= 200_000
        assert r.data["dirs"]["rows"][0][0] == str(logs / "app")
        assert not r.data["incomplete"]
        assert "big.log" in out

    def interfaces(out: str, r: p.RunResult) -> None:
        assert r.status == "ok"
        lo = [row for row in r.data["rows"] if row[0] == "lo"]
        assert lo and "127.0.0.1/8" in lo[0][5]
        assert "lo" in out

    def connections(out: str, r: p.RunResult) -> None:
        assert r.status == "ok"
        ours = [row for row in r.data["rows"] if row[1] and row[1].endswith(f":{ssh_port}")]
        assert ours and ours[0][3] == "LISTEN" and ours[0][4] == os.getpid()
        assert {row[3] for row in r.data["rows"]} == {"LISTEN"}

    def ping(out: str, r: p.RunResult) -> None:
        assert r.status == "ok", r.reason
        assert r.data["sent"] == 2 and r.data["received"] == 2
        assert r.data["rtt_ms"]["min"] >= 0
        if which("ping"):
            assert r.data["method"] == "icmp"
        else:
            assert r.data["method"] == "tcp" and r.data["port"] == ssh_port
            assert "ping is not installed on this machine" in out

    def dns_a(out: str, r: p.RunResult) -> None:
        assert r.status == "ok", r.reason
        assert "127.0.0.1" in r.data["answers"] and r.data["resolver"] == "system"
        assert "localhost A 127.0.0.1" in out

    def tcp_check(out: str, r: p.RunResult) -> None:
        assert r.status == "ok", r.reason
        assert r.data["connected"] is True and r.data["address"] == "127.0.0.1"
        assert "connected" in out

    def traceroute(out: str, r: p.RunResult) -> None:
        if not _expect_tool(r, ["traceroute", "tracepath"], "neither is installed"):
            return
        assert r.status == "ok", r.reason
        assert r.data["rows"] and r.data["rows"][-1][1] == "127.0.0.1"

    def service_status(out: str, r: p.RunResult) -> None:
        if not systemd_running():
            assert r.status == "failed" and no_systemd in r.reason
            return
        assert r.status == "ok", r.reason
        assert r.data["active_state"] in ("active", "inactive", "failed", "activating")

    def service_failed(out: str, r: p.RunResult) -> None:
        if not systemd_running():
            assert r.status == "failed" and no_systemd in r.reason
            return
        assert r.status == "ok", r.reason
        assert r.data["columns"][0] == "unit"

    def log_tail(out: str, r: p.RunResult) -> None:
        assert r.status == "ok", r.reason
        assert out == "line 98\nline 99\nline 100\n"
        assert r.data["source"] == "file" and r.data["lines"] == 3

    def restart(out: str, r: p.RunResult) -> None:
        assert r.status == "failed"
        if not systemd_running():
            assert no_systemd in r.reason
        else:
            assert "fieldlink-no-such-unit.service" in r.reason

    def kill(out: str, r: p.RunResult) -> None:
        assert r.status == "ok", r.reason
        assert r.data == {
            "pid": victim.pid,
            "name": "sleep",
            "user": psutil.Process().username(),
            "signal": "TERM",
            "exited": True,
        }

    def cleanup(out: str, r: p.RunResult) -> None:
        assert r.status == "ok", r.reason
        assert r.data["dry_run"] is True and r.data["files"] == 1
        assert r.data["bytes"] >= 5000 and r.data["largest"]["rows"][0][0] == str(old)
        assert old.exists(), "a dry run deleted a file"
        assert "dry run: would free" in out

    def flush_dns(out: str, r: p.RunResult) -> None:
        tools = ["resolvectl", "systemd-resolve", "nscd"]
        if _expect_tool(r, tools, "no local DNS cache to flush"):
            assert r.status in ("ok", "failed") and r.data["tool"] in tools

    def execute(out: str, r: p.RunResult) -> None:
        assert r.status == "ok" and r.exit_code == 0
        assert out == "hello from exec\n"

    cases: dict[str, tuple[dict[str, Any], Any]] = {
        "system.summary": ({}, summary),
        "process.top": ({"sort": "memory", "n": 5}, top),
        "hardware.sensors": ({}, sensors),
        "time.sync": ({}, time_sync),
        "os.updates": ({}, updates),
        "disk.usage": ({}, disk_usage),
        "disk.largest": ({"path": str(logs), "n": 5}, largest),
        "net.interfaces": ({}, interfaces),
        "net.connections": ({"state": "LISTEN", "kind": "tcp"}, connections),
        "net.ping": ({"host": "127.0.0.1", "count": 2, "port": ssh_port}, ping),
        "net.dns": ({"name": "localhost", "type": "A"}, dns_a),
        "net.tcp_check": ({"host": "127.0.0.1", "port": ssh_port}, tcp_check),
        "net.traceroute": ({"host": "127.0.0.1", "max_hops": 3}, traceroute),
        "service.status": ({"unit": "ssh.service"}, service_status),
        "service.failed": ({}, service_failed),
        "log.tail": ({"path": str(logs / "small.log"), "lines": 3}, log_tail),
        "service.restart": ({"unit": "fieldlink-no-such-unit.service"}, restart),
        "process.kill": ({"pid": victim.pid}, kill),
        "disk.cleanup": ({"dir": str(scratch)}, cleanup),
        "net.flush_dns": ({}, flush_dns),
        "exec": ({"argv": ["echo", "hello from exec"]}, execute),
    }
    assert set(cases) == set(catalog.entries()), "every catalog entry needs a case here"
    failures: list[str] = []
    try:
        for name, (params, check) in cases.items():
            outputs, result = await run(sqlite_hq, agent, name, params)
            assert result.finished_at >= result.started_at
            try:
                check(stdout(outputs), result)
            except AssertionError as exc:
                failures.append(f"{name}: {exc!r}\n  result: {result!r}")
    finally:
        if victim.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                victim.kill()
        code = await asyncio.wait_for(victim.wait(), 5)
    assert not failures, "\n".join(failures)
    assert code == -15, "process.kill did not end its process with SIGTERM"


async def test_more_answers_of_the_network_entries(sqlite_hq, agent_factory):
    """A closed port fails with the reason; PTR resolves locally; other record
    types need dig/host and say so where they are missing."""
    agent = await start_agent(sqlite_hq, agent_factory)
    port = closed_port()
    _, r = await run(sqlite_hq, agent, "net.tcp_check", {"host": "127.0.0.1", "port": port})
    assert r.status == "failed" and r.data["connected"] is False
    assert f"could not connect to 127.0.0.1 port {port}" in r.reason
    assert "refused" in r.reason.lower()

    _, r = await run(sqlite_hq, agent, "net.dns", {"name": "127.0.0.1", "type": "PTR"})
    assert r.status == "ok" and r.data["answers"], r

    _, r = await run(sqlite_hq, agent, "net.dns", {"name": "example.com", "type": "MX"})
    if not (which("dig") or which("host")):
        assert r.status == "failed"
        assert "needs dig or host" in r.reason and "neither is installed" in r.reason

    _, r = await run(sqlite_hq, agent, "net.dns", {"name": "no-such-name.invalid", "type": "A"})
    assert r.status == "failed" and "did not resolve" in r.reason


# --- refusals: injection, paths, policy ---------------------------------------

INJECTIONS = [
    ("net.ping", {"host": "127.0.0.1; rm -rf /"}, "host"),
    ("net.ping", {"host": "$(reboot)"}, "host"),
    ("net.ping", {"host": "`reboot`"}, "host"),
    ("net.ping", {"host": "-f"}, "host"),
    ("net.ping", {"host": "--help"}, "host"),
    ("net.ping", {"host": "localhost", "count": "4; id"}, "count"),
    ("net.traceroute", {"host": "-F 127.0.0.1"}, "host"),
    ("net.tcp_check", {"host": "a|b", "port": 22}, "host"),
    ("net.dns", {"name": "x.example; id", "type": "A"}, "name"),
    ("net.dns", {"name": "-x", "type": "A"}, "name"),
    ("net.dns", {"name": "example.com", "type": "ANY; id"}, "type"),
    ("service.status", {"unit": "ssh; reboot"}, "unit"),
    ("service.status", {"unit": "--all"}, "unit"),
    ("service.status", {"unit": "$(id).service"}, "unit"),
    ("service.restart", {"unit": "-H evil"}, "unit"),
    ("log.tail", {"unit": "`id`"}, "unit"),
    ("log.tail", {"path": "relative/path"}, "path"),
    ("log.tail", {"path": "/var/log/syslog", "pattern": "(a+)+$"}, "pattern"),
    ("log.tail", {"path": "/var/log/syslog", "pattern": "x" * 201}, "pattern"),
    ("log.tail", {"path": "/var/log/syslog", "unit": "ssh"}, "exactly one of unit or path"),
    ("process.top", {"sort": "cpu; id"}, "sort"),
    ("process.kill", {"pid": "1; id"}, "pid"),
    ("process.kill", {"pid": 123, "signal": "SEGV"}, "signal"),
    ("disk.usage", {"path": "/"}, "path: not a parameter of this entry"),
    ("exec", {"argv": ["id"], "command": "id"}, "exactly one of argv or command"),
]


async def test_injection_attempts_are_refused(sqlite_hq, agent_factory):
    """Shell metacharacters, option-looking values and wrong types are refused
    before anything runs, with a reason naming the field."""
    agent = await start_agent(sqlite_hq, agent_factory, allow_exec=True)
    for name, params, field in INJECTIONS:
        outputs, result = await run(sqlite_hq, agent, name, params)
        assert result.status == "refused", (name, params, result)
        assert result.reason.startswith("invalid parameters: "), result.reason
        assert field in result.reason, (name, params, result.reason)
        assert outputs == []


async def test_paths_outside_the_file_roots_are_refused(sqlite_hq, agent_factory, tmp_path):
    """`..`, absolute paths elsewhere and symlinks leading out of a root are
    refused for both log.tail and disk.largest; a symlink inside is fine."""
    root = tmp_path / "logs"
    root.mkdir()
    (root / "ok.log").write_text("fine\n")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("do not read\n")
    (root / "escape.log").symlink_to(secret / "key")
    (root / "escape-dir").symlink_to(secret)
    (root / "inside.log").symlink_to(root / "ok.log")
    agent = await start_agent(sqlite_hq, agent_factory, file_roots=[str(root)])

    for path in (
        f"{root}/../secret/key",
        str(root / "escape.log"),
        str(root / "escape-dir" / "key"),
        "/etc/shadow",
        "/",
    ):
        outputs, r = await run(sqlite_hq, agent, "log.tail", {"path": path})
        assert r.status == "refused", (path, r)
        assert "outside this machine's allowed file roots" in r.reason and str(root) in r.reason
        assert "do not read" not in stdout(outputs)

    for path in (str(root / "escape-dir"), str(tmp_path), f"{root}/.."):
        _, r = await run(sqlite_hq, agent, "disk.largest", {"path": path})
        assert r.status == "refused", (path, r)
        assert "outside this machine's allowed file roots" in r.reason

    _, r = await run(sqlite_hq, agent, "disk.largest", {})  # defaults to the first root
    assert r.status == "ok" and r.data["path"] == str(root)
    assert r.data["files"]["rows"][0][0] == str(root / "ok.log")  # symlinks not followed

    _, r = await run(sqlite_hq, agent, "log.tail", {"path": str(root / "escape.log")})
    assert f"which resolves to {secret / 'key'}" in r.reason
    outputs, r = await run(sqlite_hq, agent, "log.tail", {"path": str(root / "inside.log")})
    assert r.status == "ok" and stdout(outputs) == "fine\n"


async def test_policy_refusals_have_clear_reasons(sqlite_hq, agent_factory):
    """Exec with allow_exec = false, actions with allow_actions = false and shell
    strings with allow_shell = false are refused by the agent, saying which key."""
    agent = await start_agent(sqlite_hq, agent_factory, allow_actions=False)
    outputs, r = await run(sqlite_hq, agent, "exec", {"argv": ["id"]}, ticket_id="FL-1")
    assert r.status == "refused" and outputs == []
    assert r.reason == ("this machine's policy does not allow plain commands (allow_exec = false)")
    _, r = await run(sqlite_hq, agent, "process.kill", {"pid": 999999})
    assert r.status == "refused"
    assert r.reason == "this machine's policy does not allow actions (allow_actions = false)"
    _, r = await run(sqlite_hq, agent, "disk.usage")
    assert r.status == "ok"  # diagnostics are always allowed

    shellless = await start_agent(sqlite_hq, agent_factory, allow_exec=True)
    _, r = await run(sqlite_hq, shellless, "exec", {"command": "id; true"})
    assert r.status == "refused" and "allow_shell = false" in r.reason
    outputs, r = await run(sqlite_hq, shellless, "exec", {"argv": ["echo", "$(id)", ";", "`id`"]})
    assert r.status == "ok" and stdout(outputs) == "$(id) ; `id`\n"  # no shell saw them


async def test_unknown_entry_and_bad_requests(sqlite_hq, agent_factory):
    """An unknown name is refused; so is a request the agent cannot parse."""
    agent = await start_agent(sqlite_hq, agent_factory)
    _, r = await run(sqlite_hq, agent, "disk.format", {})
    assert r.status == "refused" and "no catalog entry named 'disk.format'" in r.reason

    link = sqlite_hq.hq.parts.links.get(agent.agent_id)
    writer, reader, _ = await link.conn.open_session(subsystem=p.RUN_SUBSYSTEM, encoding=None)
    writer.write(b'{"type": "run", "id": "x", "name": "disk.usage", "oops": 1}\n')
    data = await asyncio.wait_for(reader.read(65536), 10)
    reply = p.decode_run_reply(data.strip())
    assert isinstance(reply, p.RunResult) and reply.status == "refused"
    assert "bad run request" in reply.reason and "oops" in reply.reason
    writer.close()


async def test_action_process_kill_refuses_init_and_the_agent(sqlite_hq, agent_factory):
    """process.kill never signals PID 1 or the agent itself."""
    agent = await start_agent(sqlite_hq, agent_factory)
    _, r = await run(sqlite_hq, agent, "process.kill", {"pid": 1, "signal": "KILL"})
    assert r.status == "refused" and "pid 1 is init" in r.reason
    _, r = await run(sqlite_hq, agent, "process.kill", {"pid": os.getpid()})
    assert r.status == "refused" and "the Fieldlink agent itself" in r.reason
    _, r = await run(sqlite_hq, agent, "process.kill", {"pid": 4_000_000})
    assert r.status == "failed" and "no process with pid 4000000" in r.reason


async def test_disk_cleanup_deletes_only_old_regular_files(sqlite_hq, agent_factory, tmp_path):
    """A dry run deletes nothing; a real run deletes old files only, never
    follows or removes symlinks, and other directories are refused."""
    scratch = tmp_path / "scratch"
    (scratch / "sub").mkdir(parents=True)
    outside = tmp_path / "precious"
    outside.write_text("keep me")
    past = time.time() - 2 * 86400
    old_files = [scratch / "a.tmp", scratch / "sub" / "b.tmp"]
    for f in old_files:
        f.write_bytes(b"z" * 3000)
        os.utime(f, (past, past))
    os.utime(outside, (past, past))
    fresh = scratch / "fresh.tmp"
    fresh.write_text("new")
    link = scratch / "link.tmp"
    link.symlink_to(outside)
    os.utime(link, (past, past), follow_symlinks=False)
    agent = await start_agent(
        sqlite_hq, agent_factory, cleanup_dirs=[str(scratch)], cleanup_min_age_hours=24.0
    )

    _, r = await run(sqlite_hq, agent, "disk.cleanup", {"dir": str(scratch)})
    assert r.status == "ok" and r.data["dry_run"] is True
    assert r.data["files"] == 2 and r.data["bytes"] >= 6000
    assert all(f.exists() for f in old_files)

    _, r = await run(sqlite_hq, agent, "disk.cleanup", {"dir": str(scratch), "min_age_hours": 1.0})
    assert r.status == "refused" and "below this machine's cleanup_min_age_hours (24)" in r.reason
    _, r = await run(sqlite_hq, agent, "disk.cleanup", {"dir": str(tmp_path)})
    assert r.status == "refused" and "not one of this machine's cleanup_dirs" in r.reason

    outputs, r = await run(
        sqlite_hq, agent, "disk.cleanup", {"dir": str(scratch), "dry_run": False}
    )
    assert r.status == "ok" and r.data["files"] == 2 and r.data["errors"] == 0
    assert "freed" in stdout(outputs)
    assert not any(f.exists() for f in old_files)
    assert fresh.exists() and link.is_symlink() and outside.read_text() == "keep me"


async def test_log_tail_pattern_and_journal(sqlite_hq, agent_factory, tmp_path):
    """log.tail filters with a regex in Python and reads a unit's journal
    (or says why it has nothing)."""
    root = tmp_path / "logs"
    root.mkdir()
    lines = [f"{i} {'ERROR' if i % 10 == 0 else 'info'} event {i}" for i in range(1, 301)]
    (root / "app.log").write_text("\n".join(lines) + "\n")
    agent = await start_agent(sqlite_hq, agent_factory, file_roots=[str(root)])
    params = {"path": str(root / "app.log"), "lines": 2, "pattern": r"ERROR event \d+0$"}
    outputs, r = await run(sqlite_hq, agent, "log.tail", params)
    assert r.status == "ok"
    assert stdout(outputs) == "290 ERROR event 290\n300 ERROR event 300\n"
    assert r.data["lines"] == 2 and r.data["scanned_lines"] == 300

    outputs, r = await run(sqlite_hq, agent, "log.tail", {"unit": "ssh.service", "lines": 5})
    if which("journalctl") is None:
        assert r.status == "failed" and "journalctl is not installed" in r.reason
    else:
        assert r.status == "ok" and r.data["source"] == "journal"
        if not systemd_running() and r.data["lines"] == 0:
            assert "systemd is not running on this machine" in stdout(outputs)


# --- bounds: timeout, cap, cancellation, concurrency --------------------------


async def _first_line(frames: Any) -> str:
    buf = ""
    async for frame in frames:
        assert isinstance(frame, p.RunOutput), frame
        buf += frame.data
        if "\n" in buf:
            return buf.split("\n", 1)[0]
    raise AssertionError("no output line")


async def test_timeout_kills_the_whole_process_group(sqlite_hq, agent_factory):
    """A run past its timeout ends as `timeout`, and every process it started
    (including a background child of the shell) is gone."""
    agent = await start_agent(sqlite_hq, agent_factory, allow_exec=True, allow_shell=True)
    outputs, r = await run(
        sqlite_hq, agent, "exec", {"command": "echo $$; sleep 300 & sleep 300"}, timeout=1.0
    )
    assert r.status == "timeout"
    assert "time limit of 1 s" in r.reason
    pgid = int(stdout(outputs).split()[0])
    await wait_until(lambda: not group_alive(pgid), timeout=5, what="group gone")


async def test_policy_runtime_limit_bounds_a_longer_request(sqlite_hq, agent_factory):
    """The policy's max_runtime_seconds wins over a longer request timeout."""
    agent = await start_agent(sqlite_hq, agent_factory, allow_exec=True, max_runtime_seconds=1.0)
    _, r = await run(sqlite_hq, agent, "exec", {"argv": ["sleep", "30"]}, timeout=100.0)
    assert r.status == "timeout" and "time limit of 1 s" in r.reason


async def test_output_over_the_cap_is_truncated_and_flagged(sqlite_hq, agent_factory):
    """Output beyond max_output_bytes is cut, flagged, and the producer killed."""
    agent = await start_agent(sqlite_hq, agent_factory, allow_exec=True, max_output_bytes=4096)
    outputs, r = await run(sqlite_hq, agent, "exec", {"argv": ["yes", "fieldlink"]})
    assert r.truncated is True
    assert r.status == "failed" and "cap of 4096 bytes" in r.reason
    text = stdout(outputs)
    assert len(text.encode()) == 4096 and text.startswith("fieldlink\nfieldlink\n")

    def yes_running() -> list[psutil.Process]:
        return [
            proc
            for proc in psutil.process_iter(["cmdline", "status"])
            if proc.info["cmdline"] == ["yes", "fieldlink"]
            and proc.info["status"] != psutil.STATUS_ZOMBIE
        ]

    await wait_until(lambda: not yes_running(), timeout=5, what="yes killed")


async def test_closing_the_channel_early_kills_the_run(sqlite_hq, agent_factory):
    """When HQ closes the channel mid-run the agent kills the run's processes."""
    agent = await start_agent(sqlite_hq, agent_factory, allow_exec=True, allow_shell=True)
    request = p.RunRequest(
        id="early", name="exec", params={"command": "echo $$; sleep 300 & sleep 300"}
    )
    registry = sqlite_hq.hq.parts.links
    with capture_logs() as logs:
        async with contextlib.aclosing(
            dispatch.run(registry, agent.agent_id, request, timeout=60)
        ) as frames:
            pgid = int(await _first_line(frames))
            assert group_alive(pgid)
        await wait_until(lambda: not group_alive(pgid), timeout=5, what="group killed")
        await wait_until(
            lambda: any(
                e["event"] == "run_finished" and e["status"] == "interrupted" for e in logs
            ),
            what="run logged as interrupted",
        )


async def test_concurrency_limit_refuses_when_full(sqlite_hq, agent_factory):
    """Beyond max_concurrent a run waits briefly, then is refused with the reason."""
    agent = await start_agent(sqlite_hq, agent_factory, allow_exec=True, max_concurrent=1)
    agent.daemon.runs.queue_wait = 0.3
    registry = sqlite_hq.hq.parts.links
    long = p.RunRequest(id="long", name="exec", params={"argv": ["sleep", "30"]})
    async with contextlib.aclosing(
        dispatch.run(registry, agent.agent_id, long, timeout=60)
    ) as frames:
        first = asyncio.ensure_future(frames.__anext__())
        await wait_until(lambda: agent.daemon.runs.slots.active == 1, what="first run going")
        _, r = await run(sqlite_hq, agent, "disk.usage")
        assert r.status == "refused"
        assert "max_concurrent = 1" in r.reason
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
    await wait_until(lambda: agent.daemon.runs.slots.active == 0, what="slot freed")
    _, r = await run(sqlite_hq, agent, "disk.usage")
    assert r.status == "ok"


# --- policy reload, logs ------------------------------------------------------


async def test_policy_reload_applies_and_a_broken_file_keeps_the_old(sqlite_hq, agent_factory):
    """Reloading a good policy applies at once and re-announces it to HQ; a broken
    file is logged and the previous policy stays."""
    agent = await start_agent(sqlite_hq, agent_factory)
    link = sqlite_hq.hq.parts.links.get(agent.agent_id)
    await wait_until(lambda: link.info.get("hello_at"), what="hello")
    _, r = await run(sqlite_hq, agent, "exec", {"argv": ["true"]})
    assert r.status == "refused"

    write_default(agent.dir.policy_file, machine_policy(allow_exec=True, require_consent=False))
    assert agent.daemon.reload_policy() is True
    _, r = await run(sqlite_hq, agent, "exec", {"argv": ["true"]})
    assert r.status == "ok"

    async def announced() -> bool:
        async with sqlite_hq.client(sqlite_hq.admin_token) as api:
            body = await api.ok("GET", f"/api/v1/agents/{agent.agent_id}/catalog")
        return bool(body["policy"]["allow_exec"])

    await wait_until(announced, what="new hello at HQ")

    agent.dir.policy_file.write_text("allow_exec = false\nallow_exe = true\n")
    with capture_logs() as logs:
        assert agent.daemon.reload_policy() is False
    failed = [e for e in logs if e["event"] == "policy_reload_failed"]
    assert failed and "unknown key 'allow_exe'" in failed[0]["error"]
    assert failed[0]["log_level"] == "error"
    _, r = await run(sqlite_hq, agent, "exec", {"argv": ["true"]})
    assert r.status == "ok"  # still the last good policy


async def test_runs_are_logged_without_output(sqlite_hq, agent_factory):
    """Each run logs run_started and run_finished with its id, ticket and
    engineer, and never its output."""
    agent = await start_agent(sqlite_hq, agent_factory, allow_exec=True)
    with capture_logs() as logs:
        _, r = await run(
            sqlite_hq,
            agent,
            "exec",
            {"argv": ["echo", "output-must-not-be-logged"]},
            ticket_id="FL-7",
            engineer="alice",
        )
        assert r.status == "ok"
    events = {e["event"]: e for e in logs if e["event"] in ("run_started", "run_finished")}
    assert set(events) == {"run_started", "run_finished"}
    for event in events.values():
        assert event["name"] == "exec" and event["ticket_id"] == "FL-7"
        assert event["engineer"] == "alice" and event["run_id"]
    assert events["run_finished"]["status"] == "ok"
    assert "output-must-not-be-logged" not in repr(logs)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_exec_runs_as_the_policy_shell_user(sqlite_hq, agent_factory):
    """Plain commands run as the policy's shell_user, not as the agent."""
    agent = await start_agent(sqlite_hq, agent_factory, allow_exec=True, shell_user="nobody")
    outputs, r = await run(sqlite_hq, agent, "exec", {"argv": ["id", "-un"]})
    assert r.status == "ok", r.reason
    assert stdout(outputs) == "nobody\n" and r.data["user"] == "nobody"


async def test_enroll_writes_a_private_default_policy(sqlite_hq, agent_factory):
    """Enrollment leaves a default policy.toml, readable by its owner only."""
    agent = await agent_factory(sqlite_hq, run=False)
    mode = agent.dir.policy_file.stat().st_mode & 0o777
    assert mode == 0o600
    from agent.policy import load_policy

    assert load_policy(agent.dir.policy_file) == Policy()


def test_catalog_and_policy_keep_the_agent_light():
    """The catalog, policy and run service add little to the agent's memory."""
    code = (
        "import gc, psutil, agent.link, agent.sampler, agent.spool;"
        "gc.collect(); before = psutil.Process().memory_info().rss;"
        "import agent.daemon, agent.catalog as c; c.advertise(); gc.collect();"
        "print(psutil.Process().memory_info().rss - before)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) < 8 * 1024 * 1024, f"{int(out.stdout) / 1048576:.1f} MiB added"


async def test_sighup_reloads_the_policy(sqlite_hq, agent_factory):
    """A daemon run with signal handlers reloads policy.toml on SIGHUP."""
    import signal

    from agent.daemon import Daemon

    handle = await agent_factory(sqlite_hq, run=False)
    daemon = Daemon(handle.dir, interval=0.2)
    task = asyncio.create_task(daemon.run(install_signals=True))
    try:
        await wait_until(lambda: daemon.link.connected.is_set(), what="connected")
        assert daemon.policy.allow_exec is False
        write_default(handle.dir.policy_file, machine_policy(allow_exec=True))
        with capture_logs() as logs:
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_until(lambda: daemon.policy.allow_exec, timeout=5, what="reloaded")
        assert any(e["event"] == "policy_reloaded" for e in logs)
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 15)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
