"""End to end, real HQ and real agent on loopback: people at the machine ask
for help, list the machine's tickets and rate the help through the agent's
local socket (`fieldlink-agent help|tickets|rate` as separate processes)."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import socket
import sqlite3
import stat
import sys
import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.daemon import Daemon
from agent.local import (
    AgentUnavailable,
    LocalError,
    StatusAnswer,
    StatusRequest,
    TicketsAnswer,
    TicketsRequest,
    call,
)
from agent.spool import Asked
from shared import protocol as p
from tests.support import AgentHandle, HQHandle, wait_until

ME = pwd.getpwuid(os.geteuid()).pw_name
HOST = socket.gethostname()
IS_ROOT = os.geteuid() == 0


async def cli(agent: AgentHandle, *args: str) -> tuple[int, str, str]:
    """Run `fieldlink-agent ARGS --config-dir DIR` as its own process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent.cli",
        *args,
        "--config-dir",
        str(agent.dir.path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def ask(path: Path, request: Any) -> Any:
    return await asyncio.to_thread(call, path, request, 30.0)


async def local_status(agent: AgentHandle) -> StatusAnswer:
    answer = await ask(agent.dir.socket_file, StatusRequest())
    assert isinstance(answer, StatusAnswer), answer
    return answer


async def local_tickets(agent: AgentHandle) -> TicketsAnswer:
    answer = await ask(agent.dir.socket_file, TicketsRequest())
    assert isinstance(answer, TicketsAnswer), answer
    return answer


async def until_linked(agent: AgentHandle, up: bool = True) -> None:
    async def check() -> bool:
        try:
            return (await local_status(agent)).connected is up
        except AgentUnavailable:  # the daemon is still starting
            return False

    await wait_until(check, what=f"link {'up' if up else 'down'}")


def number_in(text: str) -> str:
    match = re.search(r"\bFL-\d+\b", text)
    assert match, text
    return match.group(0)


async def help_tickets(hq: HQHandle) -> list[dict[str, Any]]:
    async with hq.client(hq.admin_token) as api:
        body = await api.ok("GET", "/api/v1/tickets", params={"source": "help", "limit": 100})
    items: list[dict[str, Any]] = body["items"]
    return items


async def test_help_request_becomes_a_ticket_with_a_fresh_snapshot(hq, agent_factory):
    """`fieldlink-agent help TEXT` prints FL-N: a service request from this machine
    with the asker as requester and the health snapshot in its timeline."""
    agent = await agent_factory(hq)
    await until_linked(agent)

    code, out, err = await cli(agent, "help", "receipt printer prints blank")
    assert code == 0, err
    number = number_in(out)
    assert out.startswith(f"Your request is ticket {number}.")

    async with hq.client(hq.admin_token) as api:
        ticket = await api.ok("GET", f"/api/v1/tickets/{number}")
    assert ticket["type"] == "service_request"
    assert ticket["source"] == "help"
    assert ticket["title"] == "receipt printer prints blank"
    assert ticket["agents"] == [agent.agent_id]
    assert ticket["requester"] == f"{ME}@{HOST}"
    snapshots = [e for e in ticket["timeline"] if e["kind"] == "snapshot"]
    assert len(snapshots) == 1
    data = snapshots[0]["data"]
    assert data["assist"] is False
    assert data["snapshot"]["cpu"]["count"] >= 1 and data["snapshot"]["disks"]

    # HQ pushes the machine's list; the agent keeps it and marks the request answered.
    async def listed() -> Any:
        answer = await local_tickets(agent)
        return [t for t in answer.tickets if t.number == number]

    [brief] = await wait_until(listed, what="ticket pushed to the agent")
    assert brief.requested_here and brief.status == "new" and brief.title == ticket["title"]
    answer = await local_tickets(agent)
    [request] = [r for r in answer.requests if r.kind == "help"]
    assert (request.state, request.ticket, request.user) == ("answered", number, ME)
    assert not [f for f in agent.daemon.spool.pending() if f.kind == "help"]

    code, out, _ = await cli(agent, "tickets")
    assert code == 0 and number in out and "receipt printer prints blank" in out


async def test_help_with_assist_carries_the_flag(sqlite_hq, agent_factory):
    """`help --assist` sends the same request with assist set; HQ records it."""
    agent = await agent_factory(sqlite_hq)
    await until_linked(agent)
    code, out, err = await cli(agent, "help", "--assist", "till", "frozen")
    assert code == 0, err
    number = number_in(out)
    async with sqlite_hq.client(sqlite_hq.admin_token) as api:
        ticket = await api.ok("GET", f"/api/v1/tickets/{number}")
    assert ticket["title"] == "till frozen"
    [snapshot] = [e for e in ticket["timeline"] if e["kind"] == "snapshot"]
    assert snapshot["data"]["assist"] is True


def _insert_frame(spool_file: Path, kind: str, seq: int, data: bytes) -> None:
    db = sqlite3.connect(spool_file)
    try:
        with db:
            db.execute("INSERT INTO frames(kind, seq, data) VALUES (?, ?, ?)", (kind, seq, data))
    finally:
        db.close()


async def test_help_while_hq_is_down_is_queued_then_opens_one_ticket(hq, agent_factory):
    """With HQ down the request is saved and the command says so; when HQ is back
    it becomes exactly one ticket, also when the same frame is sent again."""
    agent = await agent_factory(hq)
    await until_linked(agent)
    await hq.stop()
    await until_linked(agent, up=False)

    code, out, err = await cli(agent, "help", "scanner", "not", "reading")
    assert code == 0, err
    assert "HQ is unreachable right now" in out
    assert "saved on this machine" in out
    answer = await local_tickets(agent)
    [request] = answer.requests
    assert (request.state, request.summary, request.user) == ("waiting", "scanner not reading", ME)
    code, out, _ = await cli(agent, "tickets")
    assert code == 0 and "Not yet sent to HQ" in out and "scanner not reading" in out
    [frame] = [f for f in agent.daemon.spool.pending() if f.kind == "help"]

    await hq.restart()

    async def answered() -> Any:
        rows = (await local_tickets(agent)).requests
        return rows[0].ticket if rows[0].state == "answered" else None

    number = await wait_until(answered, what="the queued request answered")
    tickets = await help_tickets(hq)
    assert [t["number"] for t in tickets] == [number]
    assert tickets[0]["requester"] == f"{ME}@{HOST}"

    async def listed() -> bool:
        return number in {t.number for t in (await local_tickets(agent)).tickets}

    await wait_until(listed, what="the new ticket in the machine's list")
    code, out, _ = await cli(agent, "tickets")
    assert code == 0 and number in out and "Not yet sent" not in out

    # The same frame again (as after a lost ack): the same receipt, no second ticket.
    await agent.stop()
    _insert_frame(agent.dir.spool_file, frame.kind, frame.seq, frame.data)
    await agent.start()

    async def resent_and_acked() -> bool:
        assert agent.daemon is not None
        return not [f for f in agent.daemon.spool.pending() if f.kind == "help"]

    await wait_until(resent_and_acked, what="the re-sent frame acked")
    assert [t["number"] for t in await help_tickets(hq)] == [number]
    [request] = (await local_tickets(agent)).requests
    assert (request.state, request.ticket) == ("answered", number)


async def test_tickets_follow_hq_and_ratings_are_checked_by_hq(sqlite_hq, agent_factory):
    """`tickets` shows status changes HQ pushes; `rate` is refused before the
    ticket is resolved, taken once after, refused again and for tickets not
    asked from this machine, and queued while HQ is away."""
    hq = sqlite_hq
    agent = await agent_factory(hq, site="shop-7")
    await until_linked(agent)
    code, out, err = await cli(agent, "help", "card terminal offline")
    assert code == 0, err
    number = number_in(out)

    code, out, err = await cli(agent, "rate", number, "5")
    assert code == 1, (out, err)
    assert f"{number} is new; rate it once resolved" in out

    async with hq.client(hq.admin_token) as api:
        await api.ok("POST", f"/api/v1/tickets/{number}/transition", json={"action": "resolve"})
        other = await api.ok(
            "POST",
            "/api/v1/tickets",
            json={"title": "replace the UPS", "site": "shop-7", "agent_ids": [agent.agent_id]},
        )

    async def status_of() -> dict[str, str]:
        return {t.number: t.status for t in (await local_tickets(agent)).tickets}

    async def pushed() -> bool:
        seen = await status_of()
        return seen.get(number) == "resolved" and other["number"] in seen

    await wait_until(pushed, what="resolution and the new ticket pushed to the agent")
    code, out, _ = await cli(agent, "tickets")
    assert code == 0
    [line] = [x for x in out.splitlines() if number in x]
    assert "resolved" in line and f"fieldlink-agent rate {number}" in line
    assert "replace the UPS" in out

    code, out, err = await cli(agent, "rate", number, "4", "--comment", "quick fix")
    assert code == 0, err
    assert out.strip() == f"Thank you: {number} rated 4/5"
    async with hq.client(hq.admin_token) as api:
        ticket = await api.ok("GET", f"/api/v1/tickets/{number}")
    assert (ticket["rating"], ticket["rating_comment"]) == (4, "quick fix")

    code, out, _ = await cli(agent, "rate", number.lower(), "1")
    assert code == 1 and "rated already" in out
    code, out, _ = await cli(agent, "rate", other["number"], "5")
    assert code == 1 and "was not asked for from this machine" in out

    # Rated: the list no longer invites a rating.
    async def rated() -> bool:
        return any(t.rated for t in (await local_tickets(agent)).tickets if t.number == number)

    await wait_until(rated, what="rating pushed")

    # With HQ away a rating is saved and answered once HQ is back.
    await hq.stop()
    await until_linked(agent, up=False)
    code, out, err = await cli(agent, "rate", number, "2")
    assert code == 0, err
    assert "HQ is unreachable right now; your rating is saved on this machine" in out
    await hq.restart()

    async def late_answer() -> Any:
        rows = [r for r in (await local_tickets(agent)).requests if r.kind == "rating"]
        return rows[-1] if rows[-1].state == "answered" else None

    late = await wait_until(late_answer, what="the queued rating answered")
    assert late.ok is False and "rated already" in (late.message or "")


async def test_agent_not_running_is_a_clear_error(sqlite_hq, agent_factory):
    """Without a running agent the commands say so and exit 3; a stale socket
    left behind is replaced when the agent starts and removed when it stops."""
    agent = await agent_factory(sqlite_hq, run=False)
    code, out, err = await cli(agent, "help", "anyone there?")
    assert code == 3 and out == ""
    assert "the Fieldlink agent is not running on this machine" in err

    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(agent.dir.socket_file))
    stale.close()  # a socket file nobody answers on, as after a crash
    code, _, err = await cli(agent, "tickets")
    assert code == 3 and "not running" in err

    await agent.start()
    await until_linked(agent)
    mode = agent.dir.socket_file.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
    await agent.stop()
    assert not agent.dir.socket_file.exists()
    code, _, err = await cli(agent, "rate", "FL-1", "5")
    assert code == 3 and "not running" in err


async def test_a_second_agent_on_the_same_directory_refuses_to_start(sqlite_hq, agent_factory):
    """A daemon does not take over a socket another running agent answers on."""
    agent = await agent_factory(sqlite_hq)
    await until_linked(agent)
    second = Daemon(agent.dir)
    with pytest.raises(LocalError, match="another agent already answers"):
        await second.run(install_signals=False)
    assert (await local_status(agent)).connected


async def test_malformed_requests_get_errors_and_the_agent_carries_on(sqlite_hq, agent_factory):
    """Bad JSON, unknown ops, extra fields (a claimed user), blank text and an
    oversized line each get an error answer; the daemon keeps serving."""
    agent = await agent_factory(sqlite_hq)
    await until_linked(agent)

    def exchange(*lines: bytes) -> list[dict[str, Any]]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(str(agent.dir.socket_file))
            sock.sendall(b"".join(lines))
            sock.shutdown(socket.SHUT_WR)
            data = b""
            # After refusing an oversized line the agent hangs up with it unread,
            # which the kernel reports as a reset once the answer has been read.
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    data += chunk
        return [json.loads(line) for line in data.splitlines()]

    answers = await asyncio.to_thread(
        exchange,
        b"this is not json\n",
        b"[1, 2]\n",
        b'{"op": "reboot"}\n',
        b'{"op": "help", "text": "x", "user": "mallory"}\n',
        b'{"op": "help", "text": "   "}\n',
        b'{"op": "rate", "ticket": "FL-1", "score": 9}\n',
        b'{"op": "status"}',  # the last line may end with the client's EOF
    )
    codes = [a["type"] == "error" and a["error"]["code"] for a in answers]
    assert codes == ["bad_request"] * 6 + [False]
    messages = [a["error"]["message"] for a in answers[:6]]
    assert "JSON" in messages[0]
    assert "'reboot'" in messages[2] and "'help'" in messages[2]
    assert messages[3].startswith("help.user:")
    assert "say what the problem is" in messages[4]
    assert messages[5].startswith("rate.score:")
    assert answers[6]["type"] == "status" and answers[6]["caller"] == ME

    [big] = await asyncio.to_thread(exchange, b'{"op": "help", "text": "' + b"x" * 70_000 + b'"}\n')
    assert big["error"]["code"] == "too_large"
    assert not [f for f in agent.daemon.spool.pending() if f.kind == "help"]
    status = await local_status(agent)
    assert status.connected and status.agent_id == agent.agent_id


def _as_user(
    path: Path, uid: int, gid: int, groups: list[int], line: bytes
) -> tuple[str, dict[str, Any] | None]:
    """Connect to the socket from a child process running as another account."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the child only makes syscalls
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 0
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(60)
            try:
                sock.connect(str(path))
            except PermissionError:
                os.write(write_end, b"EACCES")
            else:
                sock.sendall(line)
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                os.write(write_end, data)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    data = b"".join(chunks)
    if data == b"EACCES":
        return "refused", None
    return "answered", json.loads(data)


def _open_folder() -> Path:
    """A folder any account can pass through (/tmp/pytest-of-root is 0700), so
    the socket's own mode and group are the only gate."""
    where = Path(tempfile.mkdtemp(prefix="fl-", dir="/tmp"))
    where.chmod(0o711)
    return where


async def test_socket_is_group_restricted_and_names_the_caller(sqlite_hq, agent_factory):
    """The socket is 0660 in the configured group (the config dir only
    traversable by it); the kernel's peer credentials name the asker, whatever
    the request says."""
    agent = await agent_factory(sqlite_hq)
    await until_linked(agent)
    info = agent.dir.socket_file.stat()
    assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == os.getgid()
    folder = agent.dir.path.stat()
    assert stat.S_IMODE(folder.st_mode) == 0o710 and folder.st_gid == os.getgid()
    for name in ("config.toml", "agent_key", "spool.db", "policy.toml"):
        assert stat.S_IMODE((agent.dir.path / name).stat().st_mode) & 0o077 == 0, name

    if not IS_ROOT:
        pytest.skip("checking other accounts needs root")
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrnam("daemon")
    where = _open_folder()
    try:
        other = await agent_factory(
            sqlite_hq, site="shop-2", local_socket=str(where / "agent.sock"), local_group="daemon"
        )
        path = where / "agent.sock"

        async def up() -> bool:
            try:
                answer = await ask(path, StatusRequest())
            except AgentUnavailable:  # still starting
                return False
            return isinstance(answer, StatusAnswer) and answer.connected

        await wait_until(up, what="second agent linked")
        info = path.stat()
        assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == group.gr_gid
        assert stat.S_IMODE(other.dir.path.stat().st_mode) == 0o700  # not its socket's dir

        status = b'{"op": "status"}\n'
        outsider = await asyncio.to_thread(_as_user, path, nobody.pw_uid, nobody.pw_gid, [], status)
        assert outsider == ("refused", None)
        member = await asyncio.to_thread(
            _as_user, path, nobody.pw_uid, nobody.pw_gid, [group.gr_gid], status
        )
        assert member[1] is not None and member[1]["caller"] == "nobody"

        asked = b'{"op": "help", "text": "keyboard types twice", "wait": 30}\n'
        kind, answer = await asyncio.to_thread(
            _as_user, path, nobody.pw_uid, nobody.pw_gid, [group.gr_gid], asked
        )
        assert kind == "answered" and answer is not None
        assert answer["state"] == "answered" and answer["ok"] is True
        async with sqlite_hq.client(sqlite_hq.admin_token) as api:
            ticket = await api.ok("GET", f"/api/v1/tickets/{answer['ticket']}")
        assert ticket["requester"] == f"nobody@{HOST}"
        assert ticket["agents"] == [other.agent_id]
        await other.stop()
        assert not path.exists()
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(where)


async def test_hq_answers_a_help_frame_of_only_whitespace(sqlite_hq, agent_factory):
    """A help frame whose text is blank (valid on the wire) gets a ticket, not a
    dropped channel that would bring the frame back after every reconnect."""
    agent = await agent_factory(sqlite_hq)
    await until_linked(agent)
    asked_at = datetime.now(UTC)

    def build(seq: int, dropped: int) -> bytes:
        return p.encode(p.Help(seq=seq, text=" \n\t", user="kiosk", asked_at=asked_at))

    spool = agent.daemon.spool
    await asyncio.to_thread(spool.append, "help", build, Asked("kiosk", "(blank)"))
    agent.daemon.telemetry.notify()

    async def answered() -> Any:
        [row] = (await local_tickets(agent)).requests
        return row.ticket if row.state == "answered" else None

    number = await wait_until(answered, what="the blank request answered")
    async with sqlite_hq.client(sqlite_hq.admin_token) as api:
        ticket = await api.ok("GET", f"/api/v1/tickets/{number}")
    assert ticket["title"] == "help requested" and ticket["requester"] == f"kiosk@{HOST}"


async def test_a_full_ticket_list_of_long_titles_reaches_the_agent(sqlite_hq, agent_factory):
    """HQ's longest list (50 tickets, 300-character titles of 4-byte characters)
    is past 64 KiB; the agent takes it and keeps its link."""
    agent = await agent_factory(sqlite_hq, site="shop-3")
    await until_linked(agent)
    async with sqlite_hq.client(sqlite_hq.admin_token) as api:
        for i in range(50):
            title = f"{i:02d} " + "\N{PRINTER}" * 297
            await api.ok(
                "POST",
                "/api/v1/tickets",
                json={"title": title, "site": "shop-3", "agent_ids": [agent.agent_id]},
            )

    async def all_there() -> bool:
        return len((await local_tickets(agent)).tickets) == 50

    await wait_until(all_there, what="the full list on the agent")
    answer = await local_tickets(agent)
    assert len(p.encode(p.Tickets(items=answer.tickets))) > 64 * 1024
    assert answer.connected
