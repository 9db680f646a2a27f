"""`fieldlink files get|put AGENT SRC DST --ticket FL-N`: one file through the
machine's SFTP subsystem, inside a `files` session of its own.

The session is asked for like a shell (step-up 2FA, the site's consent; see
sessions.py), the file streams through HQ in chunks both ways (never whole in
memory), and the session is ended afterwards whatever happened. The command
prints the bytes moved and their SHA-256, which HQ writes to the audit trail
too; for an upload, HQ's count and hash must match ours.

A download lands in a hidden temporary file beside DST, renamed into place
only when complete. DST may be a directory (the file keeps its name) or `-`
(stdout). A remote DST ending in `/` takes SRC's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import posixpath
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from server.client import render, sessions, sessionview, terminal
from server.client.config import Login
from server.client.errors import ClientError, UsageError
from server.client.http import Api

CHUNK = 256 * 1024
IDLE = 60.0  # a transfer that moves nothing for this long has failed


@dataclass(frozen=True)
class FilesSpec:
    direction: str  # get | put
    agent: str
    src: str
    dst: str
    ticket: str
    reason: str | None
    totp: str | None
    max_minutes: int | None


@dataclass(frozen=True)
class Moved:
    size: int
    sha256: str


def local_target(dst: str, remote_src: str) -> Path | None:
    """Where a download goes: DST, DST/<name> for a directory, None for stdout. Pure."""
    if dst == "-":
        return None
    path = Path(dst)
    if path.is_dir() or dst.endswith(os.sep):
        name = posixpath.basename(remote_src.rstrip("/"))
        if not name:
            raise UsageError(f"{remote_src!r} names no file")
        return path / name
    return path


def remote_target(dst: str, local_src: str) -> str:
    """Where an upload goes: DST, or DST<name> when DST ends in `/`. Pure."""
    if not dst.startswith("/"):
        raise UsageError(f"{dst!r}: the remote path must be absolute (/...)")
    if dst.endswith("/"):
        return dst + Path(local_src).name
    return dst


async def download(api: Api, session_id: str, src: str, target: Path | None) -> Moved:
    sha = hashlib.sha256()
    size = 0
    path = sessions.session_path(session_id, "/files")
    if target is None:

        async def to_stdout(chunk: bytes) -> None:
            nonlocal size
            sha.update(chunk)
            size += len(chunk)
            terminal.write_all(1, chunk)

        await api.download(path, {"path": src}, to_stdout, idle=IDLE)
        return Moved(size, sha.hexdigest())
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        handle = partial.open("xb")
    except OSError as exc:
        raise ClientError(f"cannot write {target}: {exc.strerror}") from None
    try:
        with handle:

            async def to_file(chunk: bytes) -> None:
                nonlocal size
                sha.update(chunk)
                size += len(chunk)
                await asyncio.to_thread(handle.write, chunk)

            await api.download(path, {"path": src}, to_file, idle=IDLE)
        os.replace(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return Moved(size, sha.hexdigest())


async def upload(api: Api, session_id: str, source: Path, dst: str) -> Moved:
    sha = hashlib.sha256()
    size = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal size
        with source.open("rb") as handle:
            while True:
                chunk = await asyncio.to_thread(handle.read, CHUNK)
                if not chunk:
                    return
                sha.update(chunk)
                size += len(chunk)
                yield chunk

    answer = await api.upload(
        sessions.session_path(session_id, "/files"), {"path": dst}, chunks(), idle=IDLE
    )
    moved = Moved(size, sha.hexdigest())
    if not isinstance(answer, dict) or (answer.get("bytes"), answer.get("sha256")) != (
        moved.size,
        moved.sha256,
    ):
        raise ClientError(
            f"HQ stored something else than was sent: sent {moved.size} bytes "
            f"sha256 {moved.sha256}, HQ counted {answer!r}"
        )
    return moved


async def transfer(login: Login, spec: FilesSpec) -> int:
    err = render.console(stderr=True)
    source: Path | None = None
    if spec.direction == "put":
        source = Path(spec.src)
        if not source.is_file():
            raise UsageError(f"{spec.src}: not a readable file here")
        remote = remote_target(spec.dst, spec.src)
        target = None
        reason = spec.reason or f"upload {source.name} to {remote}"
    else:
        if not spec.src.startswith("/"):
            raise UsageError(f"{spec.src!r}: the remote path must be absolute (/...)")
        remote = spec.src
        target = local_target(spec.dst, spec.src)
        reason = spec.reason or f"download {remote}"
    ask = sessions.Ask(spec.agent, spec.ticket, "files", reason, spec.max_minutes, spec.totp)
    async with Api(login.url, login.fingerprint, login.token) as api:
        session, site = await sessions.request(api, ask, err)
        sid = str(session["id"])
        try:
            await sessions.wait_active(api, session, site, err)
            if source is not None:
                moved = await upload(api, sid, source, remote)
            else:
                moved = await download(api, sid, remote, target)
        finally:
            await sessions.end_quietly(api, sid, "file transfer finished", err)
    host = sessionview.machine(session)
    if source is not None:
        line = f"put {source} -> {host}:{remote}"
    else:
        line = f"got {host}:{remote} -> {target if target is not None else 'stdout'}"
    to_stdout = source is None and target is None
    report(err, f"{line}: {moved.size} bytes, sha256 {moved.sha256}", to_stderr=to_stdout)
    return 0


def report(err: Console, line: str, *, to_stderr: bool) -> None:
    if to_stderr:  # stdout carries the file itself
        sessions.say(err, line)
    else:
        print(line, file=sys.stdout)
