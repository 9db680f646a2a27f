"""`fieldlink login URL` and `fieldlink logout`.

Login: read the fingerprint of the certificate HQ presents, show it, and
trust it only when a person says so (or it equals `--fingerprint`, or the
stored login already pins it for this URL); then ask for user name, password
and, if HQ answers `totp_required`, a TOTP code; `POST /api/v1/auth/login`
with `"token": true`; store the token with the pin (config.py).

Prompts read the terminal when there is one (the password without echo);
otherwise one line each from stdin, in the order asked, so a script can pipe
the answers. They run outside the event loop: each network step is its own
short `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from server.client import config
from server.client.config import Login
from server.client.errors import ApiError, ClientError, Unreachable
from server.client.http import Api, probe_fingerprint


class Prompter:
    """Questions to the person at the keyboard, or lines from a pipe."""

    def __init__(self, stdin: TextIO, err: TextIO) -> None:
        self.stdin = stdin
        self.err = err

    def _line(self, question: str) -> str:
        self.err.write(question)
        self.err.flush()
        line = self.stdin.readline()
        if not line:
            raise ClientError(f"no answer to {question.strip()!r} (stdin is closed)")
        return line.rstrip("\r\n")

    def ask(self, question: str) -> str:
        return self._line(question).strip()

    def secret(self, question: str) -> str:
        if self.stdin.isatty():
            return getpass.getpass(question, stream=self.err)
        return self._line(question)

    def confirm(self, question: str) -> bool:
        return self.ask(question).lower() in ("y", "yes")


@dataclass(frozen=True)
class LoginSpec:
    url: str
    fingerprint: str | None
    username: str | None
    password_stdin: bool
    totp: str | None


def _trust(url: str, seen: str, spec: LoginSpec, stored: Login | None, ask: Prompter) -> None:
    """Return if `seen` may be pinned for `url`; raise otherwise."""
    err = ask.err
    err.write(f"HQ at {url} presents a TLS certificate with SHA-256 fingerprint\n  {seen}\n")
    if spec.fingerprint is not None:
        wanted = config.fingerprint(spec.fingerprint)
        if wanted != seen:
            raise Unreachable(
                f"that is not the fingerprint given with --fingerprint ({wanted}): "
                "refusing to log in; nothing was sent"
            )
        err.write("It matches --fingerprint.\n")
        return
    if stored is not None and stored.url == url:
        if stored.fingerprint == seen:
            err.write("It matches the one pinned at your last login.\n")
            return
        err.write(
            "WARNING: it is NOT the certificate pinned at your last login "
            f"({stored.fingerprint}).\n"
        )
    err.write("Compare it with what `fieldlink admin --data-dir DIR fingerprint` prints on HQ.\n")
    if not ask.confirm("Trust this certificate? [y/N] "):
        raise ClientError("certificate not trusted: not logged in; nothing was sent")


async def _login_request(url: str, pin: str, body: dict[str, Any]) -> dict[str, Any]:
    async with Api(url, pin, None) as api:
        answer: dict[str, Any] = await api.post("/api/v1/auth/login", body)
        return answer


def login(spec: LoginSpec, directory: Path, stdin: TextIO, err: TextIO) -> int:
    url = config.normalize_url(spec.url)
    try:
        stored = config.load(directory)
    except ClientError:
        stored = None  # a broken login file is what logging in again replaces
    seen = asyncio.run(probe_fingerprint(url))
    ask = Prompter(stdin, err)
    _trust(url, seen, spec, stored, ask)
    username = spec.username or ask.ask("Username: ")
    if not username:
        raise ClientError("a user name is needed")
    if spec.password_stdin:
        line = stdin.readline()
        if not line:
            raise ClientError("--password-stdin: stdin is empty")
        password = line.rstrip("\r\n")
    else:
        password = ask.secret("Password: ")
    body: dict[str, Any] = {"username": username, "password": password, "token": True}
    if spec.totp:
        body["totp"] = spec.totp.strip()
    try:
        answer = asyncio.run(_login_request(url, seen, body))
    except ApiError as exc:
        if exc.code != "totp_required" or spec.totp:
            raise
        body["totp"] = ask.ask("TOTP code: ")
        answer = asyncio.run(_login_request(url, seen, body))
    token = answer.get("token")
    if not isinstance(token, str) or not token:
        raise Unreachable("HQ's login answer carried no token")
    expires = answer.get("expires_at")
    path = config.save(
        directory,
        Login(
            url=url,
            fingerprint=seen,
            token=token,
            expires_at=str(expires) if expires else None,
            username=username,
        ),
    )
    err.write(f"Logged in to {url} as {username}; the token is valid until {expires}.\n")
    err.write(f"Stored in {path} (readable by you only).\n")
    return 0


async def _revoke(stored: Login) -> None:
    async with Api(stored.url, stored.fingerprint, stored.token) as api:
        await api.post("/api/v1/auth/logout")


def logout(directory: Path, err: TextIO = sys.stderr) -> int:
    """Revoke the stored token at HQ (best effort) and forget it here."""
    stored = config.load(directory)
    if stored is None:
        err.write("Not logged in.\n")
        return 0
    try:
        asyncio.run(_revoke(stored))
    except ApiError as exc:
        if exc.status != 401:  # 401: it had expired or was revoked already
            err.write(f"HQ did not revoke the token ({exc.message}); forgetting it anyway.\n")
    except Unreachable as exc:
        err.write(f"{exc.message}\nThe token was not revoked at HQ; forgetting it anyway.\n")
    config.delete(directory)
    err.write(f"Logged out of {stored.url}.\n")
    return 0
