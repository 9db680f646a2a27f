"""The agent's local socket: how people at the machine reach the running daemon.

`fieldlink-agent help|tickets|rate|consent|status` connect to a Unix socket that the
daemon serves (DIR/agent.sock unless `local_socket` says otherwise). The
socket is mode 0660 and belongs to the group `local_group` (default: the
agent's own primary group), so site staff in that group can ask for help
without root. The agent never listens on a network port; this socket is
local only.

The protocol is line-delimited JSON. The client writes one request line and
the daemon answers with one line; a connection may carry several requests in
turn. A request names its `op`; the answer's `type` is that op, or `error`:

    {"op": "help", "text": "receipt printer prints blank", "wait": 10}
    {"type": "help", "seq": 3, "state": "answered", "ok": true, "ticket": "FL-12", ...}
    {"op": "rate", "ticket": "FL-12", "score": 5}
    {"type": "error", "error": {"code": "bad_request", "message": "..."}}
    {"op": "consent", "action": "approve", "session": "se_3f2a", "wait": 10}
    {"type": "consent", "action": "approve", "state": "answered", "session": {...}, ...}
    {"op": "offer", "ticket": "FL-12", "seen": "requested", "wait": 20}
    {"op": "suggest", "text": "receipt printer prints blank", "wait": 5}
    {"type": "suggest", "connected": true, "answered": true, "items": [{"number": "KB-7", ...}]}

Who asks is never part of a request: the daemon reads the caller's uid from
the socket (SO_PEERCRED) and names it by its local account. Lines are capped
(MAX_REQUEST_BYTES in, MAX_ANSWER_BYTES out); a malformed request gets an
`error` answer and never reaches the daemon's state.

`consent` lists the machine's session requests and live sessions, or sends
a person's answer (approve, deny, end) to HQ, or grants or takes back
control of the screen in a desktop session (control, view_only: applied
here at once, HQ told); `offer` waits for the next
change of the session a site's `help --assist` asked for (who joined, how it
ended); `suggest` asks HQ for the knowledge-base articles that best match a
person's words (only while HQ is connected), and `help` with `solved_by`
tells HQ one of them solved the problem.

To add a command: a request model with a new `op`, an answer model whose
`type` is the same word, both added to the unions below, and a case in the
daemon's desk (agent.desk).

Errors: `LocalError` (the socket cannot be served or reached), with
`AgentUnavailable` for "no agent answers there"; `Refusal` is raised by a
handler to answer an `error` with its own code.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from shared import protocol as p

log = structlog.get_logger(__name__)

LOCAL_PROTOCOL = 1
MAX_REQUEST_BYTES = 64 * 1024
MAX_ANSWER_BYTES = 1024 * 1024
MAX_WAIT_SECONDS = 60.0
DEFAULT_WAIT_SECONDS = 10.0


class LocalError(Exception):
    """The local socket cannot be served, or the daemon cannot be reached."""


class AgentUnavailable(LocalError):
    """No running agent answers on the socket (or the caller may not use it)."""


class Refusal(Exception):
    """Raised by a handler: answer the request with this error code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- requests ----------------------------------------------------------------


class HelpRequest(_Model):
    """Ask HQ for help; the answer comes once HQ's receipt is in, or after `wait`."""

    op: Literal["help"] = "help"
    text: str = Field(min_length=1, max_length=5000)
    assist: bool = False
    wait: float = Field(DEFAULT_WAIT_SECONDS, ge=0, le=MAX_WAIT_SECONDS)
    # a knowledge-base article solved it: HQ records a self-served request
    solved_by: str | None = Field(None, pattern=r"^KB-\d{1,12}$")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("say what the problem is")
        return value


class RateRequest(_Model):
    """Rate the help on a resolved ticket asked for from this machine."""

    op: Literal["rate"] = "rate"
    ticket: str = Field(pattern=r"^FL-\d{1,12}$")
    score: int = Field(ge=1, le=5)
    comment: str = Field("", max_length=5000)
    wait: float = Field(DEFAULT_WAIT_SECONDS, ge=0, le=MAX_WAIT_SECONDS)


class TicketsRequest(_Model):
    """This machine's tickets as HQ last sent them, and requests not yet answered."""

    op: Literal["tickets"] = "tickets"


class StatusRequest(_Model):
    """The agent's identity and link state, and who the daemon thinks is asking."""

    op: Literal["status"] = "status"


ConsentAction = Literal["list", "approve", "deny", "end", "control", "view_only"]


class ConsentRequest(_Model):
    """List session requests and live sessions (`list`), or answer one: approve
    or deny a request, end a session. The answer waits up to `wait` seconds
    for HQ to report the session's new state. `control` and `view_only` grant
    and take back keyboard and mouse in an active desktop session: they apply
    at this machine at once and do not wait for HQ."""

    op: Literal["consent"] = "consent"
    action: ConsentAction = "list"
    session: str | None = Field(None, min_length=1, max_length=64)
    wait: float = Field(DEFAULT_WAIT_SECONDS, ge=0, le=MAX_WAIT_SECONDS)


class OfferRequest(_Model):
    """The session offer on `ticket` that this machine asked for (`help --assist`),
    once its state is other than `seen` (or after `wait` seconds)."""

    op: Literal["offer"] = "offer"
    ticket: str = Field(pattern=r"^FL-\d{1,12}$")
    seen: str | None = Field(None, max_length=40)
    wait: float = Field(DEFAULT_WAIT_SECONDS, ge=0, le=MAX_WAIT_SECONDS)


class SuggestRequest(_Model):
    """HQ's best knowledge-base articles for these words (not spooled: none
    when HQ is away or does not answer within `wait`)."""

    op: Literal["suggest"] = "suggest"
    text: str = Field(min_length=1, max_length=5000)
    limit: int = Field(3, ge=1, le=10)
    wait: float = Field(5.0, ge=0, le=MAX_WAIT_SECONDS)


AnyRequest = (
    HelpRequest
    | RateRequest
    | TicketsRequest
    | StatusRequest
    | ConsentRequest
    | OfferRequest
    | SuggestRequest
)
LocalRequest = Annotated[AnyRequest, Field(discriminator="op")]

# --- answers -------------------------------------------------------------------


class ErrorBody(_Model):
    code: str
    message: str


class Failure(_Model):
    type: Literal["error"] = "error"
    error: ErrorBody


class _Sent(_Model):
    """A spooled request's fate: HQ's receipt (`answered`), or saved on the
    machine until HQ takes it (`queued`)."""

    seq: int
    state: Literal["answered", "queued"]
    connected: bool  # whether the link to HQ was up when the request was made
    ok: bool | None = None  # HQ's verdict, once answered
    ticket: str | None = None
    message: str = ""


class HelpAnswer(_Sent):
    type: Literal["help"] = "help"


class RateAnswer(_Sent):
    type: Literal["rate"] = "rate"


class RequestInfo(_Model):
    """A request made at this machine, as the spool remembers it."""

    kind: str
    seq: int
    user: str
    summary: str
    asked_at: datetime
    state: Literal["answered", "waiting", "lost"]
    answered_at: datetime | None = None
    ok: bool | None = None
    ticket: str | None = None
    message: str | None = None


class TicketsAnswer(_Model):
    type: Literal["tickets"] = "tickets"
    connected: bool
    received_at: datetime | None  # when HQ sent the list; None if it never has
    tickets: list[p.TicketBrief]
    requests: list[RequestInfo]


class SessionView(_Model):
    """A remote session on this machine, as HQ last described it, with what
    this machine knows besides: an end decided here, channels open now."""

    id: str
    kind: str
    state: str
    origin: str
    engineer: str
    ticket: str
    reason: str = ""
    consent_by: str | None = None
    expires_at: datetime | None = None  # consent or offer deadline; while active, its end
    started_at: datetime | None = None
    end_reason: str | None = None
    ended_here: str | None = None  # who ended it at this machine, if HQ has not said yet
    channels: int = 0  # shell, file-transfer and desktop channels open for it now
    heard_at: datetime  # when HQ last said
    # desktop sessions: whether the engineer asked for keyboard and mouse, and
    # whether they may use them now (this machine's policy and the latest grant)
    control_asked: bool = False
    control: bool | None = None
    control_by: str = ""


class ConsentAnswer(_Model):
    type: Literal["consent"] = "consent"
    action: ConsentAction
    connected: bool
    # for an answer: `answered` once HQ reported the session's new state, else
    # `queued` (saved in the spool; HQ gets it when it can); `applied` for a
    # change of control, which holds here at once (HQ is told as for `queued`)
    state: Literal["listed", "answered", "queued", "applied"]
    session: SessionView | None = None
    sessions: list[SessionView] = Field(default_factory=list)
    stopped: int = 0  # channels stopped at this machine by `end`


class OfferAnswer(_Model):
    type: Literal["offer"] = "offer"
    connected: bool
    shells_allowed: bool  # whether this machine's policy lets anyone take over at all
    session: SessionView | None = None


class StatusAnswer(_Model):
    type: Literal["status"] = "status"
    protocol: int = LOCAL_PROTOCOL
    agent_id: str
    site: str
    version: str
    caller: str
    connected: bool
    since: datetime | None
    spool_pending: int
    spool_dropped: int
    requests_waiting: int
    spool_error: str | None = None  # why the spool cannot be written now (a full disk)
    spool_error_since: datetime | None = None
    sessions: list[SessionView] = Field(default_factory=list)  # live sessions
    # what is wrong with the policy in force (e.g. exec with an empty allow-list)
    policy_warnings: list[str] = Field(default_factory=list)
    # how runs' processes are contained (agent.containment.Containment.describe)
    run_containment: str | None = None
    # log lines the agent could not write (its log file failing: a full disk)
    log_dropped: int = 0
    log_error: str | None = None  # why log writes fail now


class SuggestAnswer(_Model):
    type: Literal["suggest"] = "suggest"
    connected: bool
    answered: bool  # HQ answered in time (an empty list then means: nothing matches)
    items: list[p.KbSuggestion] = Field(default_factory=list)


Answer = (
    HelpAnswer
    | RateAnswer
    | TicketsAnswer
    | StatusAnswer
    | ConsentAnswer
    | OfferAnswer
    | SuggestAnswer
)
AnyAnswer = Failure | Answer
LocalAnswer = Annotated[AnyAnswer, Field(discriminator="type")]

_requests: TypeAdapter[AnyRequest] = TypeAdapter(LocalRequest)
_answers: TypeAdapter[AnyAnswer] = TypeAdapter(LocalAnswer)


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json().encode() + b"\n"


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "request"
    return f"{where}: {first['msg']}"


def decode_request(line: bytes) -> AnyRequest:
    """One request line as a model; `Refusal("bad_request")` says what is wrong."""
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise Refusal("bad_request", "a request is one JSON object per line") from None
    if not isinstance(data, dict):
        raise Refusal("bad_request", "a request is a JSON object")
    try:
        return _requests.validate_python(data)
    except ValidationError as exc:
        raise Refusal("bad_request", _first_error(exc)) from None


def failure(code: str, message: str) -> Failure:
    return Failure(error=ErrorBody(code=code, message=message))


# --- the daemon's side ------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Who is on the other end of a local connection, from the kernel (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int
    user: str


Handler = Callable[[Caller, AnyRequest], Awaitable[Answer]]


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def peer_of(sock: socket.socket) -> Caller:
    """The connecting process's pid, uid and gid, as the kernel recorded them."""
    size = struct.calcsize("3i")
    pid, uid, gid = struct.unpack(
        "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
    )
    return Caller(pid=pid, uid=uid, gid=gid, user=user_name(uid))


def group_id(group: str | None) -> int:
    """`local_group` as a gid: a group name or number; None is our own primary group."""
    if group is None:
        return os.getgid()
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise LocalError(f"local_group {group!r}: no such group on this machine") from None


class LocalServer:
    """Serves the local socket for the daemon until `close()`.

    `start()` refuses to take over a socket another agent still answers on,
    removes a stale one, and binds under a temporary name that is renamed into
    place only once its mode and group are set, so the socket is never open
    wider than configured. `close()` ends every connection and removes the
    socket if it is still ours."""

    def __init__(
        self,
        path: Path,
        handler: Handler,
        *,
        group: str | None = None,
        manage_dir: bool = False,
        max_clients: int = 16,
        idle_timeout: float = 30.0,
    ) -> None:
        self.path = path
        self._handler = handler
        self._group = group
        self._manage_dir = manage_dir
        self._max_clients = max_clients
        self._idle = idle_timeout
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._inode: int | None = None

    async def start(self) -> None:
        gid = group_id(self._group)
        self._prepare_dir(gid)
        await self._clear_stale()
        sock = self._bind(gid)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve_client, sock=sock, limit=MAX_REQUEST_BYTES
            )
        except BaseException:
            sock.close()
            self._unlink()
            raise
        log.info("local_socket_ready", path=str(self.path), gid=gid)

    def _prepare_dir(self, gid: int) -> None:
        """Members of the group must be able to reach the socket: its directory
        gets mode 0710 and the group when it is the config dir or new (files
        in it stay private; the group can open only what it is given)."""
        parent = self.path.parent
        if not parent.exists():
            parent.mkdir(parents=True, mode=0o710)
        elif not self._manage_dir:
            return
        try:
            os.chown(parent, -1, gid)
            # Traverse only, for the group: it can open the socket, not list or read files.
            os.chmod(parent, 0o710)  # noqa: S103 - group search bit on purpose, see above
        except OSError as exc:
            raise LocalError(
                f"cannot give {parent} to group {gid} for the local socket: {exc}"
            ) from None

    async def _clear_stale(self) -> None:
        try:
            info = self.path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise LocalError(f"{self.path} exists and is not a socket; move it away")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.path), 5)
        except (ConnectionRefusedError, FileNotFoundError, TimeoutError):
            log.info("local_socket_stale_removed", path=str(self.path))
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        writer.close()
        raise LocalError(
            f"another agent already answers on {self.path}; stop it before starting this one"
        )

    def _bind(self, gid: int) -> socket.socket:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                sock.bind(str(tmp))
            except OSError as exc:
                raise LocalError(f"cannot bind the local socket at {self.path}: {exc}") from None
            try:
                os.chown(tmp, -1, gid)
                os.chmod(tmp, 0o660)
                sock.listen(self._max_clients)
                os.rename(tmp, self.path)  # in place only once it is right and listening
            except OSError as exc:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise LocalError(
                    f"cannot set up the local socket {self.path} for group {gid}: {exc}"
                ) from None
            self._inode = self.path.stat().st_ino
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _unlink(self) -> None:
        """Remove the socket file if it is still the one we bound."""
        try:
            if self._inode is not None and self.path.stat().st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass
        self._inode = None

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self._unlink()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await self._conversation(reader, writer)
        except (ConnectionError, OSError) as exc:
            log.info("local_client_gone", error=str(exc))
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _conversation(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if len(self._clients) > self._max_clients:
            writer.write(encode(failure("busy", "the agent is busy; try again in a moment")))
            await writer.drain()
            return
        try:
            caller = peer_of(writer.get_extra_info("socket"))
        except (OSError, AttributeError) as exc:
            log.warning("local_peer_unknown", error=str(exc))
            writer.write(encode(failure("forbidden", "cannot tell who is asking")))
            await writer.drain()
            return
        while True:
            last = False
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\n"), self._idle)
            except TimeoutError:
                return
            except asyncio.IncompleteReadError as exc:  # the client closed its side
                line, last = exc.partial, True
            except asyncio.LimitOverrunError:
                log.warning("local_request_too_large", user=caller.user, pid=caller.pid)
                message = f"a request line may be at most {MAX_REQUEST_BYTES} bytes"
                writer.write(encode(failure("too_large", message)))
                await writer.drain()
                return
            if line.strip():
                writer.write(encode(await self._answer(caller, line)))
                await writer.drain()
            if last:
                return

    async def _answer(self, caller: Caller, line: bytes) -> AnyAnswer:
        try:
            request = decode_request(line)
            return await self._handler(caller, request)
        except Refusal as exc:
            log.info("local_request_refused", user=caller.user, code=exc.code, reason=exc.message)
            return failure(exc.code, exc.message)
        except Exception:
            log.exception("local_request_failed", user=caller.user)
            return failure("internal", "the agent could not answer; its log says why")


# --- the client's side -------------------------------------------------------------


def call(path: Path, request: AnyRequest, timeout: float) -> AnyAnswer:
    """Send one request to the daemon and return its answer (blocking)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            raise AgentUnavailable(
                f"the Fieldlink agent is not running on this machine (nothing answers at {path})"
            ) from None
        except PermissionError:
            raise AgentUnavailable(
                f"you may not use the agent's socket {path}: ask IT to add your account "
                "to its group (local_group)"
            ) from None
        except OSError as exc:
            raise AgentUnavailable(f"cannot reach the agent at {path}: {exc}") from None
        try:
            sock.sendall(encode(request))
            buf = bytearray()
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_ANSWER_BYTES:
                    raise LocalError(f"the agent's answer exceeds {MAX_ANSWER_BYTES} bytes")
        except TimeoutError:
            raise LocalError(f"the agent did not answer within {timeout:.0f} s") from None
        except OSError as exc:
            raise LocalError(f"lost the connection to the agent: {exc}") from None
    if not buf.strip():
        raise LocalError("the agent closed the connection without answering")
    try:
        return _answers.validate_json(bytes(buf))
    except ValidationError as exc:
        raise LocalError(f"the agent's answer is not understood ({_first_error(exc)})") from None
