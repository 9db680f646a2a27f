"""Remote sessions: request, consent, accept a site's request, end; the
terminal WebSocket (and read-only watch); recordings; file transfer.

No ticket, no session: every session belongs to an open ticket on the
machine's site, needs `sessions:request` plus the kind's permission, and a
TOTP code verified within the last few minutes (step-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from datetime import datetime
from typing import Literal
from urllib.parse import urlsplit

import asyncssh
import structlog
from aiohttp import WSMsgType, web
from pydantic import BaseModel, Field
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from server import recording
from server.api.authn import Principal, principal
from server.api.routing import ApiRouter, body, json_response, query
from server.audit import Event
from server.context import Services, services
from server.itsm.consent import FINAL, LIVE
from server.itsm.tickets import OPEN, number_text
from server.sessions import KIND_PERMISSION, LiveShell, Sessions
from server.store import auditlog, fleet, tickets
from server.store.models import Agent, RemoteSession, Ticket
from shared import protocol as p
from shared.errors import Conflict, FieldlinkError, Forbidden, Invalid, NotFound, Unauthorized

routes = ApiRouter("sessions")
log = structlog.get_logger(__name__)

Kind = Literal["shell", "exec", "files"]
MAX_FILE_BYTES = 100 * 1024 * 1024


def sessions_of(request: web.Request) -> Sessions:
    return services(request).remote


class SessionRequest(BaseModel):
    agent_id: str
    ticket_id: str = Field(description="id or number (FL-N) of an open ticket on the agent's site")
    kind: Kind = "shell"
    reason: str = Field("", max_length=2000)
    max_minutes: int = Field(60, ge=1, le=480)


class SessionOut(BaseModel):
    id: str
    agent_id: str
    hostname: str | None
    site_id: str
    ticket_id: str
    ticket: str
    kind: str
    state: str
    origin: str
    reason: str
    max_minutes: int
    requested_by: str
    consent_required: bool
    consent_by: str | None
    consent_via: str | None
    consent_at: datetime | None
    expires_at: datetime | None
    started_at: datetime | None
    ends_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None
    ended_by: str | None
    recording: bool
    recording_sha256: str | None
    created_at: datetime


class SessionList(BaseModel):
    items: list[SessionOut]
    next: str | None = None


async def session_out(session: AsyncSession, rs: RemoteSession) -> SessionOut:
    ticket = await session.get(Ticket, rs.ticket_id)
    agent = await session.get(Agent, rs.agent_id)
    return SessionOut(
        id=rs.id,
        agent_id=rs.agent_id,
        hostname=agent.hostname if agent else None,
        site_id=rs.site_id,
        ticket_id=rs.ticket_id,
        ticket=number_text(ticket.number) if ticket else "?",
        kind=rs.kind,
        state=rs.state,
        origin=rs.origin,
        reason=rs.reason,
        max_minutes=rs.max_minutes,
        requested_by=rs.requested_by_name,
        consent_required=rs.consent_required,
        consent_by=rs.consent_by,
        consent_via=rs.consent_via,
        consent_at=rs.consent_at,
        expires_at=rs.expires_at,
        started_at=rs.started_at,
        ends_at=rs.ends_at,
        ended_at=rs.ended_at,
        end_reason=rs.end_reason,
        ended_by=rs.ended_by,
        recording=rs.recording_sha256 is not None,
        recording_sha256=rs.recording_sha256,
        created_at=rs.created_at,
    )


def require_step_up(svc: Services, who: Principal) -> None:
    if not who.mfa_within(svc.settings.step_up_minutes):
        raise Unauthorized(
            f"a TOTP code verified within the last {svc.settings.step_up_minutes:g} minutes is "
            'needed: POST /api/v1/auth/step-up {"code"}',
            code="step_up_required",
        )


def require_kind(who: Principal, kind: str, site_id: str) -> None:
    needed = ("sessions:request", *KIND_PERMISSION[kind])
    missing = [perm for perm in needed if not who.allowed(perm, site_id)]
    if missing:
        raise Forbidden(f"a {kind} session needs {', '.join(missing)} on this site")


def check_agent_policy(agent: Agent, kind: str) -> None:
    """What the machine itself says it will refuse, refused early with its reason."""
    pol = agent.policy or {}
    if kind == "shell" and pol.get("allow_shell") is False:
        raise Conflict("this machine's policy does not allow shells (allow_shell = false)")
    if kind == "exec" and pol.get("allow_exec") is False:
        raise Conflict("this machine's policy does not allow plain commands (allow_exec = false)")
    if kind == "exec" and pol.get("allowed_programs") == []:
        raise Conflict(
            "this machine's policy lets plain commands run no program: allow_shell = false "
            "and its allowed_programs is empty (docs/agent-runs.md#plain-commands-the-allow-list)"
        )


@routes.route(
    "POST",
    "/api/v1/sessions",
    errors=(404, 409),
    permission="sessions:request",
    body=SessionRequest,
    response=SessionOut,
    status=201,
    summary="Request a remote session on a machine for an open ticket (step-up 2FA)",
)
async def create_session(request: web.Request) -> web.Response:
    svc = services(request)
    who = principal(request)
    req = body(request, SessionRequest)
    async with svc.sessions.begin() as session:
        found = await fleet.get_agent(session, req.agent_id)
        if found is None or not who.allowed("agents:read", found[0].site_id):
            raise NotFound("not found")
        agent = found[0]
        require_kind(who, req.kind, agent.site_id)
        ticket = await tickets.find(session, req.ticket_id)
        if ticket is None or not who.allowed("tickets:read", ticket.site_id):
            raise Invalid("unknown ticket", fields={"ticket_id": "no such ticket"})
        if ticket.site_id != agent.site_id:
            raise Invalid(
                "the ticket belongs to another site",
                fields={"ticket_id": "not on the machine's site"},
            )
        if ticket.status not in OPEN:
            raise Invalid(
                f"ticket {number_text(ticket.number)} is {ticket.status}",
                fields={"ticket_id": "must be open"},
            )
        if agent.revoked_at is not None:
            raise Conflict("the agent is revoked")
        check_agent_policy(agent, req.kind)
        require_step_up(svc, who)
        rs = await sessions_of(request).request(
            session,
            agent=agent,
            ticket=ticket,
            kind=req.kind,
            reason=req.reason,
            max_minutes=req.max_minutes,
            requested_by=who.user_id,
            requested_by_name=who.username,
            actor=who.actor(),
        )
        out = await session_out(session, rs)
    await sessions_of(request).push(rs)
    return json_response(out, status=201)


class ListQuery(BaseModel):
    ticket: str | None = None
    state: str | None = Field(None, description="a state, or comma-separated states")
    origin: Literal["hq", "site"] | None = None
    agent_id: str | None = None
    active: bool = False
    limit: int = Field(100, ge=1, le=1000)


def _visible_sites(who: Principal) -> frozenset[str] | None:
    tickets_scope = who.sites("tickets:read")
    agents_scope = who.sites("agents:read")
    if tickets_scope is None:
        return agents_scope
    if agents_scope is None:
        return tickets_scope
    return tickets_scope & agents_scope


@routes.route(
    "GET",
    "/api/v1/sessions",
    permission="tickets:read",
    query=ListQuery,
    response=SessionList,
    summary="Sessions you can see; `state=requested&origin=site` is the queue of "
    "sites asking for help",
)
async def list_sessions(request: web.Request) -> web.Response:
    async with services(request).sessions() as session:
        items = await find_sessions(session, principal(request), query(request, ListQuery))
    return json_response(SessionList(items=items))


async def find_sessions(session: AsyncSession, who: Principal, q: ListQuery) -> list[SessionOut]:
    """The API's and the console's session list: the caller's sites, filtered, newest first."""
    scope = _visible_sites(who)
    stmt = select(RemoteSession)
    if scope is not None:
        # and the sessions on the caller's own requests (site staff asking for help)
        own = select(Ticket.id).where(Ticket.requester_id == who.user_id)
        stmt = stmt.where(or_(RemoteSession.site_id.in_(scope), RemoteSession.ticket_id.in_(own)))
    if q.ticket:
        ticket = await tickets.find(session, q.ticket)
        stmt = stmt.where(RemoteSession.ticket_id == (ticket.id if ticket else "-"))
    if q.state:
        stmt = stmt.where(RemoteSession.state.in_(q.state.split(",")))
    if q.active:
        stmt = stmt.where(RemoteSession.state.in_(sorted(LIVE)))
    if q.origin:
        stmt = stmt.where(RemoteSession.origin == q.origin)
    if q.agent_id:
        stmt = stmt.where(RemoteSession.agent_id == q.agent_id)
    rows = (
        await session.scalars(stmt.order_by(RemoteSession.created_at.desc()).limit(q.limit))
    ).all()
    return [await session_out(session, rs) for rs in rows]


async def load_session(session: AsyncSession, request: web.Request) -> RemoteSession:
    return await readable_session(session, principal(request), request.match_info["session_id"])


async def readable_session(session: AsyncSession, who: Principal, session_id: str) -> RemoteSession:
    """A session the caller may see (its site's tickets, its own, or one on a
    ticket the caller asked for); else 404."""
    rs = await session.get(RemoteSession, session_id)
    if rs is None:
        raise NotFound("not found")
    if not (
        who.sees_all_tickets(rs.site_id)
        or rs.requested_by == who.user_id
        or await _asked_by(session, who, rs)
    ):
        raise NotFound("not found")
    return rs


async def _asked_by(session: AsyncSession, who: Principal, rs: RemoteSession) -> bool:
    """Whether `rs` is on a ticket the caller opened (their own request)."""
    ticket = await session.get(Ticket, rs.ticket_id)
    return ticket is not None and ticket.requester_id == who.user_id


class GetQuery(BaseModel):
    wait: float = Field(
        0,
        ge=0,
        le=30,
        description="hold the answer until the state changes (or this many seconds pass)",
    )
    state: str | None = Field(None, description="with wait: the state the caller last saw")


@routes.route(
    "GET",
    "/api/v1/sessions/{session_id}",
    permission="tickets:read",
    query=GetQuery,
    response=SessionOut,
    summary="A session (optionally waiting for its next change)",
)
async def get_session(request: web.Request) -> web.Response:
    q = query(request, GetQuery)
    svc = services(request)
    async with svc.sessions() as session:
        rs = await load_session(session, request)
    if q.wait and (q.state is None or q.state == rs.state) and rs.state not in FINAL:
        await sessions_of(request).wait_change(rs.id, q.wait)
    async with svc.sessions() as session:
        rs = await load_session(session, request)
        out = await session_out(session, rs)
    return json_response(out)


class ConsentRequest(BaseModel):
    approve: bool


@routes.route(
    "POST",
    "/api/v1/sessions/{session_id}/consent",
    errors=(409,),
    permission="sessions:consent",
    body=ConsentRequest,
    response=SessionOut,
    summary="Approve or deny a session for your site",
)
async def consent(request: web.Request) -> web.Response:
    svc = services(request)
    who = principal(request)
    req = body(request, ConsentRequest)
    async with svc.sessions.begin() as session:
        rs = await load_session(session, request)
        who.require("sessions:consent", rs.site_id)
        if rs.requested_by == who.user_id:
            raise Forbidden("you cannot consent to your own session")
        await sessions_of(request).answer(
            session, rs, req.approve, by=who.username, via="user", actor=who.actor()
        )
        out = await session_out(session, rs)
    await sessions_of(request).push(rs)
    return json_response(out)


@routes.route(
    "POST",
    "/api/v1/sessions/{session_id}/accept",
    errors=(409,),
    permission="sessions:request",
    response=SessionOut,
    summary="Take a session a site asked for (same rights and step-up as a request)",
)
async def accept(request: web.Request) -> web.Response:
    svc = services(request)
    who = principal(request)
    async with svc.sessions.begin() as session:
        rs = await load_session(session, request)
        require_kind(who, rs.kind, rs.site_id)
        agent = await session.get(Agent, rs.agent_id)
        if agent is not None:
            check_agent_policy(agent, rs.kind)
        require_step_up(svc, who)
        await sessions_of(request).accept_offer(
            session, rs, user_id=who.user_id, username=who.username, actor=who.actor()
        )
        out = await session_out(session, rs)
    await sessions_of(request).push(rs)
    return json_response(out)


class EndRequest(BaseModel):
    reason: str = Field("ended by the engineer", max_length=500)


@routes.route(
    "POST",
    "/api/v1/sessions/{session_id}/end",
    permission="tickets:read",
    body=EndRequest,
    response=SessionOut,
    summary="End a session: its engineer, whoever asked for it at the site, or an admin "
    "or site technician of its site",
)
async def end_session(request: web.Request) -> web.Response:
    svc = services(request)
    who = principal(request)
    req = body(request, EndRequest)
    async with svc.sessions() as session:
        rs = await load_session(session, request)
        asked = rs.origin == "site" and await _asked_by(session, who, rs)
    if (
        rs.requested_by != who.user_id
        and not asked
        and not (
            who.allowed("sessions:consent", rs.site_id) or who.allowed("users:admin", rs.site_id)
        )
    ):
        raise Forbidden(
            "only the session's engineer, whoever asked for it, an admin or the site's "
            "technician can end it"
        )
    await sessions_of(request).end(rs.id, req.reason, by=who.username, actor=who.actor())
    async with svc.sessions() as session:
        out = await session_out(session, await load_session(session, request))
    return json_response(out)


# --- the terminal ---------------------------------------------------------------------------


class TerminalQuery(BaseModel):
    watch: bool = Field(
        False, description="read-only: the output, for users with rights on the site"
    )
    cols: int = Field(80, ge=10, le=1000)
    rows: int = Field(24, ge=5, le=1000)
    term: str = Field("xterm-256color", pattern=r"^[A-Za-z0-9._+-]{1,40}$")


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
    svc = services(request)
    who = principal(request)
    q = query(request, TerminalQuery)
    _check_origin(request, who)
    manager = sessions_of(request)
    async with svc.sessions() as session:
        rs = await load_session(session, request)
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
    if rs.requested_by != who.user_id:
        raise Forbidden("only the session's engineer types in it; others can watch")
    if rs.kind != "shell":
        raise Conflict(f"this is a {rs.kind} session, not a shell")
    if rs.state != "active":
        raise Conflict(f"the session is {rs.state}")
    shell = await manager.open_shell(rs, ticket.number, term=q.term, cols=q.cols, rows=q.rows)
    ws = web.WebSocketResponse(heartbeat=20, max_msg_size=1024 * 1024)
    await ws.prepare(request)
    async with svc.sessions.begin() as session:
        live = await session.get(RemoteSession, rs.id)
        assert live is not None
        await auditlog.append(
            session,
            who.actor(),
            Event(
                "session.terminal_open",
                target_type="session",
                target_id=rs.id,
                site_id=rs.site_id,
                ticket_id=rs.ticket_id,
                details={"term": q.term},
            ),
        )
    await ws.send_str(json.dumps({"type": "status", "state": "active", "session": rs.id}))
    reason, state = await _bridge(ws, shell, manager)
    if manager.shells.get(rs.id) is shell:
        by = who.username if state == "ended" else "machine"
        await manager.end(rs.id, reason, by=by, actor=who.actor(), state=state)
    else:  # another end (the site, the ticket, an admin) closed the shell: say theirs
        reason = await _end_reason(svc, manager, rs.id, reason)
    if not ws.closed:
        await ws.send_str(json.dumps({"type": "closed", "reason": reason}))
        await ws.close()
    return ws


async def _end_reason(svc: Services, manager: Sessions, session_id: str, fallback: str) -> str:
    """Why the session ended, once whoever is ending it has recorded it."""
    for _ in range(10):
        async with svc.sessions() as session:
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
    svc = services(request)
    who = principal(request)
    async with svc.sessions() as session:
        rs = await load_session(session, request)
    if not (who.allowed("audit:read", rs.site_id) and who.allowed("tickets:read", rs.site_id)):
        raise NotFound("not found")
    if rs.recording_sha256 is None:
        raise NotFound("this session has no recording", code="no_recording")
    path = svc.datadir.path / "recordings" / f"{rs.id}.cast.enc"
    problem = None
    try:
        plain = await asyncio.to_thread(recording.read, path, svc.master_key, rs.id)
        if hashlib.sha256(plain).hexdigest() != rs.recording_sha256:
            problem = "the recording does not match the hash recorded when it was made"
    except recording.RecordingError as exc:
        problem = str(exc)
    async with svc.sessions.begin() as session:
        await auditlog.append(
            session,
            who.actor(),
            Event(
                "session.recording_read",
                outcome="failure" if problem else "success",
                target_type="session",
                target_id=rs.id,
                site_id=rs.site_id,
                ticket_id=rs.ticket_id,
                details={"problem": problem} if problem else {"sha256": rs.recording_sha256},
            ),
        )
    if problem is not None:
        raise Conflict(f"recording integrity check failed: {problem}", code="recording_tampered")
    return web.Response(
        body=plain,
        content_type="application/x-asciicast",
        headers={"X-Fieldlink-Recording-SHA256": rs.recording_sha256},
    )


# --- files -------------------------------------------------------------------------------------


class FileQuery(BaseModel):
    path: str = Field(min_length=1, max_length=4096, pattern=r"^/")


async def _files_session(request: web.Request, write: bool) -> RemoteSession:
    who = principal(request)
    async with services(request).sessions() as session:
        rs = await load_session(session, request)
    if rs.requested_by != who.user_id:
        raise Forbidden("only the session's engineer moves files in it")
    if rs.kind != "files":
        raise Conflict(f"this is a {rs.kind} session, not a files session")
    if rs.state != "active":
        raise Conflict(f"the session is {rs.state}")
    perm = "files:write" if write else "files:read"
    if not who.allowed(perm, rs.site_id):
        raise Forbidden(f"this needs {perm} on the machine's site")
    return rs


async def _sftp(svc: Services, rs: RemoteSession) -> asyncssh.SFTPClient:
    link = svc.gateway.registry.get(rs.agent_id)
    if link is None:
        raise Conflict("the machine is not connected")
    async with svc.sessions() as session:
        ticket = await session.get(Ticket, rs.ticket_id)
    env = {
        p.SESSION_ENV: rs.id,
        p.TICKET_ENV: number_text(ticket.number) if ticket else "",
        p.ENGINEER_ENV: rs.requested_by_name,
    }
    try:
        return await link.conn.start_sftp_client(env=env)
    except (asyncssh.Error, OSError) as exc:
        raise Conflict(f"the machine refused file transfer: {exc}") from exc


def _sftp_error(exc: Exception) -> FieldlinkError:
    if isinstance(exc, asyncssh.SFTPNoSuchFile):
        return NotFound("no such file on the machine", fields={"path": "not found"})
    if isinstance(exc, asyncssh.SFTPPermissionDenied):
        return Forbidden(f"the machine refused: {exc.reason}", fields={"path": exc.reason})
    if isinstance(exc, asyncssh.SFTPError):
        return Conflict(f"the machine refused: {exc.reason}")
    return Conflict(f"file transfer failed: {exc}")


async def _audit_file(
    svc: Services,
    who: Principal,
    rs: RemoteSession,
    action: str,
    path: str,
    size: int,
    digest: str,
    outcome: str = "success",
) -> None:
    async with svc.sessions.begin() as session:
        await auditlog.append(
            session,
            who.actor(),
            Event(
                action,
                outcome=outcome,
                target_type="session",
                target_id=rs.id,
                site_id=rs.site_id,
                ticket_id=rs.ticket_id,
                details={"path": path, "bytes": size, "sha256": digest, "agent_id": rs.agent_id},
            ),
        )


@routes.route(
    "GET",
    "/api/v1/sessions/{session_id}/files",
    errors=(409,),
    permission="files:read",
    query=FileQuery,
    content_type="application/octet-stream",
    summary="Download a file from the machine (within its policy's file roots)",
)
async def download(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    who = principal(request)
    q = query(request, FileQuery)
    rs = await _files_session(request, write=False)
    sftp = await _sftp(svc, rs)
    sha = hashlib.sha256()
    size = 0
    try:
        try:
            attrs = await sftp.stat(q.path)
            if attrs.size is not None and attrs.size > MAX_FILE_BYTES:
                raise Invalid("file too large", fields={"path": f"over {MAX_FILE_BYTES} bytes"})
            remote = await sftp.open(q.path, "rb")
        except (asyncssh.Error, OSError) as exc:
            raise _sftp_error(exc) from exc
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        async with remote:
            while True:
                chunk: bytes = await remote.read(256 * 1024)  # "rb": bytes
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_FILE_BYTES:
                    break
                sha.update(chunk)
                await resp.write(chunk)
        await resp.write_eof()
    finally:
        sftp.exit()
    await _audit_file(svc, who, rs, "files.get", q.path, size, sha.hexdigest())
    return resp


@routes.route(
    "PUT",
    "/api/v1/sessions/{session_id}/files",
    errors=(409,),
    permission="files:write",
    query=FileQuery,
    content_type="application/octet-stream",
    summary="Upload a file to the machine (within its policy's file roots)",
)
async def upload(request: web.Request) -> web.Response:
    svc = services(request)
    who = principal(request)
    q = query(request, FileQuery)
    rs = await _files_session(request, write=True)
    sftp = await _sftp(svc, rs)
    sha = hashlib.sha256()
    size = 0
    try:
        try:
            remote = await sftp.open(q.path, "wb")
        except (asyncssh.Error, OSError) as exc:
            raise _sftp_error(exc) from exc
        try:
            async with remote:
                async for chunk in request.content.iter_chunked(256 * 1024):
                    size += len(chunk)
                    if size > MAX_FILE_BYTES:
                        raise Invalid(
                            "file too large", fields={"body": f"over {MAX_FILE_BYTES} bytes"}
                        )
                    sha.update(chunk)
                    try:
                        await remote.write(chunk)
                    except (asyncssh.Error, OSError) as exc:
                        raise _sftp_error(exc) from exc
        except BaseException:
            # never leave half a file behind on the machine
            with contextlib.suppress(asyncssh.Error, OSError):
                await sftp.remove(q.path)
            raise
    finally:
        sftp.exit()
    await _audit_file(svc, who, rs, "files.put", q.path, size, sha.hexdigest())
    return json_response({"path": q.path, "bytes": size, "sha256": sha.hexdigest()}, status=201)
