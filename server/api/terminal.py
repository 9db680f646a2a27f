"""A session's terminal: the WebSocket that bridges the engineer's keystrokes to
the machine's shell (or lets others watch it read-only), and the recording
of a shell session, replayable afterwards."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any
from urllib.parse import urlsplit

import asyncssh
import structlog
from aiohttp import WSMsgType, web
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from server.api.sessions import sessions_of
from server.auth.principal import Principal
from server.engine.remote import Sessions
from server.engine.shells import LiveShell
from server.itsm.consent import FINAL
from server.store import recording
from server.store.models import RemoteSession, Ticket
from server.views.sessions import readable_session
from server.web.act import act, audit, fetch
from server.web.authn import principal
from server.web.keys import CONFIG, DB
from server.web.routing import ApiRouter, query
from shared.errors import Conflict, Forbidden, NotFound

routes = ApiRouter("sessions")
log = structlog.get_logger(__name__)


# --- the terminal ---------------------------------------------------------------------------


class TerminalQuery(BaseModel):
    watch: bool = Field(
        False, description="read-only: the output, for users with rights on the site"
    )
    cols: int = Field(80, ge=10, le=1000)
    rows: int = Field(24, ge=5, le=1000)
    term: str = Field("xterm-256color", pattern=r"^[A-Za-z0-9._+-]{1,40}$")


async def audit_session(
    session: AsyncSession,
    who: Principal,
    action: str,
    rs: RemoteSession,
    details: dict[str, Any],
    outcome: str = "success",
) -> None:
    """An audit entry on a remote session (its site and ticket), by the caller."""
    target = ("session", rs.id)
    await audit(
        session,
        who,
        action,
        target,
        site_id=rs.site_id,
        ticket_id=rs.ticket_id,
        details=details,
        outcome=outcome,
    )


def own_active(rs: RemoteSession, who: Principal, kind: str, doing: str, what: str) -> None:
    """The caller is the session's engineer (else 403: only it `doing`), and the
    session is an active one of `kind` (else 409)."""
    if rs.requested_by != who.user_id:
        raise Forbidden(f"only the session's engineer {doing}")
    if rs.kind != kind:
        raise Conflict(f"this is a {rs.kind} session, not {what}")
    if rs.state != "active":
        raise Conflict(f"the session is {rs.state}")


def _check_origin(request: web.Request, who: Principal) -> None:
    """Cookie-authenticated WebSockets must come from our own pages."""
    origin = request.headers.get("Origin")
    if who.via == "session" and origin and urlsplit(origin).netloc != request.host:
        raise Forbidden("cross-origin WebSocket refused")


@routes.route(
    "GET",
    "/api/v1/sessions/{session_id}/terminal",
    errors=(409,),
    permission="tickets:read",
    query=TerminalQuery,
    websocket=True,
    content_type="application/octet-stream",
    summary="WebSocket to the session's shell: binary frames carry output (and input); "
    'text frames carry {"type": "input"|"resize"|"end", ...} from the client and '
    '{"type": "status"|"closed", ...} from HQ. `watch=1` is read-only.',
)
async def terminal(request: web.Request) -> web.StreamResponse:
    app = request.app
    who = principal(request)
    q = query(request, TerminalQuery)
    _check_origin(request, who)
    manager = sessions_of(request)
    async with act(request, readable_session) as (session, rs, _):
        ticket = await session.get(Ticket, rs.ticket_id)
        assert ticket is not None
    if q.watch:
        if not (
            who.allowed("sessions:consent", rs.site_id)
            or who.allowed("shell:open", rs.site_id)
            or who.allowed("audit:read", rs.site_id)
        ):
            raise Forbidden("watching needs sessions:consent or shell:open on this site")
        return await _watch(request, manager, rs)
    own_active(rs, who, "shell", "types in it; others can watch", "a shell")
    shell = await manager.open_shell(rs, ticket.number, term=q.term, cols=q.cols, rows=q.rows)
    ws = web.WebSocketResponse(heartbeat=20, max_msg_size=1024 * 1024)
    await ws.prepare(request)
    async with app[DB].begin() as session:
        live = await session.get(RemoteSession, rs.id)
        assert live is not None
        await audit_session(session, who, "session.terminal_open", rs, {"term": q.term})
    await ws.send_str(json.dumps({"type": "status", "state": "active", "session": rs.id}))
    reason, state = await _bridge(ws, shell, manager)
    if manager.shells.get(rs.id) is shell:
        by = who.username if state == "ended" else "machine"
        await manager.end(rs.id, reason, by=by, actor=who.actor(), state=state)
    else:  # another end (the site, the ticket, an admin) closed the shell: say theirs
        reason = await _end_reason(app, manager, rs.id, reason)
    if not ws.closed:
        await ws.send_str(json.dumps({"type": "closed", "reason": reason}))
        await ws.close()
    return ws


async def _end_reason(
    app: web.Application, manager: Sessions, session_id: str, fallback: str
) -> str:
    """Why the session ended, once whoever is ending it has recorded it."""
    for _ in range(10):
        async with app[DB]() as session:
            rs = await session.get(RemoteSession, session_id)
        if rs is None or rs.state in FINAL:
            return rs.end_reason or fallback if rs is not None else fallback
        await manager.wait_change(session_id, 0.5)
    return fallback


async def _machine_error(process: asyncssh.SSHClientProcess[bytes]) -> str:
    """What the machine wrote on the shell channel's stderr. A shell's own
    output goes through its terminal (stdout), so text here is the agent
    refusing the shell or failing to start it."""
    try:
        data = await asyncio.wait_for(process.stderr.read(4096), 2.0)
    except (TimeoutError, asyncssh.Error, OSError):
        return ""
    return data.decode(errors="replace").strip().removeprefix("fieldlink-agent: ")


async def _bridge(
    ws: web.WebSocketResponse, shell: LiveShell, manager: Sessions
) -> tuple[str, str]:
    """Copy bytes both ways until one side ends; returns why it ended and the
    session's final state (`failed` when the machine refused the shell)."""
    process = shell.process
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[tuple[str, str]] = loop.create_future()

    def finish(why: str, state: str = "ended") -> None:
        if not ended.done():
            ended.set_result((why, state))

    async def from_machine() -> None:
        last_flush = loop.time()
        try:
            while True:
                data = await process.stdout.read(65536)
                if not data:
                    problem = await _machine_error(process)
                    if problem:
                        finish(f"the machine refused the shell: {problem}", "failed")
                    else:
                        finish("the shell exited")
                    return
                shell.recorder.output(data)
                if loop.time() - last_flush > 2.0:
                    shell.recorder.flush()
                    last_flush = loop.time()
                shell.broadcast(data)
                await ws.send_bytes(data)
        except recording.RecordingError as exc:
            log.error("recording_failed", session_id=shell.session_id, error=str(exc))
            finish("the recording could not be written; the session was stopped")
        except (asyncssh.Error, OSError, ConnectionError) as exc:
            finish(f"the connection to the machine was lost ({exc})")

    async def from_engineer() -> None:
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    _input(shell, msg.data)
                elif msg.type == WSMsgType.TEXT:
                    try:
                        cmd = json.loads(msg.data)
                    except ValueError:
                        continue
                    if not isinstance(cmd, dict):
                        continue
                    if cmd.get("type") == "input" and isinstance(cmd.get("data"), str):
                        _input(shell, cmd["data"].encode())
                    elif cmd.get("type") == "resize":
                        cols, rows = int(cmd.get("cols", 80)), int(cmd.get("rows", 24))
                        if 10 <= cols <= 1000 and 5 <= rows <= 1000:
                            process.change_terminal_size(cols, rows)
                            shell.recorder.resize(cols, rows)
                    elif cmd.get("type") == "end":
                        finish("ended by the engineer")
                        return
            finish("the engineer disconnected")
        except recording.RecordingError:
            finish("the recording could not be written; the session was stopped")
        except (asyncssh.Error, OSError, ValueError) as exc:
            finish(f"the shell stopped ({exc})")

    tasks = [asyncio.create_task(from_machine()), asyncio.create_task(from_engineer())]
    try:
        return await ended
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if manager.shells.get(shell.session_id) is shell:
            shell.process.close()


def _input(shell: LiveShell, data: bytes) -> None:
    if shell.record_input:
        shell.recorder.input(data)
    shell.process.stdin.write(data)


async def _watch(request: web.Request, manager: Sessions, rs: RemoteSession) -> web.StreamResponse:
    ws = web.WebSocketResponse(heartbeat=20)
    await ws.prepare(request)
    shell = manager.shells.get(rs.id)
    await ws.send_str(
        json.dumps(
            {"type": "status", "state": rs.state, "session": rs.id, "live": shell is not None}
        )
    )
    if shell is None:
        await ws.send_str(json.dumps({"type": "closed", "reason": "no terminal is open"}))
        await ws.close()
        return ws
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    if shell.backlog:
        queue.put_nowait(bytes(shell.backlog))
    shell.watchers.add(queue)

    async def drain_client() -> None:
        async for _ in ws:  # read-only: whatever the watcher sends is dropped
            pass

    reader = asyncio.create_task(drain_client())
    try:
        while True:
            data = await queue.get()
            if data is None:
                break
            await ws.send_bytes(data)
    finally:
        shell.watchers.discard(queue)
        reader.cancel()
    if not ws.closed:
        await ws.send_str(json.dumps({"type": "closed", "reason": "the session ended"}))
        await ws.close()
    return ws


# --- recordings ------------------------------------------------------------------------------


@routes.route(
    "GET",
    "/api/v1/sessions/{session_id}/recording",
    errors=(409,),
    permission="audit:read",
    content_type="application/x-asciicast",
    summary="The session's recording (asciicast v2), decrypted and verified; reading it is audited",
)
async def get_recording(request: web.Request) -> web.Response:
    app = request.app
    rs, who = await fetch(request, readable_session)
    if not (who.allowed("audit:read", rs.site_id) and who.allowed("tickets:read", rs.site_id)):
        raise NotFound("not found")
    if rs.recording_sha256 is None:
        raise NotFound("this session has no recording", code="no_recording")
    path = app[CONFIG].recordings / f"{rs.id}.cast.enc"
    problem = None
    try:
        plain = await asyncio.to_thread(recording.read, path, app[CONFIG].master_key, rs.id)
        if hashlib.sha256(plain).hexdigest() != rs.recording_sha256:
            problem = "the recording does not match the hash recorded when it was made"
    except recording.RecordingError as exc:
        problem = str(exc)
    async with app[DB].begin() as session:
        await audit_session(
            session,
            who,
            "session.recording_read",
            rs,
            {"problem": problem} if problem else {"sha256": rs.recording_sha256},
            outcome="failure" if problem else "success",
        )
    if problem is not None:
        raise Conflict(f"recording integrity check failed: {problem}", code="recording_tampered")
    return web.Response(
        body=plain,
        content_type="application/x-asciicast",
        headers={"X-Fieldlink-Recording-SHA256": rs.recording_sha256},
    )
