"""The engineer CLI's session commands end to end: `fieldlink shell`, `shell --accept`,
`session list|watch|end|replay`, run as the issue writes them, as separate processes,
against a real HQ and a real agent on 127.0.0.1: step-up 2FA, waiting for the site's
consent with a visible status, approval, denial, timeout, the sites' queue."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import signal
import struct
import subprocess
import sys
import termios
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update

from server.auth.totp import code_for
from server.store import tickets
from server.store.models import RemoteSession, utcnow
from shared import protocol as p
from tests import support
from tests.support import HQHandle, make_user, wait_until
from tests.test_client_cli import as_user, fieldlink, open_ticket, ready_agent


def fresh_code(user: support.TestUser, steps_ahead: int = 1) -> str:
    """A TOTP code of a later step than any used before (codes are single-use)."""
    assert user.totp_secret
    return code_for(user.totp_secret, time.time() + 30 * steps_ahead)


async def without_step_up(hq: HQHandle, user: support.TestUser) -> str:
    """A login token whose TOTP was not verified lately (step-up will be asked)."""
    return await hq.api_token(user.username, origin="login")


async def api(hq: HQHandle, token: str, method: str, path: str, **kw: Any) -> Any:
    async with hq.client(token) as client:
        return await client.ok(method, path, **kw)


async def site_policy(hq: HQHandle, site: str, **policy: Any) -> None:
    sites = await api(hq, hq.admin_token, "GET", "/api/v1/sites")
    site_id = next(s["id"] for s in sites["items"] if s["name"] == site)
    await api(
        hq, hq.admin_token, "PATCH", f"/api/v1/sites/{site_id}", json={"session_policy": policy}
    )


async def start_cli(*argv: str, env: dict[str, str], stdin: bytes | None = None) -> Any:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.cli",
        *argv,
        env=env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    if stdin is not None:
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        await proc.stdin.drain()
    return proc


async def read_until(proc: Any, needle: str, timeout: float = 30) -> str:
    """stderr of a running process, line by line, until a line has `needle`."""
    seen = []

    async def scan() -> str:
        while True:
            line = (await proc.stderr.readline()).decode()
            if not line:
                raise AssertionError(f"stderr ended without {needle!r}: {''.join(seen)}")
            seen.append(line)
            if needle in line:
                return "".join(seen)

    return await asyncio.wait_for(scan(), timeout)


async def finish(proc: Any, timeout: float = 60) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


async def waiting_session(hq: HQHandle, token: str, ticket: str) -> dict[str, Any]:
    async def found() -> Any:
        page = await api(
            hq,
            token,
            "GET",
            "/api/v1/sessions",
            params={"ticket": ticket, "state": "awaiting_consent"},
        )
        return page["items"][0] if page["items"] else None

    session: dict[str, Any] = await wait_until(found, what="a session awaiting consent")
    return session


def shell_exited(code: int, err: str, session: dict[str, Any]) -> None:
    """The CLI opened the terminal; with stdin at its end the remote shell got
    Ctrl-D, exited, and the command said so and exited 0."""
    assert code == 0, err
    assert session["state"] == "ended" and session["end_reason"] == "the shell exited"
    assert f"session {session['id']} ended: the shell exited" in err


async def test_shell_asks_step_up_waits_for_consent_then_runs(sqlite_hq, agent_factory, tmp_path):
    """Without a fresh TOTP code the request is refused saying how to give one; with
    --totp the CLI verifies it, shows who must approve and by when, and opens the
    shell once a site technician approves through the API."""
    hq = sqlite_hq
    agent = await ready_agent(hq, agent_factory, "shop-s", allow_shell=True)
    ticket = await open_ticket(hq, "shop-s")
    engineer = await make_user(hq, "hq_engineer", totp=True)
    tech = await make_user(hq, "site_tech", "shop-s")
    env = as_user(tmp_path / "cfg", hq, await without_step_up(hq, engineer))

    no_code = await fieldlink("shell", agent.agent_id, "--ticket", ticket, env=env)
    assert no_code.returncode == 1
    assert "fresh TOTP code" in no_code.stderr and "--totp CODE" in no_code.stderr
    wrong = await fieldlink(
        "shell", agent.agent_id, "--ticket", ticket, "--totp", "000000", env=env
    )
    assert wrong.returncode == 1 and "invalid TOTP code" in wrong.stderr
    listed = await api(hq, hq.admin_token, "GET", "/api/v1/sessions")
    assert listed["items"] == []  # nothing was requested without step-up

    proc = await start_cli(
        "shell",
        agent.agent_id,
        "--ticket",
        ticket,
        "--reason",
        "printer queue stuck",
        "--totp",
        fresh_code(engineer),
        env=env,
    )
    status = await read_until(proc, "waiting for consent")
    assert (
        f"someone at {os.uname().nodename} (site shop-s)" in status
        and "a site technician of shop-s must approve" in status
    )
    assert "fieldlink-agent consent --approve se_" in status and "left (until" in status
    session = await waiting_session(hq, tech.token, ticket)
    assert session["reason"] == "printer queue stuck" and session["id"] in status
    await api(
        hq,
        tech.token,
        "POST",
        f"/api/v1/sessions/{session['id']}/consent",
        json={"approve": True},
    )

    code, _, err = await finish(proc)
    assert f"session {session['id']}: active on" in err
    assert f"consent: {tech.username} (user)" in err
    after = await api(hq, hq.admin_token, "GET", f"/api/v1/sessions/{session['id']}")
    assert after["consent_by"] == tech.username and after["started_at"]
    shell_exited(code, err, after)


async def test_denied_unanswered_and_ticketless_requests_exit_1(sqlite_hq, agent_factory, tmp_path):
    """A denial ends the command with who denied it; silence past the site's timeout
    ends it as denied; a closed ticket or no ticket is refused before anyone is asked.
    The step-up code can come on stdin when the command asks for it."""
    hq = sqlite_hq
    agent = await ready_agent(hq, agent_factory, "shop-d", allow_shell=True)
    ticket = await open_ticket(hq, "shop-d")
    engineer = await make_user(hq, "hq_engineer", totp=True)
    tech = await make_user(hq, "site_tech", "shop-d")
    env = as_user(tmp_path / "cfg", hq, await without_step_up(hq, engineer))

    proc = await start_cli(
        "shell",
        agent.agent_id,
        "--ticket",
        ticket,
        env=env,
        stdin=f"{fresh_code(engineer)}\n".encode(),
    )
    status = await read_until(proc, "waiting for consent")
    assert "HQ asks for a fresh TOTP code" in status
    session = await waiting_session(hq, tech.token, ticket)
    await api(
        hq,
        tech.token,
        "POST",
        f"/api/v1/sessions/{session['id']}/consent",
        json={"approve": False},
    )
    code, _, err = await finish(proc)
    assert code == 1
    assert f"session {session['id']} was denied: denied by {tech.username} (user)" in err

    # nobody answers: as if the site's consent timeout had just passed
    proc = await start_cli("shell", agent.agent_id, "--ticket", ticket, env=env)
    await read_until(proc, "waiting for consent")
    session = await waiting_session(hq, tech.token, ticket)
    async with hq.sessions.begin() as db:
        await db.execute(
            update(RemoteSession)
            .where(RemoteSession.id == session["id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    code, _, err = await finish(proc)
    assert code == 1
    assert "was denied: nobody answered within the consent timeout" in err

    async with hq.sessions.begin() as db:
        found = await tickets.find(db, ticket)
        assert found is not None
        found.status = "resolved"
    closed = await fieldlink("shell", agent.agent_id, "--ticket", ticket, env=env)
    assert closed.returncode == 1 and f"ticket {ticket} is resolved" in closed.stderr
    assert "must be open" in closed.stderr
    ticketless = await fieldlink("shell", agent.agent_id, env=env)
    assert ticketless.returncode == 2 and "--ticket" in ticketless.stderr


async def test_queue_accept_list_watch_end_and_replay(sqlite_hq, agent_factory, tmp_path):
    """A site's request waits in `session list --queue`; `shell --accept` takes it with
    step-up; `session end` ends an active session; `watch` and `replay` of a session
    that never had a terminal say so and exit 1."""
    hq = sqlite_hq
    agent = await ready_agent(hq, agent_factory, "shop-q", allow_shell=True, require_consent=False)
    ticket = await open_ticket(hq, "shop-q")
    engineer = await make_user(hq, "hq_engineer", totp=True)
    env = as_user(tmp_path / "cfg", hq, await without_step_up(hq, engineer))
    async with hq.sessions() as db:
        found = await tickets.find(db, ticket)
        assert found is not None
    # what HQ does with `fieldlink-agent help --assist` from the machine
    asked = p.Help(
        seq=1,
        text="till frozen, please take over",
        user="cashier",
        assist=True,
        asked_at=datetime.now(UTC),
    )
    await hq.hq.parts.remote.offer_from_site(agent.agent_id, found.id, asked)

    queue = await fieldlink("session", "list", "--queue", env=env)
    assert queue.returncode == 0, queue.stderr
    row = next(line for line in queue.stdout.splitlines() if ticket in line)
    for word in ("requested", "shell", "(site request)", "till frozen"):
        assert word in row, (word, row)
    assert "fieldlink shell --accept ID" in queue.stderr
    offer = (await api(hq, hq.admin_token, "GET", "/api/v1/sessions"))["items"][0]
    assert offer["origin"] == "site" and offer["state"] == "requested"

    taken = await fieldlink(
        "shell", "--accept", offer["id"], "--totp", fresh_code(engineer), env=env
    )
    assert f"asked for help on {ticket}: till frozen, please take over" in taken.stderr
    assert f"session {offer['id']}: active on" in taken.stderr
    after = await api(hq, hq.admin_token, "GET", f"/api/v1/sessions/{offer['id']}")
    assert after["requested_by"] == engineer.username and after["started_at"]
    shell_exited(taken.returncode, taken.stderr, after)
    empty = await fieldlink("session", "list", "--queue", env=env)
    assert empty.returncode == 0 and "no site is waiting for help" in empty.stderr
    again = await fieldlink("shell", "--accept", offer["id"], env=env)
    assert again.returncode == 1 and "only a waiting site request can be accepted" in again.stderr

    # a session that needs no consent (site and machine agree) is active at once;
    # its engineer ends it
    await site_policy(hq, "shop-q", consent={"shell": False})
    active = await api(
        hq,
        engineer.token,
        "POST",
        "/api/v1/sessions",
        json={"agent_id": agent.agent_id, "ticket_id": ticket, "kind": "shell"},
    )
    assert active["state"] == "active"
    live = await fieldlink("session", "list", "--active", "--json", env=env)
    assert [s["id"] for s in json.loads(live.stdout)] == [active["id"]]

    watched = await fieldlink("session", "watch", active["id"], env=env)
    assert watched.returncode == 1 and "no terminal is open" in watched.stderr

    ended = await fieldlink("session", "end", active["id"], "--reason", "done here", env=env)
    assert ended.returncode == 0, ended.stderr
    assert ended.stdout == f"session {active['id']} ended: done here (by {engineer.username})\n"
    twice = await fieldlink("session", "end", active["id"], env=env)
    assert twice.returncode == 0 and "was already over" in twice.stdout
    gone = await fieldlink("session", "list", "--active", "--json", env=env)
    assert gone.stdout.strip() == "[]"
    table = await fieldlink("session", "list", "--ticket", ticket, env=env)
    assert table.stdout.count("ended") >= 2 and "done here" in table.stdout

    no_audit = await fieldlink("session", "replay", active["id"], env=env)
    assert no_audit.returncode == 1 and "audit:read" in no_audit.stderr
    auditor = await make_user(hq, "auditor")
    nothing = await fieldlink(
        "session", "replay", active["id"], env=as_user(tmp_path / "aud", hq, auditor.token)
    )
    assert nothing.returncode == 1 and "this session has no recording" in nothing.stderr


# --- in a real terminal -------------------------------------------------------------------


class Pty:
    """A pseudo-terminal for a CLI process: the process gets the slave side as
    stdin, stdout and stderr; the test reads and types on the master side. The
    test keeps the slave open too, so nothing is lost when the process exits."""

    def __init__(self, cols: int, rows: int) -> None:
        self.master, self.slave = os.openpty()
        self.resize(cols, rows)
        self.settings = termios.tcgetattr(self.slave)
        self.out = bytearray()
        self.pos = 0
        self._more = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.master, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:
            data = b""
        if data:
            self.out += data
            self._more.set()

    def resize(self, cols: int, rows: int) -> None:
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    async def in_raw_mode(self) -> None:
        """Wait until the process has put the terminal in raw mode (typing
        before that would be echoed here and cooked)."""
        await wait_until(self.raw, what="the terminal in raw mode")

    def raw(self) -> bool:
        lflag = termios.tcgetattr(self.slave)[3]
        return not lflag & (termios.ICANON | termios.ECHO | termios.ISIG)

    async def spawn(self, *argv: str, env: dict[str, str]) -> Any:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server.cli",
            *argv,
            env={**env, "TERM": "xterm-256color"},
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            start_new_session=True,
        )

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    async def expect(self, pattern: bytes, timeout: float = 20) -> re.Match[bytes]:
        """Wait for `pattern` in what the terminal showed since the last match."""
        regex = re.compile(pattern)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = regex.search(self.out, self.pos)
            if found:
                self.pos = found.end()
                return found
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(
                    f"{pattern!r} not shown; saw {bytes(self.out[self.pos :])[-2000:]!r}"
                )
            self._more.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._more.wait(), min(left, 1.0))

    async def drain(self) -> None:
        """Let what the process wrote last arrive."""
        await asyncio.sleep(0.2)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)
        os.close(self.slave)


@contextlib.asynccontextmanager
async def pty_for(cols: int, rows: int) -> Any:
    term = Pty(cols, rows)
    try:
        yield term
    finally:
        term.close()


async def no_consent_agent(hq: HQHandle, agent_factory: Any, site: str, **policy: Any) -> Any:
    """An agent whose sessions need nobody's consent (site and machine agree)."""
    agent = await ready_agent(
        hq, agent_factory, site, allow_shell=True, require_consent=False, **policy
    )
    await site_policy(hq, site, consent={"shell": False, "exec": True, "files": False})
    return agent


async def test_shell_in_a_terminal_watched_and_replayed(sqlite_hq, agent_factory, tmp_path):
    """`fieldlink shell` under a pseudo-terminal: raw mode while it runs, typing reaches
    the shell, a resize follows, Ctrl-C interrupts the remote command, `exit` ends it
    with status 0 and the terminal settings back as they were. A site technician's
    `session watch` sees the output; `session replay` plays exactly the bytes the
    engineer saw; a tampered recording is reported, exit 1."""
    hq = sqlite_hq
    agent = await no_consent_agent(hq, agent_factory, "shop-p")
    ticket = await open_ticket(hq, "shop-p")
    engineer = await make_user(hq, "hq_engineer", totp=True)
    tech = await make_user(hq, "site_tech", "shop-p")
    auditor = await make_user(hq, "auditor")
    env = as_user(tmp_path / "cfg", hq, engineer.token)

    async with pty_for(100, 30) as term:
        proc = await term.spawn("shell", agent.agent_id, "--ticket", ticket, env=env)
        await term.expect(rb"Everything is recorded\.\r\n")
        await term.in_raw_mode()
        start = term.pos
        term.type(b"echo hello-$((6*7))\r")
        await term.expect(rb"hello-42\r\n")
        assert term.raw()
        term.type(b"stty size\r")
        await term.expect(rb"\b30 100\r\n")

        sid = (await api(hq, hq.admin_token, "GET", "/api/v1/sessions"))["items"][0]["id"]
        watcher = await start_cli(
            "session", "watch", sid, env=as_user(tmp_path / "t", hq, tech.token)
        )
        await read_until(watcher, "read-only")  # said once its WebSocket is open
        term.type(b"echo watched-$((2+3))\r")
        await term.expect(rb"watched-5\r\n")

        term.resize(111, 33)
        os.kill(proc.pid, signal.SIGWINCH)  # the kernel's job, had the CLI this tty as its own
        await asyncio.sleep(0.3)
        term.type(b"stty size\r")
        await term.expect(rb"\b33 111\r\n")

        duration = str(30 + secrets.randbelow(900))
        term.type(f"sleep {duration}\r".encode())
        await support.running("sleep", duration)
        term.type(b"\x03")  # Ctrl-C goes to the remote side in raw mode
        term.type(b"echo after-int-$?\r")
        await term.expect(rb"after-int-130\r\n")

        term.type(b"exit\r")
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        await term.drain()
        end = term.out.index(b"fieldlink: session", start)
        shown = bytes(term.out[start:end])
        assert f"session {sid} ended: the shell exited".encode() in term.out[end:]
        assert termios.tcgetattr(term.slave) == term.settings and not term.raw()

    code, watched, werr = await finish(watcher)
    assert code == 0, werr
    assert "watched-5" in watched and "the session ended" in werr

    as_auditor = as_user(tmp_path / "a", hq, auditor.token)
    replayed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "server.cli", "session", "replay", sid, "--speed", "50"],
        capture_output=True,
        env=as_auditor,
        timeout=60,
    )
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout == shown
    assert b"idle gaps cut to 2s" in replayed.stderr

    path = hq.hq.parts.datadir.path / "recordings" / f"{sid}.cast.enc"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    tampered = await fieldlink("session", "replay", sid, env=as_auditor)
    assert tampered.returncode == 1 and tampered.stdout == ""
    assert "recording integrity check failed" in tampered.stderr
    assert "does not verify" in tampered.stderr


async def test_shell_ended_from_here_restores_the_terminal(sqlite_hq, agent_factory, tmp_path):
    """`~.` at the start of a line ends the session (exit 0); SIGTERM ends it too
    (exit 143); either way HQ has the session ended and the terminal is as it was."""
    hq = sqlite_hq
    agent = await no_consent_agent(hq, agent_factory, "shop-e")
    ticket = await open_ticket(hq, "shop-e")
    engineer = await make_user(hq, "hq_engineer", totp=True)
    env = as_user(tmp_path / "cfg", hq, engineer.token)

    async with pty_for(80, 24) as term:
        proc = await term.spawn("shell", agent.agent_id, "--ticket", ticket, env=env)
        await term.expect(rb"Everything is recorded\.\r\n")
        await term.in_raw_mode()
        term.type(b"echo up-$((1+1))\r")
        await term.expect(rb"up-2\r\n")
        term.type(b"\r~.")
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        await term.expect(rb"ended: ended by the engineer")
        assert termios.tcgetattr(term.slave) == term.settings

        proc = await term.spawn("shell", agent.agent_id, "--ticket", ticket, env=env)
        await term.expect(rb"Everything is recorded\.\r\n")
        await term.in_raw_mode()
        term.type(b"echo up-$((2+1))\r")
        await term.expect(rb"up-3\r\n")
        assert term.raw()
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 128 + signal.SIGTERM
        await term.expect(rb"ended: ended by the engineer")
        assert termios.tcgetattr(term.slave) == term.settings

    sessions = (await api(hq, hq.admin_token, "GET", "/api/v1/sessions"))["items"]
    assert [s["state"] for s in sessions] == ["ended", "ended"]


async def test_files_get_and_put_round_trip(sqlite_hq, agent_factory, tmp_path):
    """get and put move a file through the machine's SFTP, print its bytes and SHA-256,
    and end their session; a path outside the file roots exits 1 with the machine's
    reason, leaves nothing behind here, and its session is ended too."""
    hq = sqlite_hq
    root = tmp_path / "root"
    root.mkdir()
    agent = await no_consent_agent(hq, agent_factory, "shop-f", file_roots=[str(root)])
    ticket = await open_ticket(hq, "shop-f")
    engineer = await make_user(hq, "hq_engineer", totp=True)
    env = as_user(tmp_path / "cfg", hq, engineer.token)
    content = os.urandom(300_000) + b"end of the log\n"
    (root / "app.log").write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    here = tmp_path / "here"
    here.mkdir()

    got = await fieldlink(
        "files",
        "get",
        agent.agent_id,
        str(root / "app.log"),
        str(here),
        "--ticket",
        ticket,
        env=env,
    )
    assert got.returncode == 0, got.stderr
    assert (here / "app.log").read_bytes() == content
    assert got.stdout.strip().endswith(f"{len(content)} bytes, sha256 {digest}")

    upload = tmp_path / "printers.conf"
    upload.write_bytes(b"[printer]\nname = till-3\n" * 1000)
    put = await fieldlink(
        "files", "put", agent.agent_id, str(upload), f"{root}/", "--ticket", ticket, env=env
    )
    assert put.returncode == 0, put.stderr
    assert (root / "printers.conf").read_bytes() == upload.read_bytes()
    up_digest = hashlib.sha256(upload.read_bytes()).hexdigest()
    assert f"-> {os.uname().nodename}:{root}/printers.conf" in put.stdout
    assert put.stdout.strip().endswith(f"{upload.stat().st_size} bytes, sha256 {up_digest}")

    outside = await fieldlink(
        "files", "get", agent.agent_id, "/etc/hostname", str(here), "--ticket", ticket, env=env
    )
    assert outside.returncode == 1 and "outside this machine's file roots" in outside.stderr
    assert sorted(p.name for p in here.iterdir()) == ["app.log"]

    sessions = (await api(hq, hq.admin_token, "GET", "/api/v1/sessions"))["items"]
    assert len(sessions) == 3
    assert {(s["kind"], s["state"], s["end_reason"]) for s in sessions} == {
        ("files", "ended", "file transfer finished")
    }
