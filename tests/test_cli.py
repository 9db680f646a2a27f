"""The command lines written in the issues are a contract: run them exactly
as written, as separate processes, and check what they print."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import free_port, wait_until


def run(
    *argv: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    module = "server.cli" if argv[0] == "fieldlink" else "agent.cli"
    proc = subprocess.run(
        [sys.executable, "-m", module, *argv[1:]],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )
    if check:
        assert proc.returncode == 0, f"{argv}: {proc.stderr}"
    return proc


# dozens of CLI processes, each a Python start-up: on a loaded machine (a
# parallel run) far past the default 120 s budget
@pytest.mark.timeout(300)
async def test_hq_and_agent_command_lines(tmp_path: Path):
    """init, serve, admin enroll-token/api-token/fingerprint/user add/agent revoke/audit
    verify, and fieldlink-agent enroll/status, exactly as the issues write them."""
    data = str(tmp_path / "hq")
    init = run("fieldlink", "init", "--data-dir", data)
    password = re.search(r"admin password: (\S+)", init.stdout)
    assert password and len(password.group(1)) >= 16
    again = run("fieldlink", "init", "--data-dir", data, check=False)
    assert again.returncode == 1 and "already initialised" in again.stderr

    fp = run("fieldlink", "admin", "--data-dir", data, "fingerprint").stdout
    assert re.fullmatch(r"[0-9a-f]{64}\n", fp)

    http, ssh = free_port(), free_port()
    serve = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.cli",
        "serve",
        "--data-dir",
        data,
        "--http",
        f"127.0.0.1:{http}",
        "--ssh",
        f"127.0.0.1:{ssh}",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_until(
            lambda: (Path(data) / "run" / "serve.json").exists(), timeout=30, what="serve up"
        )
        token = run(
            "fieldlink",
            "admin",
            "--data-dir",
            data,
            "enroll-token",
            "--site",
            "shop-9",
            "--uses",
            "2",
            "--ttl",
            "1h",
        ).stdout
        assert token.count("\n") == 1 and token.startswith("fl1.")
        api_token = run(
            "fieldlink", "admin", "--data-dir", data, "api-token", "--user", "admin", "--ttl", "30d"
        ).stdout
        assert re.fullmatch(r"flk_\S+\n", api_token)

        cfg = str(tmp_path / "agent")
        enrolled = await asyncio.to_thread(
            run, "fieldlink-agent", "enroll", token.strip(), "--config-dir", cfg
        )
        agent_id = re.search(r"agent (ag_\w+)", enrolled.stdout).group(1)
        assert (Path(cfg) / "config.toml").stat().st_mode & 0o777 == 0o600
        assert (Path(cfg) / "agent_key").stat().st_mode & 0o777 == 0o600
        status = run("fieldlink-agent", "status", "--config-dir", cfg).stdout
        assert agent_id in status and "shop-9" in status

        added = run(
            "fieldlink",
            "admin",
            "--data-dir",
            data,
            "user",
            "add",
            "ann",
            "--role",
            "site_tech",
            "--site",
            "shop-9",
            "--password-stdin",
            stdin="a-long-password-1\n",
        )
        assert added.stdout == ""
        generated = run(
            "fieldlink", "admin", "--data-dir", data, "user", "add", "bob", "--role", "auditor"
        ).stdout
        assert len(generated.strip()) >= 16
        bad = run(
            "fieldlink",
            "admin",
            "--data-dir",
            data,
            "user",
            "add",
            "cy",
            "--role",
            "wizard",
            check=False,
        )
        assert bad.returncode == 1 and "role" in bad.stderr
        # a site named here for the first time is created, as by enroll-token
        run(
            "fieldlink",
            "admin",
            "--data-dir",
            data,
            "user",
            "add",
            "dee",
            "--role",
            "site_staff",
            "--site",
            "shop-new",
            "--password-stdin",
            stdin="a-long-password-2\n",
        )

        revoked = run("fieldlink", "admin", "--data-dir", data, "agent", "revoke", agent_id)
        assert "revoked" in revoked.stderr
        missing = run(
            "fieldlink", "admin", "--data-dir", data, "agent", "revoke", "ag_nope", check=False
        )
        assert missing.returncode == 1

        verified = run("fieldlink", "admin", "--data-dir", data, "audit", "verify")
        assert "intact" in verified.stdout
    finally:
        serve.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(serve.wait(), timeout=20) == 0


def test_clear_errors_and_help():
    """Bad arguments and missing data dirs give a message and a non-zero exit."""
    out = run("fieldlink", "admin", "--data-dir", "/nonexistent/x", "fingerprint", check=False)
    assert out.returncode == 1 and "fieldlink init" in out.stderr
    out = run("fieldlink-agent", "status", "--config-dir", "/nonexistent/x", check=False)
    assert out.returncode == 1 and "enroll first" in out.stderr
    out = run("fieldlink-agent", "enroll", "garbage", "--config-dir", "/tmp/nowhere-x", check=False)
    assert out.returncode == 1 and "not a Fieldlink enrollment token" in out.stderr
    out = run("fieldlink", "serve", "--data-dir", "/tmp", "--http", "nonsense", check=False)
    assert out.returncode == 2
    for cmd in (("fieldlink", "--help"), ("fieldlink-agent", "--help")):
        assert "usage" in run(*cmd).stdout
