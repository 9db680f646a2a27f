"""Files on a machine during a session of kind `files` (SFTP, within the
agent's file roots): download and upload, streamed, each audited with its
size and SHA-256."""

from __future__ import annotations

import contextlib
import hashlib

import asyncssh
from aiohttp import web
from pydantic import BaseModel, Field

from server.api.terminal import audit_session, own_active
from server.auth.principal import Principal
from server.itsm.tickets import number_text
from server.store.models import RemoteSession, Ticket
from server.views.sessions import readable_session
from server.web.act import fetch
from server.web.authn import principal
from server.web.keys import DB, LINKS
from server.web.routing import ApiRouter, json_response, query
from shared import protocol as p
from shared.errors import Conflict, FieldlinkError, Forbidden, Invalid, NotFound

routes = ApiRouter("sessions")
MAX_FILE_BYTES = 100 * 1024 * 1024


# --- files -------------------------------------------------------------------------------------


class FileQuery(BaseModel):
    path: str = Field(min_length=1, max_length=4096, pattern=r"^/")


async def _files_session(request: web.Request, write: bool) -> RemoteSession:
    rs, who = await fetch(request, readable_session)
    own_active(rs, who, "files", "moves files in it", "a files session")
    perm = "files:write" if write else "files:read"
    if not who.allowed(perm, rs.site_id):
        raise Forbidden(f"this needs {perm} on the machine's site")
    return rs


async def _sftp(app: web.Application, rs: RemoteSession) -> asyncssh.SFTPClient:
    link = app[LINKS].get(rs.agent_id)
    if link is None:
        raise Conflict("the machine is not connected")
    async with app[DB]() as session:
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
    app: web.Application,
    who: Principal,
    rs: RemoteSession,
    action: str,
    path: str,
    size: int,
    digest: str,
    outcome: str = "success",
) -> None:
    details = {"path": path, "bytes": size, "sha256": digest, "agent_id": rs.agent_id}
    async with app[DB].begin() as session:
        await audit_session(session, who, action, rs, details, outcome)


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
    app = request.app
    who = principal(request)
    q = query(request, FileQuery)
    rs = await _files_session(request, write=False)
    sftp = await _sftp(app, rs)
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
    await _audit_file(app, who, rs, "files.get", q.path, size, sha.hexdigest())
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
    app = request.app
    who = principal(request)
    q = query(request, FileQuery)
    rs = await _files_session(request, write=True)
    sftp = await _sftp(app, rs)
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
    await _audit_file(app, who, rs, "files.put", q.path, size, sha.hexdigest())
    return json_response({"path": q.path, "bytes": size, "sha256": sha.hexdigest()}, status=201)
