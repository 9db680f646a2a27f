"""`allow_shell = false` as an allow-list (issue 17, item 3), end to end with a
real HQ, a real agent, real SSH and real programs: `exec` runs only programs
the machine's `allowed_programs` lists, judged by the real file (path, device
and inode), with optional argument patterns; whatever a program is called or
linked as, an unlisted one is refused at the agent, and a listed program that
runs code through its arguments needs argument patterns."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from server.links import dispatch
from shared import protocol as p
from tests.support import AgentHandle, HQHandle, wait_until
from tests.test_e2e_sessions import agent_cli

LD_SO = next(
    (
        path
        for path in (
            "/lib64/ld-linux-x86-64.so.2",
            "/lib/ld-linux-aarch64.so.1",
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        )
        if os.path.exists(path)
    ),
    None,
)

SH = os.path.realpath("/bin/sh")
ECHO = os.path.realpath(shutil.which("echo") or "/bin/echo")


async def agent_with_policy(hq: HQHandle, agent_factory: Any, text: str) -> AgentHandle:
    """An agent whose policy.toml is `text` (as a site writes it), linked, its
    hello known at HQ."""
    agent: AgentHandle = await agent_factory(hq, run=False)
    agent.dir.policy_file.write_text(text)
    await agent.start()
    registry = hq.hq.parts.links

    def hello_in() -> bool:
        link = registry.get(agent.agent_id)
        return link is not None and "hello_at" in link.info

    await wait_until(hello_in, what="the agent's hello at HQ")
    return agent


async def run_exec(hq: HQHandle, agent: AgentHandle, argv: list[str]) -> tuple[str, p.RunResult]:
    request = p.RunRequest(id=uuid.uuid4().hex, name="exec", params={"argv": argv})
    registry = hq.hq.parts.links
    frames = [f async for f in dispatch.run(registry, agent.agent_id, request, timeout=60)]
    result = frames[-1]
    assert isinstance(result, p.RunResult)
    out = "".join(f.data for f in frames[:-1] if isinstance(f, p.RunOutput))
    return out, result


def escapes(tmp: Path) -> list[tuple[str, list[str], Path]]:
    """The issue's ways to run shell code with `allow_shell = false`: each would
    create its own marker file if it got to run."""
    sh = SH
    bindir = tmp / "bin"
    bindir.mkdir()
    copy = bindir / "lister"  # a copy of the shell under an innocent name
    shutil.copy2(sh, copy)
    hard = bindir / "viewer"  # a hard link to the copy: the same file, another name
    os.link(copy, hard)
    mark = tmp / "marks"
    mark.mkdir()

    def m(name: str) -> Path:
        return mark / name

    cases: list[tuple[str, list[str], Path]] = [
        ("copied shell", [str(copy), "-c", f"touch {m('copy')}"], m("copy")),
        ("hard-linked shell", [str(hard), "-c", f"touch {m('hard')}"], m("hard")),
        (
            "find -exec a copy",
            ["find", "/", "-maxdepth", "0", "-exec", str(copy), "-c", f"touch {m('find')}", ";"],
            m("find"),
        ),
        ("flock -c", ["flock", str(tmp / "lock"), "-c", f"touch {m('flock')}"], m("flock")),
        (
            "make --eval",
            ["make", "-f", "/dev/null", "--eval", f"$(info $(shell touch {m('make')}))"],
            m("make"),
        ),
        (
            "tar --checkpoint-action",
            [
                "tar",
                "-cf",
                "/dev/null",
                "--checkpoint=1",
                f"--checkpoint-action=exec=touch {m('tar')}",
                "/etc/hostname",
            ],
            m("tar"),
        ),
        ("sed e", ["sed", f"1e touch {m('sed')}", "/etc/hostname"], m("sed")),
        ("git -c alias", ["git", "-c", f"alias.z=!touch {m('git')}", "z"], m("git")),
        ("vim -c !", ["vim", "-es", "-c", f"!touch {m('vim')}", "-c", "qa!"], m("vim")),
        ("ex -c !", ["ex", "-s", "-c", f"!touch {m('ex')}", "-c", "qa!"], m("ex")),
        ("socat EXEC", ["socat", "-", f"EXEC:touch {m('socat')}"], m("socat")),
        ("env + copy", ["env", str(copy), "-c", f"touch {m('env')}"], m("env")),
        (
            "timeout + copy",
            ["timeout", "5", str(copy), "-c", f"touch {m('timeout')}"],
            m("timeout"),
        ),
    ]
    if LD_SO is not None:
        cases.append(("ld.so /bin/sh", [LD_SO, "/bin/sh", "-c", f"touch {m('ldso')}"], m("ldso")))
    return [c for c in cases if c[1][0].startswith("/") or shutil.which(c[1][0])]


def toml_list(values: list[str]) -> str:
    """Installed programs only (a name not on PATH, a path that is not there
    would only be warned about), as a TOML array."""
    there = [v for v in values if (v.startswith("/") and os.path.exists(v)) or shutil.which(v)]
    return "[" + ", ".join(f'"{v}"' for v in there) + "]"


async def test_allow_shell_false_runs_only_listed_programs(sqlite_hq, agent_factory, tmp_path):
    """A site that lists the programs the issue names (by name, without argument
    patterns) and ordinary ones: every one of the issue's escapes is refused at
    the agent with the reason and runs nothing (no marker file appears), while a
    listed ordinary program runs, by name or by path."""
    hq = sqlite_hq
    cases = escapes(tmp_path)
    listed = ["echo", "id", "find", "flock", "make", "tar", "sed", "git", "vim", "ex", "socat"]
    listed += ["env", "timeout"] + ([LD_SO] if LD_SO else [])
    agent = await agent_with_policy(
        hq,
        agent_factory,
        "allow_exec = true\nallow_shell = false\nrequire_consent = false\n"
        f"allowed_programs = {toml_list(listed)}\n",
    )
    for label, argv, marker in cases:
        out, result = await run_exec(hq, agent, argv)
        assert result.status == "refused", (label, result)
        assert result.reason and "allow" in result.reason, (label, result.reason)
        assert out == "", (label, out)
        assert not marker.exists(), f"{label} ran: {marker} was made"

    out, result = await run_exec(hq, agent, ["echo", "plain", "words"])
    assert result.status == "ok" and out == "plain words\n", result
    out, result = await run_exec(hq, agent, [shutil.which("id") or "/usr/bin/id", "-u"])
    assert result.status == "ok" and out.strip() == str(os.geteuid()), result
    # not listed at all: refused, naming the key and the docs
    out, result = await run_exec(hq, agent, ["ls", "/"])
    assert result.status == "refused" and out == ""
    assert result.reason is not None and "allowed_programs" in result.reason
    assert "docs/agent-runs.md" in result.reason


async def test_argument_patterns_and_a_replaced_program(sqlite_hq, agent_factory, tmp_path):
    """A program that runs code through its arguments runs when argument patterns
    are given, only in the listed forms (a wildcard word never matches an
    option); a listed program replaced after the policy was loaded is refused
    until the policy is reloaded."""
    hq = sqlite_hq
    tool = tmp_path / "tool"
    shutil.copy2(ECHO, tool)
    logdir = tmp_path / "logs"
    logdir.mkdir()
    (logdir / "a.log").write_text("one\ntwo\n")
    agent = await agent_with_policy(
        hq,
        agent_factory,
        "allow_exec = true\nallow_shell = false\nrequire_consent = false\n"
        "allowed_programs = [\n"
        f'  {{ path = "find", args = ["{logdir} -maxdepth 1 -name *"] }},\n'
        f'  {{ path = "sed", args = ["-n 1p {logdir}/*.log", ["-n", "2p", "{logdir}/a.log"]] }},\n'
        f'  "{tool}",\n'
        "]\n",
    )
    find = ["find", str(logdir), "-maxdepth", "1", "-name"]
    out, result = await run_exec(hq, agent, [*find, "*.log"])
    assert result.status == "ok" and out == f"{logdir}/a.log\n", result
    out, result = await run_exec(hq, agent, ["sed", "-n", "1p", f"{logdir}/a.log"])
    assert result.status == "ok" and out == "one\n", result
    out, result = await run_exec(hq, agent, ["sed", "-n", "2p", f"{logdir}/a.log"])
    assert result.status == "ok" and out == "two\n", result
    for argv in (
        ["find", str(logdir), "-maxdepth", "1", "-name", "-exec"],  # a wildcard is no option
        ["find", str(logdir), "-maxdepth", "1", "-name", "x", "-exec", "id", ";"],
        ["sed", "-n", "1e id", f"{logdir}/a.log"],
        ["sed", "-n", "1p", "/etc/shadow"],
        ["find"],
    ):
        out, result = await run_exec(hq, agent, argv)
        assert result.status == "refused", (argv, result)
        assert result.reason is not None and "argument patterns" in result.reason, result.reason
        assert out == ""

    out, result = await run_exec(hq, agent, [str(tool), "hello"])
    assert result.status == "ok" and out == "hello\n", result
    # replaced (a new file renamed over it, as an upgrade or an attacker does)
    new = tmp_path / "tool.new"
    shutil.copy2(SH, new)
    new.replace(tool)
    out, result = await run_exec(hq, agent, [str(tool), "-c", "echo leaked"])
    assert result.status == "refused" and "leaked" not in out, result
    assert result.reason is not None and "changed since the policy was loaded" in result.reason
    assert agent.daemon is not None and agent.daemon.reload_policy()
    out, result = await run_exec(hq, agent, [str(tool), "-c", "echo again"])
    assert result.status == "ok" and out == "again\n", result


async def test_an_old_policy_refuses_exec_and_says_what_to_add(sqlite_hq, agent_factory):
    """A policy from before the allow-list (`allow_exec = true`, no
    `allowed_programs`) refuses every plain command: the refusal names the key
    and the docs section, the agent logs it once at start, and
    `fieldlink-agent status` and `policy` show it; HQ learns the list is empty
    and refuses an exec session up front."""
    hq = sqlite_hq
    with capture_logs() as logs:
        agent = await agent_with_policy(
            hq, agent_factory, "allow_exec = true\nallow_shell = false\nrequire_consent = false\n"
        )
    warned = [e for e in logs if e["event"] == "exec_needs_allowed_programs"]
    assert len(warned) == 1 and warned[0]["log_level"] == "warning"
    out, result = await run_exec(hq, agent, ["id"])
    assert result.status == "refused" and out == ""
    assert result.reason is not None
    assert "allowed_programs" in result.reason and "empty" in result.reason
    assert "docs/agent-runs.md#plain-commands-the-allow-list" in result.reason

    code, text, err = await agent_cli(agent, "status")
    assert code == 0, err
    assert "allowed_programs" in text and "docs/agent-runs.md" in text, text
    code, text, err = await agent_cli(agent, "policy")
    assert code == 0 and "allowed_programs = []" in text
    assert "allowed_programs" in err and "warning" in err, err

    async with hq.client(hq.admin_token) as api:
        body = await api.ok("GET", f"/api/v1/agents/{agent.agent_id}/catalog")
        assert body["policy"]["allowed_programs"] == []
        made = await api.ok(
            "POST",
            "/api/v1/tickets",
            json={"title": "till slow", "site": "shop-1", "agent_ids": [agent.agent_id]},
        )
        status, err_body = await api.post(
            "/api/v1/sessions",
            json={"agent_id": agent.agent_id, "ticket_id": made["number"], "kind": "exec"},
        )
    assert status == 409, err_body
    assert "allowed_programs" in err_body["error"]["message"]


@pytest.mark.skipif(sys.platform != "linux", reason="Linux programs")
def test_the_escapes_really_run_code_here(tmp_path):
    """The escapes above are real: run directly (as `allow_shell = false`
    used to let them through), each makes its marker."""
    for label, argv, marker in escapes(tmp_path):
        subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        )
        assert marker.exists(), label
