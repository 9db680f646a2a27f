"""The agent's own enforcement of remote sessions, and its PTY shell, over real
SSH: HQ's real link sends `SessionInfo` frames the way HQ does (here crafted,
as a buggy or compromised HQ might send them) and opens shell and SFTP
channels directly, without HQ's own checks in the way."""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncssh
import psutil
import pytest

from agent.policy import Policy, write_default
from shared import protocol as p
from tests.support import AgentHandle, HQHandle, machine_policy, running, wait_until

ME = pwd.getpwuid(os.geteuid()).pw_name
TICKET = "FL-7"
ENGINEER = "eve"


async def linked(hq: HQHandle, agent_factory: Any, **policy: Any) -> tuple[AgentHandle, Any]:
    agent: AgentHandle = await agent_factory(hq, run=False)
    policy.setdefault("allow_shell", True)
    policy.setdefault("shell_user", ME)
    write_default(agent.dir.policy_file, machine_policy(**policy))
    await agent.start()
    registry = hq.hq.parts.links

    def ready() -> Any:
        link = registry.get(agent.agent_id)
        return link if link is not None and "hello_at" in link.info else None

    return agent, await wait_until(ready, what="the agent's hello")


def session_id() -> str:
    return f"se_{secrets.token_hex(8)}"


async def tell(agent: AgentHandle, link: Any, sid: str, state: str = "active", **kw: Any) -> None:
    """HQ's word on a session, sent on the telemetry channel; wait until heard."""
    kw.setdefault("kind", "shell")
    kw.setdefault("expires_at", datetime.now(UTC) + timedelta(minutes=10))
    kw.setdefault("consent_by", "root@till-3")  # as HQ says once the site consented
    frame = p.SessionInfo(session_id=sid, state=state, engineer=ENGINEER, ticket=TICKET, **kw)
    assert link.send(frame)
    assert agent.daemon is not None
    book = agent.daemon.sessions

    def heard() -> bool:
        known = book.get(sid)
        return known is not None and known.info.state == state

    await wait_until(heard, what=f"{sid} {state} heard")


def env(sid: str | None, ticket: str = TICKET, engineer: str = ENGINEER) -> dict[str, str]:
    if sid is None:
        return {}
    return {p.SESSION_ENV: sid, p.TICKET_ENV: ticket, p.ENGINEER_ENV: engineer}


class Pty:
    """A shell channel opened by HQ's SSH client, read with patterns."""

    def __init__(self, proc: asyncssh.SSHClientProcess[bytes]) -> None:
        self.proc = proc
        self.out = bytearray()
        self.pos = 0

    @classmethod
    async def open(cls, link: Any, sid: str | None, **kw: Any) -> Pty:
        kw.setdefault("term_type", "xterm")
        kw.setdefault("term_size", (80, 24))
        proc = await link.conn.create_process(env=env(sid), encoding=None, **kw)
        return cls(proc)

    async def type(self, data: str | bytes) -> None:
        self.proc.stdin.write(data.encode() if isinstance(data, str) else data)

    async def expect(self, pattern: str, timeout: float = 15.0) -> re.Match[bytes]:
        regex = re.compile(pattern.encode())
        try:
            async with asyncio.timeout(timeout):
                while True:
                    found = regex.search(self.out, self.pos)
                    if found:
                        self.pos = found.end()
                        return found
                    data = await self.proc.stdout.read(65536)
                    if not data:
                        break
                    self.out += data
        except TimeoutError:
            pass
        raise AssertionError(f"{pattern!r} not shown; saw {bytes(self.out[self.pos :])!r}")

    async def finished(self, timeout: float = 15.0) -> tuple[int | None, str]:
        """The channel's exit status and its stderr, once it has closed."""
        async with asyncio.timeout(timeout):
            while data := await self.proc.stdout.read(65536):
                self.out += data
            err = await self.proc.stderr.read()
            await self.proc.wait_closed()
        return self.proc.exit_status, err.decode()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --- the agent refuses what HQ has not made an active shell session ---------------------------


@pytest.mark.parametrize(
    ("case", "refusal"),
    [
        ("no session", "no session named: the channel must carry FIELDLINK_SESSION"),
        ("unknown", "HQ has not told this machine about session {sid}"),
        ("awaiting", "session {sid} is awaiting consent, not active"),
        ("denied", "session {sid} is denied, not active: denied by the site"),
        ("files", "session {sid} is a files session, not a shell one"),
        ("expired", "session {sid} reached its end time"),
        ("ticket", "session {sid} belongs to FL-7, not FL-8"),
        ("engineer", "session {sid} is eve's, not mallory's"),
        ("no pty", "a shell needs a terminal (request a PTY)"),
    ],
)
async def test_the_agent_refuses_shells_for_sessions_not_active(
    sqlite_hq, agent_factory, case, refusal
):
    """Whatever HQ asks, a shell opens only for an active shell session named on
    the channel, for its ticket and engineer, within its time; else stderr says
    why and the exit status is 1."""
    agent, link = await linked(sqlite_hq, agent_factory)
    sid = session_id()
    kw: dict[str, Any] = {}
    if case == "awaiting":
        await tell(agent, link, sid, "awaiting_consent")
    elif case == "denied":
        await tell(agent, link, sid, "denied", end_reason="denied by the site")
    elif case == "files":
        await tell(agent, link, sid, kind="files")
    elif case == "expired":
        await tell(agent, link, sid, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    elif case != "unknown":
        await tell(agent, link, sid)
    if case == "ticket":
        kw["env"] = env(sid, ticket="FL-8")
    if case == "engineer":
        kw["env"] = env(sid, engineer="mallory")
    if case == "no pty":
        kw["term_type"] = None
    if "env" in kw:
        proc = await link.conn.create_process(term_type="xterm", env=kw.pop("env"), encoding=None)
        shell = Pty(proc)
    else:
        shell = await Pty.open(link, None if case == "no session" else sid, **kw)
    status, err = await shell.finished()
    assert status == 1
    assert err == f"fieldlink-agent: {refusal.format(sid=sid)}\n"
    assert not shell.out


async def test_the_agent_stops_a_shell_when_hq_ends_it_or_its_time_passes(sqlite_hq, agent_factory):
    """HQ saying a session ended, or its end time passing (with HQ silent), ends
    the shell on the machine: the terminal says why and its processes go."""
    agent, link = await linked(sqlite_hq, agent_factory)
    ended, lapsing = session_id(), session_id()
    await tell(agent, link, ended)

    first = await Pty.open(link, ended)
    await first.type("sleep 1000 & echo pids=$$,$!\r")
    pids = [int(x) for x in (await first.expect(r"pids=(\d+),(\d+)")).groups()]
    await tell(agent, link, ended, "ended", end_reason="ended by the engineer")
    await first.expect(r"\[fieldlink: HQ ended the session \(ended by the engineer\)\]")
    status, err = await first.finished()
    assert status is not None and status != 0 and err == ""
    await wait_until(lambda: not any(alive(pid) for pid in pids), what="processes gone")

    # told only now: its 3 s must not pass while the first part runs on a busy machine
    await tell(agent, link, lapsing, expires_at=datetime.now(UTC) + timedelta(seconds=3))
    second = await Pty.open(link, lapsing)
    await second.type("echo pid=$$\r")
    pid = int((await second.expect(r"pid=(\d+)")).group(1))
    await second.expect(r"\[fieldlink: the session reached its end time\]", timeout=10)
    await second.finished()
    await wait_until(lambda: not alive(pid), what="the shell gone")
    # and nothing new opens for either
    for sid in (ended, lapsing):
        status, err = await (await Pty.open(link, sid)).finished()
        assert status == 1 and sid in err


async def test_raw_bytes_and_full_screen_programs(sqlite_hq, agent_factory, tmp_path):
    """No line editing between HQ and the PTY: raw bytes arrive untouched, Ctrl-C
    interrupts, vi edits a file, top draws its screen."""
    agent, link = await linked(sqlite_hq, agent_factory)
    sid = session_id()
    await tell(agent, link, sid)
    shell = await Pty.open(link, sid, term_type="xterm-256color", term_size=(100, 30))

    await shell.type("stty raw -echo; echo raw-$((0+1)); head -c 5 | od -An -tx1; stty sane\r")
    await shell.expect(r"raw-1")
    await shell.type(b"\r\x1b\x7f\x01\x04")
    await shell.expect(r"0d 1b 7f 01 04")

    duration = str(100 + secrets.randbelow(900))
    await shell.type(f"sleep {duration}; echo after-$((1+1))\r")
    await running("sleep", duration)
    await shell.type(b"\x03")
    await shell.type("echo interrupted-$((2+2))\r")
    await shell.expect(r"interrupted-4", timeout=5)

    target = tmp_path / "note.txt"
    await shell.type(f"vi -u NONE {target}; echo vi-done-$((3+3))\r")
    await shell.expect(r"\x1b\[\?1049h")  # it takes over the screen
    await asyncio.sleep(0.5)
    await shell.type("ihello from vi\x1b:wq\r")
    await shell.expect(r"vi-done-6")
    assert target.read_text() == "hello from vi\n"

    await shell.type("top -d 0.2 -n 3; echo top-done-$((4+4))\r")
    await shell.expect(r"load average")
    await shell.expect(r"top-done-8")
    await shell.type("exit 7\r")
    status, err = await shell.finished()
    assert (status, err) == (7, "")


def _other_login_user() -> pwd.struct_passwd | None:
    for entry in pwd.getpwall():
        if (
            entry.pw_uid >= 100
            and os.path.basename(entry.pw_shell) not in ("nologin", "false", "sync")
            and os.path.isdir(entry.pw_dir)
        ):
            return entry
    return None


OTHER = _other_login_user()


@pytest.mark.skipif(os.geteuid() != 0 or OTHER is None, reason="needs root and another user")
async def test_the_shell_runs_as_the_policys_user(sqlite_hq, agent_factory):
    """An agent running as root starts the shell as `shell_user`, with its groups,
    in its home, and the terminal belongs to that user."""
    assert OTHER is not None
    agent, link = await linked(sqlite_hq, agent_factory, shell_user=OTHER.pw_name)
    sid = session_id()
    await tell(agent, link, sid)
    shell = await Pty.open(link, sid)
    await shell.type(
        'echo "who=$(id -un) groups=$(id -G) home=$HOME pwd=$PWD tty=$(stat -c %U $(tty))"\r'
    )
    found = await shell.expect(r"who=(\w+) groups=([\d ]+) home=(\S+) pwd=(\S+) tty=(\w+)\r\n")
    who, groups, home, cwd, tty_owner = (g.decode() for g in found.groups())
    assert who == OTHER.pw_name and tty_owner == OTHER.pw_name
    assert home == cwd == OTHER.pw_dir
    assert sorted(int(g) for g in groups.split()) == sorted(
        set(os.getgrouplist(OTHER.pw_name, OTHER.pw_gid))
    )
    await shell.type("exit\r")
    assert (await shell.finished())[0] == 0


async def test_a_user_without_a_login_shell_is_refused(sqlite_hq, agent_factory):
    """shell_user with nologin: the shell is refused with that reason."""
    agent, link = await linked(sqlite_hq, agent_factory, shell_user="nobody")
    sid = session_id()
    await tell(agent, link, sid)
    status, err = await (await Pty.open(link, sid)).finished()
    assert status == 1 and "nobody has no login shell" in err


# --- SFTP: only for an active files session, only inside the roots ---------------------------


async def sftp(link: Any, sid: str | None) -> asyncssh.SFTPClient:
    return await link.conn.start_sftp_client(env=env(sid))


async def test_sftp_only_for_an_active_files_session(sqlite_hq, agent_factory, tmp_path):
    """Every request on an SFTP channel that is not for an active files session is
    refused with the reason; a session ending closes the channel."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_text("a")
    agent, link = await linked(sqlite_hq, agent_factory, file_roots=[str(root)])
    shell_session, files_session = session_id(), session_id()
    await tell(agent, link, shell_session)
    await tell(agent, link, files_session, kind="files")

    for sid, refusal in (
        (None, "no session named"),
        (shell_session, "is a shell session, not a files one"),
        (session_id(), "HQ has not told this machine about session"),
    ):
        client = await sftp(link, sid)
        with pytest.raises(asyncssh.SFTPPermissionDenied, match=refusal):
            await client.stat(str(root / "a.txt"))
        client.exit()

    client = await sftp(link, files_session)
    assert (await client.stat(str(root / "a.txt"))).size == 1
    await tell(agent, link, files_session, "ended", kind="files")
    with pytest.raises((asyncssh.SFTPError, asyncssh.Error, OSError)):
        await client.stat(str(root / "a.txt"))
    client.exit()


async def test_sftp_refuses_what_could_leave_the_roots(sqlite_hq, agent_factory, tmp_path):
    """Inside a files session: reading, writing, listing, mkdir, rename and remove
    work inside the roots; symlink and hard-link creation, renames across roots,
    ownership changes, setuid bits and escapes by `..` or symlink are refused."""
    one, two, outside = tmp_path / "one", tmp_path / "two", tmp_path / "outside"
    for d in (one, two, outside):
        d.mkdir()
    (one / "a.txt").write_text("a")
    (outside / "secret").write_text("s")
    (one / "out").symlink_to(outside)
    agent, link = await linked(sqlite_hq, agent_factory, file_roots=[str(one), str(two)])
    sid = session_id()
    await tell(agent, link, sid, kind="files")
    client = await sftp(link, sid)
    try:
        assert sorted(await client.listdir(str(one))) == [".", "..", "a.txt", "out"]
        await client.mkdir(str(one / "sub"))
        async with client.open(str(one / "sub" / "b.txt"), "wb") as f:
            await f.write(b"bee")
        await client.rename(str(one / "sub" / "b.txt"), str(one / "b.txt"))
        assert (one / "b.txt").read_bytes() == b"bee"
        await client.chmod(str(one / "b.txt"), 0o640)
        assert (one / "b.txt").stat().st_mode & 0o777 == 0o640
        assert await client.realpath(str(one / "sub" / "..")) == str(one)
        await client.remove(str(one / "b.txt"))
        await client.rmdir(str(one / "sub"))
        assert (await client.lstat(str(one / "out"))).type == asyncssh.FILEXFER_TYPE_SYMLINK

        refused: list[tuple[str, Any]] = [
            ("symlink", lambda: client.symlink(str(outside), str(one / "link"))),
            ("link", lambda: client.link(str(one / "a.txt"), str(one / "hard"))),
            ("across roots", lambda: client.rename(str(one / "a.txt"), str(two / "a.txt"))),
            ("chown", lambda: client.chown(str(one / "a.txt"), 1, 1)),
            ("setuid", lambda: client.chmod(str(one / "a.txt"), 0o4755)),
            ("dotdot", lambda: client.stat(f"{one}/../outside/secret")),
            ("listing through a link", lambda: client.listdir(str(one / "out"))),
            ("reading a link's target", lambda: client.readlink(str(one / "out"))),
            ("mkdir through a link", lambda: client.mkdir(str(one / "out" / "new"))),
            ("rename out", lambda: client.rename(str(one / "a.txt"), str(one / "out" / "a.txt"))),
            ("remove the root", lambda: client.rmdir(str(two))),
            ("absolute outside", lambda: client.stat("/etc/passwd")),
        ]
        for what, call in refused:
            try:
                await call()
            except asyncssh.SFTPPermissionDenied:
                continue
            pytest.fail(f"{what} was allowed")
        assert sorted(p.name for p in outside.iterdir()) == ["secret"]
        assert (one / "a.txt").stat().st_mode & 0o7000 == 0
    finally:
        client.exit()


async def test_a_policy_reload_without_shells_stops_them(sqlite_hq, agent_factory):
    """Turning allow_shell off and reloading ends running shells; the reason goes
    to stderr, where HQ reads it."""
    agent, link = await linked(sqlite_hq, agent_factory)
    assert agent.daemon is not None
    sid = session_id()
    await tell(agent, link, sid)
    shell = await Pty.open(link, sid)
    await shell.type("echo pid=$$\r")
    pid = int((await shell.expect(r"pid=(\d+)")).group(1))
    write_default(agent.dir.policy_file, Policy(allow_shell=False, shell_user=ME))
    assert agent.daemon.reload_policy()
    status, err = await shell.finished()
    assert err == (
        "fieldlink-agent: this machine's policy no longer allows shells (allow_shell = false)\n"
    )
    assert status is not None and status != 0
    await wait_until(lambda: not alive(pid), what="the shell gone")
