"""Remote sessions end to end, the machine's side: a real HQ, a real agent,
real SSH, HQ's real terminal WebSocket and file API; consent given at the
machine with `fieldlink-agent consent` (its own process), a PTY shell on this
machine, ends from every side, recordings, SFTP within the file roots, and
sessions the site asks for with `fieldlink-agent help --assist`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import re
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from agent.policy import Policy, write_default
from agent.staff import clock
from tests import support
from tests.support import AgentHandle, ApiClient, HQHandle, make_user, wait_until

ME = pwd.getpwuid(os.geteuid()).pw_name
HOST = socket.gethostname()
AT_MACHINE = f"{ME}@{HOST}"
V = r'([^$\s"]+)'  # a value the shell printed, not the command line it echoed
SIZE = r"\b(\d+) (\d+)\r\n"  # `stty size`


# --- helpers ------------------------------------------------------------------------


async def agent_cli(agent: AgentHandle, *args: str) -> tuple[int, str, str]:
    """`fieldlink-agent ARGS --config-dir DIR`, as its own process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent.cli",
        *args,
        "--config-dir",
        str(agent.dir.path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def start_agent(hq: HQHandle, agent_factory: Any, **policy: Any) -> AgentHandle:
    """An agent whose policy allows shells as this user (unless told), linked
    to HQ and with its hello (and so its policy) known there."""
    agent: AgentHandle = await agent_factory(hq, run=False)
    policy.setdefault("allow_shell", True)
    policy.setdefault("shell_user", ME)
    write_default(agent.dir.policy_file, Policy(**policy))
    await agent.start()
    registry = hq.hq.svc.gateway.registry

    def hello_in() -> bool:
        link = registry.get(agent.agent_id)
        return link is not None and "hello" in link.info

    await wait_until(hello_in, what="the agent's hello at HQ")
    return agent


async def site_policy(hq: HQHandle, site: str = "shop-1", **values: Any) -> None:
    async with hq.client(hq.admin_token) as admin:
        sites = await admin.ok("GET", "/api/v1/sites")
        [found] = [s for s in sites["items"] if s["name"] == site]
        policy = {**found["session_policy"], **values}
        await admin.ok("PATCH", f"/api/v1/sites/{found['id']}", json={"session_policy": policy})


@dataclass
class Desk:
    """An engineer's view: the API client and the ticket being worked."""

    hq: HQHandle
    agent: AgentHandle
    engineer: support.TestUser
    api: ApiClient
    ticket: str

    async def ask(self, kind: str = "shell", reason: str = "look at the till", **kw: Any) -> Any:
        body = {
            "agent_id": self.agent.agent_id,
            "ticket_id": self.ticket,
            "kind": kind,
            "reason": reason,
            **kw,
        }
        return await self.api.ok("POST", "/api/v1/sessions", json=body)

    async def session(self, sid: str) -> Any:
        return await self.api.ok("GET", f"/api/v1/sessions/{sid}")

    async def until(self, sid: str, *states: str, timeout: float = 20.0) -> Any:
        async def check() -> Any:
            found = await self.session(sid)
            return found if found["state"] in states else None

        return await wait_until(check, timeout=timeout, what=f"session {sid} {states}")

    async def heard(self, sid: str, state: str) -> None:
        """Wait until the machine has HQ's word that the session is `state`."""
        assert self.agent.daemon is not None
        book = self.agent.daemon.sessions

        def check() -> bool:
            known = book.get(sid)
            return known is not None and known.info.state == state

        await wait_until(check, what=f"the machine hears {sid} is {state}")

    def terminal(self, sid: str, **params: Any) -> Any:
        return self.api.ws(f"/api/v1/sessions/{sid}/terminal", **params)


@contextlib.asynccontextmanager
async def desk(hq: HQHandle, agent: AgentHandle) -> AsyncIterator[Desk]:
    engineer = await make_user(hq, "hq_engineer", totp=True)
    async with hq.client(engineer.token) as api:
        ticket = await api.ok(
            "POST",
            "/api/v1/tickets",
            json={"title": "till frozen", "site": "shop-1", "agent_ids": [agent.agent_id]},
        )
        yield Desk(hq, agent, engineer, api, ticket["number"])


class Terminal:
    """The engineer's end of the terminal WebSocket: bytes typed, bytes seen."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.out = bytearray()
        self.pos = 0
        self.status: list[dict[str, Any]] = []
        self.closed: str | None = None

    async def type(self, text: str | bytes) -> None:
        await self.ws.send_bytes(text.encode() if isinstance(text, str) else text)

    async def resize(self, cols: int, rows: int) -> None:
        await self.ws.send_str(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

    def _take(self, msg: aiohttp.WSMessage) -> None:
        if msg.type == aiohttp.WSMsgType.BINARY:
            self.out += msg.data
        elif msg.type == aiohttp.WSMsgType.TEXT:
            data = json.loads(msg.data)
            if data.get("type") == "closed":
                self.closed = data["reason"]
            else:
                self.status.append(data)
        else:
            self.closed = self.closed or f"websocket {msg.type.name.lower()}"

    async def expect(self, pattern: str, timeout: float = 20.0) -> re.Match[bytes]:
        """Wait for `pattern` in what the terminal showed since the last match."""
        regex = re.compile(pattern.encode())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = regex.search(self.out, self.pos)
            if found:
                self.pos = found.end()
                return found
            left = deadline - loop.time()
            if self.closed is not None or left <= 0:
                raise AssertionError(
                    f"{pattern!r} not shown (closed: {self.closed}); "
                    f"saw {bytes(self.out[self.pos :])[-2000:]!r}"
                )
            with contextlib.suppress(TimeoutError):
                self._take(await self.ws.receive(timeout=left))

    async def wait_closed(self, timeout: float = 20.0) -> str:
        async with asyncio.timeout(timeout):
            while self.closed is None:
                self._take(await self.ws.receive())
        return self.closed


def alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie is dead)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def gone(*pids: int) -> None:
    await wait_until(lambda: not any(alive(pid) for pid in pids), what=f"{pids} gone")


# --- a shell, consent at the machine ----------------------------------------------------


async def test_shell_approved_at_the_machine(hq, agent_factory):
    """HQ asks; `consent` at the machine lists the request and `--approve` lets the
    engineer in; the shell is a real login shell under a PTY (controlling
    terminal, resizes, the session's environment); `exit` ends the session."""
    agent = await start_agent(hq, agent_factory, require_consent=True)
    async with desk(hq, agent) as d:
        rs = await d.ask(reason="printer queue stuck")
        assert rs["state"] == "awaiting_consent"
        await d.heard(rs["id"], "awaiting_consent")

        code, out, err = await agent_cli(agent, "consent")
        assert code == 0, err
        assert "Waiting for your answer:" in out
        line = next(x for x in out.splitlines() if rs["id"] in x)
        assert f"{d.engineer.username} wants to open a shell for {d.ticket}" in line
        assert "answer by" in line and "reason: printer queue stuck" in out

        code, out, err = await agent_cli(agent, "consent", "--approve", rs["id"])
        assert code == 0, err
        active = await d.session(rs["id"])
        assert active["state"] == "active"
        assert (active["consent_via"], active["consent_by"]) == ("machine", AT_MACHINE)
        until = clock(datetime.fromisoformat(active["ends_at"]))
        assert out.strip() == (
            f"approved: {d.engineer.username} may open a shell for {d.ticket} until {until}"
        )

        async with d.terminal(rs["id"], cols=100, rows=30) as ws:
            term = Terminal(ws)
            await term.type("echo hello-$((6*7))\r")
            await term.expect(r"hello-42")
            await term.type("stty size\r")
            assert (await term.expect(SIZE)).groups() == (b"30", b"100")
            await term.resize(132, 43)
            await term.type("stty size\r")
            assert (await term.expect(SIZE)).groups() == (b"43", b"132")
            await term.type('echo "S=$FIELDLINK_SESSION T=$FIELDLINK_TICKET E=$FIELDLINK_ENGINEER"\r')
            found = await term.expect(f"S={V} T={V} E={V}\r\n")
            assert [g.decode() for g in found.groups()] == [
                rs["id"],
                d.ticket,
                d.engineer.username,
            ]
            await term.type("echo U=$USER:$LOGNAME H=$HOME T=$TERM P=$PWD C=$(ps -o tty= -p $$)\r")
            found = await term.expect(f"U={V} H={V} T={V} P={V} C={V}\r\n")
            home = pwd.getpwnam(ME).pw_dir
            assert found.group(1).decode() == f"{ME}:{ME}"
            assert found.group(2).decode() == home and found.group(4).decode() == home
            assert found.group(3) == b"xterm-256color"
            assert found.group(5).startswith(b"pts/")  # the PTY is its controlling terminal

            code, out, _ = await agent_cli(agent, "status")
            assert code == 0 and "live sessions:" in out
            assert any(rs["id"] in x and "[1 open here]" in x for x in out.splitlines())

            await term.type("exit 3\r")
            assert await term.wait_closed() == "the shell exited"
        ended = await d.until(rs["id"], "ended")
        assert ended["end_reason"] == "the shell exited"
        await d.heard(rs["id"], "ended")
        code, out, _ = await agent_cli(agent, "consent")
        assert "No session requests or live sessions on this machine." in out
