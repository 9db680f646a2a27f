"""`fieldlink demo` (what `make run` runs): HQ plus one real local agent.

Initialises the data directory on first use, starts HQ, enrolls a local
agent through the real enrollment path (`fieldlink-agent enroll`, over
HTTPS with the pinned fingerprint), runs it as a separate process and
prints how to log in. Ctrl-C stops both.

The terminal shows only the banner (last, after start-up) and plain
messages; the logs of HQ and the agent go to `DATA_DIR/demo.log`. It binds
127.0.0.1 unless told otherwise (`--http`/`--ssh`, or `make run BIND=...`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tomllib
from pathlib import Path
from typing import IO, Any

from server.config.datadir import DataDir
from server.config.settings import Settings
from server.control import admin
from server.hq import HQ, PortInUse
from server.ops import enrollment
from shared.durations import parse_duration

LOG_NAME = "demo.log"


def log_path(data_dir: Path) -> Path:
    """Where `fieldlink demo` writes the logs of HQ and its agent."""
    return data_dir / LOG_NAME


def open_log(data_dir: Path) -> IO[str]:
    """The demo's log file, appended to (the data dir is made if new)."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = log_path(data_dir)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    return path.open("a", buffering=1, encoding="utf-8")


def _password_file(datadir: DataDir) -> Path:
    return datadir.path / "demo-admin-password"


def _port_hint(exc: PortInUse) -> str:
    return (
        f"fieldlink demo: {exc.message}.\n"
        "  Choose other ports, e.g.:\n"
        "    make run HTTP_PORT=9443 SSH_PORT=9022\n"
        "    fieldlink demo --http 127.0.0.1:9443 --ssh 127.0.0.1:9022"
    )


async def _enroll_local_agent(hq: HQ, agent_dir: Path, log: IO[str] | None) -> str:
    config = agent_dir / "config.toml"
    if not config.exists():
        async with hq.parts.sessions.begin() as session:
            made = await enrollment.make_enroll_token(
                session,
                site_name="demo",
                uses=1,
                ttl=parse_duration("10m"),
                url=hq.url,
                fingerprint=hq.parts.fingerprint,
                actor=admin.local_actor(),
            )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.cli",
            "enroll",
            made.token,
            "--config-dir",
            str(agent_dir),
            "--force",
            **_output(log),
        )
        if await proc.wait() != 0:
            where = f"see {log.name}" if log is not None else "see above"
            raise RuntimeError(f"enrolling the local agent failed ({where})")
        _allow_exec(agent_dir / "policy.toml")
    return str(tomllib.loads(config.read_text())["agent_id"])


def _output(log: IO[str] | None) -> dict[str, Any]:
    """A child's output goes to the demo's log file (or the terminal, without one)."""
    return {} if log is None else {"stdout": log, "stderr": log}


# What `fieldlink exec` may run on the demo's own agent (its allow-list).
DEMO_PROGRAMS = '["uptime", "df", "free", "id", "uname", "hostname", "date", "echo", "ls"]'


def _allow_exec(policy: Path) -> None:
    """The demo lets HQ run a few plain commands on its own local agent, so a
    new user can try `fieldlink exec`. (Real sites decide this in their policy.)"""
    lines = policy.read_text().splitlines()
    lines = ["allow_exec = true" if line.startswith("allow_exec =") else line for line in lines]
    lines = [
        f"allowed_programs = {DEMO_PROGRAMS}" if line.startswith("allowed_programs =") else line
        for line in lines
    ]
    policy.write_text("\n".join(lines) + "\n")


async def run_demo(settings: Settings, log: IO[str] | None = None) -> int:
    """Run the demo until Ctrl-C; `log` takes the children's output (None: the terminal)."""
    datadir = DataDir(settings.data_dir)
    pw_file = _password_file(datadir)
    if not datadir.is_initialized():
        result = await admin.init(settings)
        fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(result.admin_password + "\n")
    password = (
        pw_file.read_text().strip()
        if pw_file.exists()
        else "(set when this data dir was initialised)"
    )

    hq = HQ(settings)
    try:
        await hq.start()
    except PortInUse as exc:
        with contextlib.suppress(Exception):
            await hq.stop()
        print(_port_hint(exc), file=sys.stderr, flush=True)
        return 1
    agent_dir = datadir.path / "agent"
    agent_proc: asyncio.subprocess.Process | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        agent_id = await _enroll_local_agent(hq, agent_dir, log)
        agent_proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.cli",
            "run",
            "--config-dir",
            str(agent_dir),
            "--interval",
            str(settings.report_interval),
            **_output(log),
        )
        logs_line = f"    logs:             {log.name}\n" if log is not None else ""
        print(
            "\n"
            "  Fieldlink demo is running\n"
            f"    web console:      {hq.url}/\n"
            f"    HQ (HTTPS API):   {hq.url}/api/v1\n"
            f"    TLS fingerprint:  {hq.parts.fingerprint}\n"
            f"    admin user:       admin\n"
            f"    admin password:   {password}\n"
            f"    local agent id:   {agent_id}\n"
            f"    agent config:     {agent_dir}\n"
            f"{logs_line}"
            "\n"
            "  Try:\n"
            f"    TOKEN=$(.venv/bin/fieldlink admin --data-dir {datadir.path} "
            "api-token --user admin)\n"
            f'    curl -sk -H "Authorization: Bearer $TOKEN" {hq.url}/api/v1/agents\n'
            "\n"
            "  Ctrl-C stops HQ and the agent.\n",
            flush=True,
        )
        waiter = asyncio.create_task(agent_proc.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if waiter.done():
            where = f" (see {log.name})" if log is not None else ""
            print(f"the local agent exited with status {waiter.result()}{where}", file=sys.stderr)
            return 1
        waiter.cancel()
        return 0
    finally:
        if agent_proc is not None and agent_proc.returncode is None:
            agent_proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(agent_proc.wait(), timeout=10)
            except TimeoutError:
                agent_proc.kill()
                await agent_proc.wait()
        await hq.stop()
        print("Fieldlink demo stopped.", flush=True)
