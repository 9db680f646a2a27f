"""`fieldlink demo` (what `make run` runs): HQ plus one real local agent.

Initialises the data directory on first use, starts HQ, enrolls a local
agent through the real enrollment path (`fieldlink-agent enroll`, over
HTTPS with the pinned fingerprint), runs it as a separate process and
prints how to log in. Ctrl-C stops both.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tomllib
from pathlib import Path

from server import admin
from server.datadir import DataDir
from server.hq import HQ
from server.ops import enrollment
from server.settings import Settings
from shared.durations import parse_duration


def _password_file(datadir: DataDir) -> Path:
    return datadir.path / "demo-admin-password"


async def _enroll_local_agent(hq: HQ, agent_dir: Path) -> str:
    config = agent_dir / "config.toml"
    if not config.exists():
        async with hq.svc.sessions.begin() as session:
            made = await enrollment.make_enroll_token(
                session,
                site_name="demo",
                uses=1,
                ttl=parse_duration("10m"),
                url=hq.url,
                fingerprint=hq.svc.fingerprint,
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
        )
        if await proc.wait() != 0:
            raise RuntimeError("enrolling the local agent failed (see above)")
        _allow_exec(agent_dir / "policy.toml")
    return str(tomllib.loads(config.read_text())["agent_id"])


def _allow_exec(policy: Path) -> None:
    """The demo lets HQ run plain commands on its own local agent, so a new
    user can try `fieldlink exec`. (Real sites decide this in their policy.)"""
    lines = policy.read_text().splitlines()
    lines = ["allow_exec = true" if line.startswith("allow_exec =") else line for line in lines]
    policy.write_text("\n".join(lines) + "\n")


async def run_demo(settings: Settings) -> int:
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
    await hq.start()
    agent_dir = datadir.path / "agent"
    agent_proc: asyncio.subprocess.Process | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        agent_id = await _enroll_local_agent(hq, agent_dir)
        agent_proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.cli",
            "run",
            "--config-dir",
            str(agent_dir),
            "--interval",
            str(settings.report_interval),
        )
        print(
            "\n"
            "  Fieldlink demo is running\n"
            f"    web console:      {hq.url}/\n"
            f"    HQ (HTTPS API):   {hq.url}/api/v1\n"
            f"    TLS fingerprint:  {hq.svc.fingerprint}\n"
            f"    admin user:       admin\n"
            f"    admin password:   {password}\n"
            f"    local agent id:   {agent_id}\n"
            f"    agent config:     {agent_dir}\n"
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
            print(f"the local agent exited with status {waiter.result()}", file=sys.stderr)
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
