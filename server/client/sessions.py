"""Remote sessions from the engineer's side: `fieldlink shell`, `fieldlink
session list|watch|end|replay`, and the asking part `fieldlink files` shares.

Asking for a session is `POST /api/v1/sessions` (or `.../accept` for a site's
own request). HQ wants a TOTP code verified within the last minutes: a 401
`step_up_required` makes us ask for one (or take `--totp`), verify it with
`POST /api/v1/auth/step-up` and ask again. While the site has not answered,
a status line says who must approve and by when, following the session by
long-polling `GET /api/v1/sessions/{id}?wait=10&state=<last seen>`; a denied,
expired or failed request ends the command with its reason and exit status
1, and Ctrl-C while waiting withdraws the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from rich.console import Console
from rich.text import Text

from server.client import cast, render, sessionview, terminal
from server.client.config import Login
from server.client.errors import ApiError, ClientError, Unreachable, UsageError
from server.client.http import Api
from server.client.remote import resolve_agent
from server.client.tickets import ticket_ref

POLL_WAIT = 10  # seconds HQ holds a long-poll
STEP_UP_TRIES = 3
POLL_RETRIES = 5
TERM_PATTERN = re.compile(r"^[A-Za-z0-9._+-]{1,40}$")
DEFAULT_TERM = "xterm-256color"
CLEAN_ENDS = frozenset({"the shell exited", "ended by the engineer"})


def say(err: Console, text: str) -> None:
    """One line for the person, as text (never markup), not wrapped."""
    err.print(text, markup=False, highlight=False, soft_wrap=True)


def session_path(session_id: str, tail: str = "") -> str:
    return f"/api/v1/sessions/{quote(session_id, safe='')}{tail}"


def term_name(environ: Mapping[str, str]) -> str:
    """$TERM as HQ accepts it, else xterm-256color. Pure."""
    value = environ.get("TERM", "")
    return value if TERM_PATTERN.match(value) and value != "dumb" else DEFAULT_TERM


# --- asking, with step-up ----------------------------------------------------------------


async def read_line(fd: int, prompt: str, err: Console) -> str | None:
    """One line from `fd` without reading past it (what follows may be meant
    for the remote shell), cancellable; None at end of input."""
    err.print(prompt, end="", markup=False, highlight=False, soft_wrap=True)
    err.file.flush()
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes | None] = loop.create_future()
    buf = bytearray()

    def ready() -> None:
        try:
            byte = os.read(fd, 1)
        except BlockingIOError:
            return
        except OSError:
            byte = b""
        if done.done():
            return
        if not byte:
            done.set_result(bytes(buf) if buf else None)
        elif byte == b"\n":
            done.set_result(bytes(buf))
        else:
            buf.extend(byte)

    try:
        loop.add_reader(fd, ready)
    except (PermissionError, OSError, ValueError):  # a regular file: reads do not block
        while not done.done():
            ready()
    else:
        try:
            await done
        finally:
            loop.remove_reader(fd)
    line = done.result()
    return None if line is None else line.decode("utf-8", "replace").strip()


async def with_step_up(
    api: Api, call: Callable[[], Awaitable[Any]], totp: str | None, err: Console
) -> Any:
    """`call()`; when HQ asks for step-up 2FA, verify a code and call again."""
    try:
        return await call()
    except ApiError as exc:
        if exc.status != 401 or exc.code != "step_up_required":
            raise
    interactive = os.isatty(0) and totp is None
    for attempt in range(1, STEP_UP_TRIES + 1):
        code = totp
        if code is None:
            code = await read_line(
                0, "HQ asks for a fresh TOTP code to open a session (step-up): ", err
            )
            if not code:
                raise ClientError(
                    "HQ asks for a fresh TOTP code (step-up 2FA); give it with --totp CODE"
                )
        try:
            await api.post("/api/v1/auth/step-up", {"code": code})
            break
        except ApiError as exc:
            if exc.status != 422 or not interactive or attempt == STEP_UP_TRIES:
                raise
            say(err, "That code was not accepted; try the next one.")
    return await call()


@dataclass(frozen=True)
class Ask:
    """A session to ask for."""

    agent: str
    ticket: str
    kind: str
    reason: str
    max_minutes: int | None
    totp: str | None


async def request(api: Api, ask: Ask, err: Console) -> tuple[dict[str, Any], str | None]:
    """Ask HQ for a session; (the session, the machine's site name)."""
    agent = await resolve_agent(api, ask.agent)
    body: dict[str, Any] = {
        "agent_id": agent["id"],
        "ticket_id": ticket_ref(ask.ticket),
        "kind": ask.kind,
        "reason": ask.reason,
    }
    if ask.max_minutes:
        body["max_minutes"] = ask.max_minutes
    made = await with_step_up(api, lambda: api.post("/api/v1/sessions", body), ask.totp, err)
    return made, agent.get("site")


async def site_of(api: Api, agent_id: str) -> str | None:
    try:
        agent = await api.get(f"/api/v1/agents/{quote(agent_id, safe='')}")
    except ApiError:
        return None
    site = agent.get("site") if isinstance(agent, dict) else None
    return str(site) if site else None


async def accept(
    api: Api, session_id: str, totp: str | None, err: Console
) -> tuple[dict[str, Any], str | None]:
    """Take a session a site asked for; (the session, its site name)."""
    offer = await api.get(session_path(session_id))
    site = await site_of(api, str(offer.get("agent_id")))
    say(
        err,
        f"{sessionview.machine(offer)} asked for help on {offer.get('ticket')}: "
        f"{offer.get('reason') or '(no reason given)'}",
    )
    taken = await with_step_up(
        api, lambda: api.post(session_path(session_id, "/accept")), totp, err
    )
    return taken, site


async def end_quietly(api: Api, session_id: str, reason: str, err: Console) -> None:
    """End a session we hold, saying so only if that fails."""
    try:
        await api.post(session_path(session_id, "/end"), {"reason": reason})
    except ClientError as exc:
        say(
            err,
            f"fieldlink: could not end session {session_id}: {exc.message} "
            f"(`fieldlink session end {session_id}`)",
        )


async def _poll(api: Api, session: dict[str, Any]) -> dict[str, Any]:
    failures = 0
    while True:
        try:
            found: dict[str, Any] = await api.get(
                session_path(str(session["id"])),
                {"wait": str(POLL_WAIT), "state": str(session["state"])},
            )
            return found
        except Unreachable:
            failures += 1
            if failures > POLL_RETRIES:
                raise
            await asyncio.sleep(min(0.5 * 2**failures, 10.0))


async def wait_active(
    api: Api, session: dict[str, Any], site: str | None, err: Console
) -> dict[str, Any]:
    """Follow a session until it is active (answered) or over (ClientError).
    On a terminal the status line counts down; elsewhere one line per change."""
    if session.get("state") in sessionview.WAITING:
        live = (
            err.status(Text(sessionview.waiting_line(session, site))) if err.is_terminal else None
        )
        if live is None:
            say(err, sessionview.waiting_line(session, site))
        try:
            if live is not None:
                live.start()
            while session.get("state") in sessionview.WAITING:
                poll = asyncio.create_task(_poll(api, session))
                try:
                    while not poll.done():
                        if live is not None:
                            live.update(Text(sessionview.waiting_line(session, site)))
                        await asyncio.wait({poll}, timeout=1.0)
                finally:
                    poll.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ClientError):
                        await poll
                session = poll.result()
        except asyncio.CancelledError:
            await end_quietly(api, str(session["id"]), "withdrawn by the engineer", err)
            say(err, f"session {session['id']}: request withdrawn")
            raise
        finally:
            if live is not None:
                live.stop()
    if session.get("state") != "active":
        raise ClientError(sessionview.outcome_line(session))
    say(err, sessionview.active_line(session))
    return session


# --- the shell -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ShellSpec:
    ask: Ask | None  # a new request, or
    accept: str | None  # a site's request to take
    totp: str | None
    term: str


async def shell(login: Login, spec: ShellSpec) -> int:
    err = render.console(stderr=True)
    async with Api(login.url, login.fingerprint, login.token) as api:
        if spec.accept:
            session, site = await accept(api, spec.accept, spec.totp, err)
        else:
            assert spec.ask is not None
            session, site = await request(api, spec.ask, err)
        session = await wait_active(api, session, site, err)
        return await open_terminal(api, session, spec.term, err)


async def open_terminal(api: Api, session: dict[str, Any], term: str, err: Console) -> int:
    sid = str(session["id"])
    interactive = os.isatty(0)
    cols, rows = terminal.terminal_size(1 if os.isatty(1) else 0)
    if interactive:
        say(err, "Escape: ~. at the start of a line ends the session. Everything is recorded.")
    params = {"cols": str(cols), "rows": str(rows), "term": term}
    try:
        with api.mapped():
            async with api.websocket(session_path(sid, "/terminal"), params) as ws:
                with terminal.RawMode(0) if interactive else contextlib.nullcontext():
                    outcome = await terminal.bridge(
                        ws, stdin_fd=0, stdout_fd=1, interactive=interactive
                    )
    except ApiError as exc:
        if exc.code != "websocket_refused":
            raise
        # This session was asked for by this command and has no other terminal:
        # without one it is of no use, so it does not stay open until its limit.
        await end_quietly(api, sid, "the terminal could not be opened", err)
        now = await api.get(session_path(sid))
        raise ClientError(
            f"HQ refused to open the terminal of session {sid} ({exc.status}): "
            + (
                "the machine is not connected or refused the shell "
                "(see `fieldlink agents` and the machine's policy: allow_shell)"
                if exc.status == 409
                else "not allowed"
            )
            + f"; the session is {now.get('state')}"
        ) from None
    final = await api.get(session_path(sid))
    if final.get("state") == "active":
        why = outcome.closed_reason or outcome.error or "the connection closed"
        say(
            err,
            f"fieldlink: the terminal closed ({why}) but session {sid} is still active; "
            f"`fieldlink session end {sid}` ends it",
        )
        return 1
    say(err, f"fieldlink: {sessionview.outcome_line(final)}")
    if outcome.signal is not None:
        return 128 + outcome.signal
    clean = outcome.ended_here or final.get("end_reason") in CLEAN_ENDS
    return 0 if clean else 1


# --- list, end, watch, replay ---------------------------------------------------------------


@dataclass(frozen=True)
class ListSpec:
    ticket: str | None
    active: bool
    queue: bool
    state: str | None
    limit: int
    as_json: bool


def list_params(spec: ListSpec) -> dict[str, str]:
    """The query for `session list`. Pure."""
    params: dict[str, str] = {"limit": str(spec.limit)}
    if spec.ticket:
        params["ticket"] = ticket_ref(spec.ticket)
    if spec.queue:
        if spec.state or spec.active:
            raise UsageError("--queue is the sites' waiting requests: no --state or --active")
        params.update(state="requested", origin="site")
    if spec.active:
        params["active"] = "true"
    if spec.state:
        params["state"] = spec.state
    return params


async def list_sessions(login: Login, spec: ListSpec) -> int:
    params = list_params(spec)
    async with Api(login.url, login.fingerprint, login.token) as api:
        page = await api.get("/api/v1/sessions", params)
    items: list[dict[str, Any]] = page.get("items") or []
    if spec.as_json:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        what = "no site is waiting for help" if spec.queue else "no sessions match"
        say(render.console(stderr=True), what)
        return 0
    render.console().print(sessionview.sessions_table(items))
    if spec.queue:
        say(render.console(stderr=True), "take one with `fieldlink shell --accept ID`")
    return 0


async def end(login: Login, session_id: str, reason: str | None) -> int:
    body = {"reason": reason} if reason else {}
    async with Api(login.url, login.fingerprint, login.token) as api:
        before = await api.get(session_path(session_id))
        after = await api.post(session_path(session_id, "/end"), body)
    if before.get("state") in sessionview.FINAL:
        print(f"session {session_id} was already over: {sessionview.outcome_line(after)}")
        return 0
    print(sessionview.outcome_line(after))
    return 0


async def watch(login: Login, session_id: str) -> int:
    err = render.console(stderr=True)
    async with Api(login.url, login.fingerprint, login.token) as api:
        session = await api.get(session_path(session_id))
        with api.mapped():
            async with api.websocket(session_path(session_id, "/terminal"), {"watch": "1"}) as ws:
                say(
                    err,
                    f"watching session {session_id} on {sessionview.machine(session)} "
                    f"({session.get('ticket')}, {session.get('requested_by') or 'site request'})"
                    "; read-only, Ctrl-C stops watching",
                )
                outcome = await terminal.bridge(
                    ws, stdin_fd=0, stdout_fd=1, interactive=False, watch=True
                )
    reason = outcome.closed_reason or outcome.error or "the connection closed"
    say(err, f"\nfieldlink: watch of session {session_id} closed: {reason}")
    return 1 if outcome.status is not None and outcome.status.get("live") is False else 0


async def fetch_recording(login: Login, session_id: str) -> bytes:
    async with Api(login.url, login.fingerprint, login.token) as api:
        return await api.read(
            session_path(session_id, "/recording"), accept="application/x-asciicast"
        )


def replay(login: Login, session_id: str, speed: float, max_idle: float) -> int:
    """Play a recording's output with its timing (divided by `speed`, idle gaps cut)."""
    raw = asyncio.run(fetch_recording(login, session_id))
    try:
        recorded = cast.parse(raw)
    except cast.CastError as exc:
        raise ClientError(f"session {session_id}: {exc}") from None
    err = render.console(stderr=True)
    meta = recorded.header.get("fieldlink") or {}
    size = recorded.size
    length = cast.play_time(recorded.events, speed=speed, max_idle=max_idle)
    say(
        err,
        f"replaying session {session_id} ({meta.get('ticket', '?')} on {meta.get('agent', '?')}, "
        f"engineer {meta.get('engineer', '?')}"
        + (f", {size[0]}x{size[1]}" if size else "")
        + f"): {length:.1f}s at {speed:g}x, idle gaps cut to {max_idle:g}s",
    )
    if size and os.isatty(1):
        cols, rows = terminal.terminal_size(1)
        if cols < size[0] or rows < size[1]:
            say(err, f"(your terminal is {cols}x{rows}, smaller than the recording's)")
    for delay, data in cast.schedule(recorded.events, speed=speed, max_idle=max_idle):
        if delay > 0:
            time.sleep(delay)
        terminal.write_all(1, data.encode())
    sys.stdout.flush()
    say(err, f"\nfieldlink: end of the recording of session {session_id}")
    return 0
