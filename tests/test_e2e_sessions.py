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
from tests.support import AgentHandle, ApiClient, HQHandle, machine_policy, make_user, wait_until

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
    write_default(agent.dir.policy_file, machine_policy(**policy))
    await agent.start()
    registry = hq.hq.parts.links

    def hello_in() -> bool:
        link = registry.get(agent.agent_id)
        return link is not None and "hello_at" in link.info

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


def running(parent: int, word: str) -> bool:
    """Whether a live child of `parent` has `word` in its command line (children
    that are exiting meanwhile, zombies included, are skipped)."""
    for child in psutil.Process(parent).children():
        try:
            if word in " ".join(child.cmdline()):
                return True
        except psutil.Error:
            continue
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
            await term.type(
                'echo "S=$FIELDLINK_SESSION T=$FIELDLINK_TICKET E=$FIELDLINK_ENGINEER"\r'
            )
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


async def active_shell(d: Desk, **kw: Any) -> Any:
    """A shell session that needs no consent (the site's setting), active at once."""
    await site_policy(d.hq, consent={"shell": False, "exec": True, "files": False})
    rs = await d.ask(**kw)
    assert rs["state"] == "active", rs
    await d.heard(rs["id"], "active")
    return rs


async def test_watch_and_recording_replay_the_same_bytes(hq, agent_factory, tmp_path):
    """A site technician watching sees exactly the engineer's bytes; the recording
    decrypts to the same output; a flipped byte in it is detected."""
    agent = await start_agent(hq, agent_factory, require_consent=False)
    tech = await make_user(hq, "site_tech", "shop-1")
    auditor = await make_user(hq, "auditor")
    async with desk(hq, agent) as d:
        rs = await active_shell(d)
        async with d.terminal(rs["id"], cols=90, rows=25) as ws, hq.client(tech.token) as tc:
            term = Terminal(ws)
            await term.type("echo watch-$((2+3))\r")
            await term.expect(r"watch-5")
            async with tc.ws(f"/api/v1/sessions/{rs['id']}/terminal", watch=1) as wws:
                watch = Terminal(wws)
                await term.resize(100, 30)
                await term.type("printf 'caf\\303\\251 %s\\n' $((7*6))\r")
                await term.expect("café 42")
                await term.type("exit\r")
                assert await term.wait_closed() == "the shell exited"
                assert await watch.wait_closed() == "the session ended"
                assert watch.status[0]["live"] is True
        # the watcher got the backlog, then the live stream: the engineer's bytes exactly
        assert bytes(watch.out) == bytes(term.out)
        ended = await d.until(rs["id"], "ended")
        assert ended["recording"] and ended["recording_sha256"]

    async with hq.client(auditor.token) as api:
        status, cast = await api.get(f"/api/v1/sessions/{rs['id']}/recording")
        assert status == 200, cast
        header, *events = [json.loads(line) for line in cast.splitlines()]
        assert header["version"] == 2 and header["fieldlink"]["session"] == rs["id"]
        assert header["fieldlink"]["ticket"] == d.ticket
        output = "".join(data for _, code, data in events if code == "o")
        assert output.encode() == bytes(term.out)
        assert [data for _, code, data in events if code == "r"] == ["100x30"]

        path = hq.hq.parts.datadir.path / "recordings" / f"{rs['id']}.cast.enc"
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        path.write_bytes(bytes(raw))
        status, body = await api.get(f"/api/v1/sessions/{rs['id']}/recording")
        assert status == 409 and body["error"]["code"] == "recording_tampered"


async def test_denied_at_the_machine_and_timed_out(sqlite_hq, agent_factory):
    """`--deny` refuses a request (HQ records who, and no terminal opens); a
    request nobody answers is denied when the site's consent timeout passes."""
    hq = sqlite_hq
    agent = await start_agent(hq, agent_factory, require_consent=True)
    await site_policy(hq, consent_timeout_seconds=10)
    async with desk(hq, agent) as d:
        denied = await d.ask(reason="first")
        waited = await d.ask(reason="second")
        await d.heard(denied["id"], "awaiting_consent")

        code, out, err = await agent_cli(agent, "consent", "--deny", denied["id"])
        assert code == 0, err
        assert out.strip() == (f"denied: {d.engineer.username} may not open a shell for {d.ticket}")
        found = await d.session(denied["id"])
        assert found["state"] == "denied" and found["consent_by"] == AT_MACHINE
        assert found["end_reason"] == f"denied by {AT_MACHINE} (machine)"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with d.terminal(denied["id"]):
                pass
        assert refused.value.status == 409

        timed_out = await d.until(waited["id"], "denied", timeout=20)
        assert timed_out["end_reason"] == "nobody answered within the consent timeout"
        await d.heard(waited["id"], "denied")
        code, out, err = await agent_cli(agent, "consent", "--approve", waited["id"])
        assert code == 1 and "only a request waiting for consent" in err
        code, out, _ = await agent_cli(agent, "consent")
        assert "Waiting for your answer" not in out


async def test_no_recording_no_shell(sqlite_hq, agent_factory):
    """When HQ cannot create a session's recording, no terminal opens and the
    session ends `failed` saying why: recording fails closed."""
    hq = sqlite_hq
    agent = await start_agent(hq, agent_factory, require_consent=False)
    async with desk(hq, agent) as d:
        rs = await active_shell(d)
        blocker = hq.hq.parts.datadir.path / "recordings" / f"{rs['id']}.cast.enc"
        blocker.mkdir(parents=True)  # where the recording would go, something else is
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with d.terminal(rs["id"]):
                pass
        assert refused.value.status == 409
        found = await d.session(rs["id"])
        assert found["state"] == "failed" and found["ended_by"] == "hq"
        assert found["end_reason"].startswith("the recording could not be written")
        await d.heard(rs["id"], "failed")


async def test_ended_at_the_machine_kills_the_shell(hq, agent_factory):
    """`consent --end` ends the session at HQ (who ended it, from the machine),
    closes the engineer's terminal and leaves none of the shell's processes."""
    agent = await start_agent(hq, agent_factory, require_consent=False)
    async with desk(hq, agent) as d:
        rs = await active_shell(d)
        async with d.terminal(rs["id"]) as ws:
            term = Terminal(ws)
            await term.type("sleep 1000 & echo pids=$$,$!\r")
            shell_pid, job_pid = (int(x) for x in (await term.expect(r"pids=(\d+),(\d+)")).groups())
            await term.type("sleep 1001\r")
            await wait_until(lambda: running(shell_pid, "1001"), what="the foreground sleep")
            code, out, err = await agent_cli(agent, "consent", "--end", rs["id"])
            assert code == 0, err
            assert out.strip() == (
                f"ended: {d.engineer.username}'s shell session for {d.ticket} is over; "
                "1 open here closed"
            )
            await term.wait_closed()
        ended = await d.session(rs["id"])
        assert ended["state"] == "ended"
        assert ended["end_reason"] == f"ended at the machine by {AT_MACHINE}"
        assert ended["ended_by"] == AT_MACHINE
        await gone(shell_pid, job_pid)
        await d.heard(rs["id"], "ended")


async def test_resolving_the_ticket_ends_the_session_on_the_machine(sqlite_hq, agent_factory):
    """Resolving the ticket ends its session: HQ tells the machine, the shell and
    everything it started are gone."""
    agent = await start_agent(sqlite_hq, agent_factory, require_consent=False)
    async with desk(sqlite_hq, agent) as d:
        rs = await active_shell(d)
        async with d.terminal(rs["id"]) as ws:
            term = Terminal(ws)
            await term.type("sleep 1000 & echo pids=$$,$!\r")
            pids = [int(x) for x in (await term.expect(r"pids=(\d+),(\d+)")).groups()]
            await d.api.ok(
                "POST", f"/api/v1/tickets/{d.ticket}/transition", json={"action": "resolve"}
            )
            await term.wait_closed()
        ended = await d.until(rs["id"], "ended")
        assert ended["end_reason"] == "its ticket was resolved"
        await d.heard(rs["id"], "ended")
        await gone(*pids)


async def test_sessions_refused_without_ticket_or_step_up(sqlite_hq, agent_factory):
    """No ticket, no session (422); no fresh TOTP, no session (401 step_up_required)."""
    agent = await start_agent(sqlite_hq, agent_factory)
    async with desk(sqlite_hq, agent) as d:
        body = {"agent_id": agent.agent_id, "kind": "shell", "reason": "x"}
        status, answer = await d.api.post("/api/v1/sessions", json=body)
        assert status == 422, answer
        status, answer = await d.api.post(
            "/api/v1/sessions", json={**body, "ticket_id": "FL-999999"}
        )
        assert status == 422 and answer["error"]["fields"]["ticket_id"] == "no such ticket"

        # the same engineer (TOTP enrolled) with a token whose login had no fresh code
        stale = await sqlite_hq.api_token(d.engineer.username, origin="login")
        async with sqlite_hq.client(stale) as api:
            status, answer = await api.post(
                "/api/v1/sessions", json={**body, "ticket_id": d.ticket}
            )
        assert status == 401 and answer["error"]["code"] == "step_up_required", answer


async def test_the_machines_policy_refuses_a_shell_hq_allowed(hq, agent_factory):
    """A session active at HQ while the machine's policy says no shells: the agent
    refuses the PTY, HQ ends the session `failed` with the machine's reason; a
    running shell ends when a reload turns shells off."""
    agent = await start_agent(hq, agent_factory, require_consent=False)
    assert agent.daemon is not None
    async with desk(hq, agent) as d:
        running = await active_shell(d)
        later = await d.ask()
        assert later["state"] == "active"
        async with d.terminal(running["id"]) as ws:
            term = Terminal(ws)
            await term.type("echo pid=$$\r")
            pid = int((await term.expect(r"pid=(\d+)")).group(1))

            write_default(agent.dir.policy_file, Policy(allow_shell=False, shell_user=ME))
            assert agent.daemon.reload_policy()
            await term.expect(r"\[fieldlink: this machine's policy no longer allows shells")
            reason = await term.wait_closed()
        policy_says = "this machine's policy no longer allows shells (allow_shell = false)"
        assert reason == f"the machine refused the shell: {policy_says}"
        failed = await d.until(running["id"], "failed")
        assert failed["end_reason"] == reason and failed["ended_by"] == "machine"
        await gone(pid)

        async with d.terminal(later["id"]) as ws:
            reason = await Terminal(ws).wait_closed()
        policy_says = "this machine's policy does not allow shells (allow_shell = false)"
        assert reason == f"the machine refused the shell: {policy_says}"
        failed = await d.until(later["id"], "failed")
        assert failed["end_reason"] == reason


async def test_the_machines_consent_floor_holds_against_hq(sqlite_hq, agent_factory):
    """A session HQ made active without anyone's consent (the machine did not
    ask for it then) is refused once the machine's policy requires consent:
    the agent enforces its floor itself, and HQ ends the session `failed`."""
    hq = sqlite_hq
    agent = await start_agent(hq, agent_factory, require_consent=False)
    assert agent.daemon is not None
    async with desk(hq, agent) as d:
        rs = await active_shell(d)
        assert rs["consent_by"] is None
        floor = Policy(require_consent=True, allow_shell=True, shell_user=ME)
        write_default(agent.dir.policy_file, floor)
        assert agent.daemon.reload_policy()
        async with d.terminal(rs["id"]) as ws:
            reason = await Terminal(ws).wait_closed()
        policy_says = (
            "this machine's policy requires consent (require_consent = true) "
            f"and nobody at the site gave it for session {rs['id']}"
        )
        assert reason == f"the machine refused the shell: {policy_says}"
        failed = await d.until(rs["id"], "failed")
        assert failed["end_reason"] == reason and failed["ended_by"] == "machine"


async def test_a_site_can_require_a_session_for_commands(sqlite_hq, agent_factory):
    """`require_session_for: ["exec"]`: a command on a ticket is refused (422
    naming the ticket) until the engineer holds an active session on that
    ticket and machine; diagnostics never need one."""
    hq = sqlite_hq
    agent = await start_agent(hq, agent_factory, require_consent=False, allow_exec=True)
    await site_policy(
        hq, consent={"shell": False, "exec": False, "files": False}, require_session_for=["exec"]
    )
    async with desk(hq, agent) as d:
        url = f"/api/v1/agents/{agent.agent_id}/run"
        run = {"name": "exec", "params": {"argv": ["echo", "in-session"]}, "ticket_id": d.ticket}
        status, err = await d.api.post(url, run)
        assert status == 422, err
        assert "only inside an active session on the ticket" in err["error"]["fields"]["ticket_id"]
        diag = await d.api.ok("POST", url, json={"name": "system.summary", "params": {}})
        assert diag["status"] == "ok"

        rs = await d.ask(kind="exec")
        assert rs["state"] == "active"
        done = await d.api.ok("POST", url, json=run)
        assert done["status"] == "ok" and "in-session" in done["stdout"]


async def test_hq_ends_sessions_past_their_time_or_whose_engineer_lost_the_right(
    sqlite_hq, agent_factory
):
    """HQ's own sweep ends a session past `max_minutes` (the deadline is moved
    into the past here rather than waited for), and one whose engineer no
    longer holds the rights for it; both end on the machine too."""
    from datetime import timedelta

    from sqlalchemy import update

    from server.store.models import RemoteSession, utcnow

    hq = sqlite_hq
    agent = await start_agent(hq, agent_factory, require_consent=False)
    async with desk(hq, agent) as d:
        timed = await active_shell(d, max_minutes=5)
        async with hq.sessions.begin() as session:
            await session.execute(
                update(RemoteSession)
                .where(RemoteSession.id == timed["id"])
                .values(ends_at=utcnow() - timedelta(seconds=1))
            )
        over = await d.until(timed["id"], "ended")
        assert over["end_reason"] == "reached its limit of 5 minutes" and over["ended_by"] == "hq"
        await d.heard(timed["id"], "ended")

        kept = await d.ask()
        assert kept["state"] == "active"
        async with hq.client(hq.admin_token) as admin:
            bindings = await admin.ok("GET", "/api/v1/bindings", params={"user_id": d.engineer.id})
            for b in bindings["items"]:
                await admin.ok("DELETE", f"/api/v1/bindings/{b['id']}")
        async with hq.client(hq.admin_token) as admin:

            async def ended() -> Any:
                found = await admin.ok("GET", f"/api/v1/sessions/{kept['id']}")
                return found if found["state"] == "ended" else None

            gone_rights = await wait_until(ended, timeout=20, what="the session ended")
        assert gone_rights["end_reason"] == "the engineer's rights were revoked"
        await d.heard(kept["id"], "ended")


# --- files -----------------------------------------------------------------------------------


async def test_files_get_and_put_stay_inside_the_roots(sqlite_hq, agent_factory, tmp_path):
    """A files session gets and puts files under the policy's roots; `..`, paths
    outside, symlinks leading out (to a file or through a directory) and writes
    past `max_file_bytes` are refused by the machine."""
    root = tmp_path / "share"
    (root / "logs").mkdir(parents=True)
    (root / "logs" / "app.log").write_bytes(b"line one\nline two\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    (root / "escape").symlink_to(outside / "secret.txt")
    (root / "escape_dir").symlink_to(outside)
    (root / "latest.log").symlink_to(root / "logs" / "app.log")  # inside to inside: fine
    agent = await start_agent(
        sqlite_hq, agent_factory, require_consent=False, file_roots=[str(root)], max_file_bytes=4096
    )
    await site_policy(sqlite_hq, consent={"shell": True, "exec": True, "files": False})
    async with desk(sqlite_hq, agent) as d:
        rs = await d.ask(kind="files", reason="fetch the logs")
        assert rs["state"] == "active"
        await d.heard(rs["id"], "active")
        files = f"/api/v1/sessions/{rs['id']}/files"

        async def get(path: Path | str) -> tuple[int, Any]:
            return await d.api.get(files, params={"path": str(path)})

        async def put(path: Path | str, data: bytes) -> tuple[int, Any]:
            return await d.api.request("PUT", files, params={"path": str(path)}, data=data)

        assert await get(root / "logs" / "app.log") == (200, "line one\nline two\n")
        assert await get(root / "latest.log") == (200, "line one\nline two\n")
        status, body = await put(root / "logs" / "note.txt", b"from HQ\n")
        assert status == 201 and body["bytes"] == 8, body
        assert (root / "logs" / "note.txt").read_bytes() == b"from HQ\n"

        for path in (
            f"{root}/../outside/secret.txt",
            "/etc/passwd",
            root / "escape",
            root / "escape_dir" / "secret.txt",
        ):
            status, body = await get(path)
            assert status == 403, (path, body)
            assert "outside this machine's file roots" in body["error"]["message"], body
        for path in (
            root / "escape",
            root / "escape_dir" / "planted.txt",
            f"{root}/../outside/planted.txt",
            "/tmp/planted-by-hq.txt",
        ):
            status, body = await put(path, b"planted")
            assert status == 403, (path, body)
        assert (outside / "secret.txt").read_bytes() == b"secret"
        assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
        assert not await asyncio.to_thread(os.path.exists, "/tmp/planted-by-hq.txt")

        status, body = await put(root / "big.bin", b"x" * 5000)
        assert status == 409 and "max_file_bytes" in body["error"]["message"], body

        await d.api.ok("POST", f"/api/v1/sessions/{rs['id']}/end", json={})
        await d.heard(rs["id"], "ended")
        status, body = await get(root / "logs" / "app.log")
        assert status == 409, body


# --- sessions the site asks for ------------------------------------------------------------


class AssistCLI:
    """`fieldlink-agent help --assist TEXT` as its own process, read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    @classmethod
    async def start(cls, agent: AgentHandle, text: str) -> AssistCLI:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.cli",
            "help",
            "--assist",
            text,
            "--config-dir",
            str(agent.dir.path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(proc)

    async def line(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"{pattern!r} never printed; got {self.lines}")
                self.lines.append(raw.decode().rstrip("\n"))
                found = re.search(pattern, self.lines[-1])
                if found:
                    return found

    async def type(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        await self.proc.stdin.drain()

    async def exit_code(self) -> int:
        rest, _ = await asyncio.wait_for(self.proc.communicate(), 30)
        self.lines.extend(rest.decode().splitlines())
        assert self.proc.returncode is not None
        return self.proc.returncode


async def test_assisted_session_asked_for_at_the_machine(sqlite_hq, agent_factory):
    """`help --assist` opens a ticket and an offer; an engineer accepts it from the
    queue; the command shows who joined and when, and `end` typed there ends the
    session for everyone."""
    hq = sqlite_hq
    agent = await start_agent(hq, agent_factory, require_consent=True)
    cli = await AssistCLI.start(agent, "till frozen, please take over")
    number = (await cli.line(r"Your request is ticket (FL-\d+)\.")).group(1)
    await cli.line(r"^Waiting for someone at HQ to take over \(the offer stays open until")
    await cli.line(r"^Type `end` and Enter, or press Ctrl-C, to withdraw the request\.$")

    engineer = await make_user(hq, "hq_engineer", totp=True)
    async with hq.client(engineer.token) as api:
        queue = await api.ok(
            "GET", "/api/v1/sessions", params={"state": "requested", "origin": "site"}
        )
        [offer] = [s for s in queue["items"] if s["ticket"] == number]
        assert offer["reason"] == "till frozen, please take over"
        accepted = await api.ok("POST", f"/api/v1/sessions/{offer['id']}/accept")
        assert accepted["state"] == "active" and accepted["consent_via"] == "site_request"
        joined = clock(datetime.fromisoformat(accepted["started_at"]))
        until = clock(datetime.fromisoformat(accepted["ends_at"]))
        await cli.line(
            rf"^{engineer.username} from HQ joined at {joined} "
            rf"\(shell session for {number}, until {until}\)\.$"
        )
        await cli.line(r"^Type `end` and Enter, or press Ctrl-C, to end the session\.$")

        async with api.ws(f"/api/v1/sessions/{offer['id']}/terminal") as ws:
            term = Terminal(ws)
            await term.type("echo assisted-$((40+2))\r")
            await term.expect("assisted-42")
            await cli.type("end\n")
            await cli.line(
                rf"^ended: {engineer.username}'s shell session for {number} is over; "
                r"1 open here closed$"
            )
            assert await cli.exit_code() == 0
            assert await term.wait_closed() == f"ended at the machine by {AT_MACHINE}"
        ended = await api.ok("GET", f"/api/v1/sessions/{offer['id']}")
        assert ended["state"] == "ended" and ended["ended_by"] == AT_MACHINE


async def test_site_staff_ask_for_a_takeover_through_the_api(sqlite_hq, agent_factory):
    """A site_staff user asks through the API (`assist: true`): the ticket and its
    offer in HQ's queue; an engineer accepts it; the staff member sees who
    joined and ends it. HQ engineers cannot fake a site's asking."""
    hq = sqlite_hq
    agent = await start_agent(hq, agent_factory, require_consent=True)
    staff = await make_user(hq, "site_staff", "shop-1")
    engineer = await make_user(hq, "hq_engineer", totp=True)
    ask = {
        "title": "scanner dead",
        "description": "the scanner at till 2 beeps and does nothing",
        "site": "shop-1",
        "type": "service_request",
        "agent_ids": [agent.agent_id],
        "assist": True,
    }
    async with hq.client(engineer.token) as api:
        status, err = await api.post("/api/v1/tickets", ask)
        assert status == 403 and "assist" in err["error"]["fields"]
    async with hq.client(staff.token) as api:
        status, err = await api.post("/api/v1/tickets", {**ask, "agent_ids": []})
        assert status == 422 and "agent_ids" in err["error"]["fields"]
        ticket = await api.ok("POST", "/api/v1/tickets", json=ask)
        [mine] = (await api.ok("GET", "/api/v1/sessions", params={"ticket": ticket["number"]}))[
            "items"
        ]
        assert mine["state"] == "requested" and mine["origin"] == "site"
        assert mine["consent_by"] == staff.username and mine["consent_via"] == "site_request"

    async with hq.client(engineer.token) as api:
        queue = await api.ok(
            "GET", "/api/v1/sessions", params={"state": "requested", "origin": "site"}
        )
        [offer] = [s for s in queue["items"] if s["ticket"] == ticket["number"]]
        assert offer["id"] == mine["id"] and offer["reason"] == ask["description"]
        accepted = await api.ok("POST", f"/api/v1/sessions/{offer['id']}/accept")
        assert accepted["state"] == "active"

    async with hq.client(staff.token) as api:
        seen = await api.ok("GET", f"/api/v1/sessions/{offer['id']}")
        assert seen["state"] == "active" and seen["started_at"]
        assert seen["requested_by"] == engineer.username  # who joined
        ended = await api.ok(
            "POST", f"/api/v1/sessions/{offer['id']}/end", json={"reason": "works again"}
        )
        assert ended["state"] == "ended" and ended["ended_by"] == staff.username
    other = await make_user(hq, "site_staff", "shop-1")
    async with hq.client(other.token) as api:  # not theirs: not even its existence
        assert (await api.get(f"/api/v1/sessions/{offer['id']}"))[0] == 404
        assert (await api.ok("GET", "/api/v1/sessions"))["items"] == []


async def test_assist_withdrawn_with_ctrl_c_or_left_to_expire(sqlite_hq, agent_factory):
    """Ctrl-C before anyone joins withdraws the offer; an offer nobody takes
    expires and the command says so and returns."""
    import signal

    hq = sqlite_hq
    agent = await start_agent(hq, agent_factory)
    await site_policy(hq, offer_timeout_seconds=10)
    admin = await make_user(hq, "admin", totp=True)

    withdrawn = await AssistCLI.start(agent, "scanner dead")
    await withdrawn.line(r"Waiting for someone at HQ to take over")
    lapsing = await AssistCLI.start(agent, "printer jammed")
    number = (await lapsing.line(r"Your request is ticket (FL-\d+)\.")).group(1)
    await lapsing.line(r"Waiting for someone at HQ to take over")

    withdrawn.proc.send_signal(signal.SIGINT)
    await withdrawn.line(r"^withdrawn: nobody from HQ will take over for FL-\d+$")
    assert await withdrawn.exit_code() == 0

    await lapsing.line(
        rf"^Nobody at HQ took the request in time \(nobody at HQ took the request in time\); "
        rf"{number} stays open\.$",
        timeout=30,
    )
    assert await lapsing.exit_code() == 0
    async with hq.client(admin.token) as api:
        rows = (await api.ok("GET", "/api/v1/sessions", params={"origin": "site"}))["items"]
    states = {s["ticket"]: (s["state"], s["ended_by"]) for s in rows}
    assert states[number] == ("expired", "hq")
    assert sorted(s for s, _ in states.values()) == ["ended", "expired"]


async def test_an_answer_given_while_hq_is_away_is_sent_when_it_returns(sqlite_hq, agent_factory):
    """With HQ unreachable, `consent --approve` says the answer is saved; HQ acts
    on it once the link is back."""
    hq = sqlite_hq
    agent = await start_agent(hq, agent_factory, require_consent=True)
    async with desk(hq, agent) as d:
        rs = await d.ask()
        await d.heard(rs["id"], "awaiting_consent")
    await hq.stop()
    assert agent.daemon is not None
    await wait_until(lambda: not agent.daemon.telemetry.open, what="the link down")

    code, out, err = await agent_cli(agent, "consent")
    assert code == 0 and out.startswith("HQ is unreachable right now") and rs["id"] in out
    code, out, err = await agent_cli(agent, "consent", "--approve", rs["id"][:10])
    assert code == 0, err
    assert out.strip() == (
        "HQ is unreachable right now; your answer is saved on this machine and will be "
        "sent when the connection returns."
    )

    await hq.restart()
    async with hq.client(hq.admin_token) as api:

        async def active() -> Any:
            found = await api.ok("GET", f"/api/v1/sessions/{rs['id']}")
            return found if found["state"] == "active" else None

        found = await wait_until(active, what="the saved answer applied")
    assert (found["consent_by"], found["consent_via"]) == (AT_MACHINE, "machine")
    book = agent.daemon.sessions
    await wait_until(lambda: (k := book.get(rs["id"])) and k.info.state == "active")
