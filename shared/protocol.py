"""The wire format between agent and HQ on the `telemetry` channel.

Frames are newline-delimited JSON objects with a `type` field. Every frame is a
pydantic model with `extra="forbid"`, so a frame either matches this module
exactly or is rejected. Both sides import this module and nothing else
describes the format.

Agent -> HQ: `hello` (first, again after a policy reload), `health` (every
interval), `help` and `rating` (from people at the machine); the last three
are spooled and carry a per-kind sequence number.
HQ -> agent: `ack` (after the frames it names are committed), `receipt` (the
answer to a help request or rating), `tickets` (the machine's tickets),
`session` (a remote session on the machine: consent wanted, active, ended).
Agent -> HQ also: `consent` (a person's answer to a session request, spooled).

Knowledge-base suggestions, not spooled (they are only worth asking while HQ
is there): the agent sends `kb_query` (what the person typed) and HQ answers
`kb_suggestions` with the same `id`: the best published articles for the
machine's site. A help request a suggestion solved is a `help` frame naming
the article in `solved_by`; HQ records it as self-served (closed at once).

Remote sessions use their own channels on the same connection, opened by HQ
with `FIELDLINK_SESSION`, `FIELDLINK_TICKET` and `FIELDLINK_ENGINEER` in the
channel environment: a PTY shell (kind shell), the SFTP subsystem (kind
files), the `fieldlink-desktop` subsystem (kind desktop: the screen's RFB
stream on the channel's data, `DesktopStatus` / `DesktopClosed` lines on its
stderr). The agent accepts them only for a session it knows to be active.

`FrameDecoder` turns a byte stream into frames and refuses a line longer than
its limit, so a misbehaving peer cannot make the reader buffer without bound.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    model_serializer,
)

MAX_FRAME_BYTES = 1024 * 1024
TELEMETRY_SUBSYSTEM = "telemetry"
SESSION_ENV = "FIELDLINK_SESSION"
TICKET_ENV = "FIELDLINK_TICKET"
ENGINEER_ENV = "FIELDLINK_ENGINEER"


class Model(BaseModel):
    """Base for every wire model: unknown fields are an error, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, defer_build=True)


# --- facts (sent once per connection in the hello) ---------------------------


class Facts(Model):
    hostname: str
    os: str
    os_family: str
    kernel: str
    arch: str
    cpu_model: str
    cpu_cores: int
    cpu_physical_cores: int | None = None
    memory_total: int
    ips: list[str]
    boot_time: datetime
    agent_version: str
    python_version: str
    # how the agent contains a run's processes: "cgroup v2 (PATH)" or
    # "process group (cgroups unavailable: REASON)"; None from older agents
    run_containment: str | None = None


# --- health report -----------------------------------------------------------


class Cpu(Model):
    percent: float
    per_core: list[float]
    count: int


class Load(Model):
    m1: float = Field(alias="1m")
    m5: float = Field(alias="5m")
    m15: float = Field(alias="15m")


class Memory(Model):
    total: int
    available: int
    used: int
    percent: float


class Swap(Model):
    total: int
    used: int
    percent: float


class Disk(Model):
    mount: str
    device: str
    fstype: str
    total: int
    used: int
    free: int
    percent: float
    inodes_total: int | None = None
    inodes_used: int | None = None
    inodes_percent: float | None = None


class DiskIO(Model):
    read_bytes_per_s: float
    write_bytes_per_s: float
    read_ops_per_s: float
    write_ops_per_s: float


class NetIO(Model):
    rx_bytes_per_s: float
    tx_bytes_per_s: float
    rx_packets_per_s: float
    tx_packets_per_s: float
    errors_in: int
    errors_out: int
    drops_in: int
    drops_out: int


class Interface(Model):
    name: str
    up: bool
    speed_mbps: int
    mtu: int
    rx_bytes_per_s: float
    tx_bytes_per_s: float


class Process(Model):
    pid: int
    name: str
    user: str | None = None
    cpu_percent: float
    memory_percent: float
    rss: int


class Temperature(Model):
    sensor: str
    label: str
    current: float
    high: float | None = None
    critical: float | None = None


class HealthReport(Model):
    cpu: Cpu
    load: Load
    memory: Memory
    swap: Swap
    disks: list[Disk]
    disk_io: DiskIO
    net_io: NetIO
    interfaces: list[Interface]
    uptime_seconds: float
    process_count: int
    top_cpu: list[Process]
    top_memory: list[Process]
    temperatures: list[Temperature]

    def worst_disk_percent(self) -> float | None:
        return max((d.percent for d in self.disks), default=None)


# --- what the agent offers (advertised in its hello) --------------------------------

Tier = Literal["diagnostic", "action", "exec"]


class CatalogEntry(Model):
    """One named diagnostic or action, as the agent advertises it."""

    name: str
    description: str
    tier: Tier
    params_schema: dict[str, Any]
    timeout: float
    output_cap: int


class DesktopSummary(Model):
    """What a machine that allows desktop sessions offers (its policy's desktop keys)."""

    control: Literal["never", "ask", "allow"]  # may the engineer get keyboard and mouse
    clipboard: bool  # the clipboard may pass while control is granted
    source: Literal["x11", "vnc"]  # x11vnc on an X display, or the site's own VNC server
    notice: bool  # a notice shows on the machine's screen while a desktop session is open


class PolicySummary(Model):
    """The parts of the agent's local policy HQ needs to know (it cannot change them)."""

    allow_actions: bool
    allow_exec: bool
    allow_shell: bool
    require_consent: bool
    file_roots: list[str]
    max_output_bytes: int
    max_runtime_seconds: float
    max_concurrent: int
    # with allow_exec and not allow_shell: the real paths `exec` may run (the
    # machine's allow-list as resolved there; empty: no plain command runs).
    # None: not limited by a list (or an agent from before the allow-list).
    allowed_programs: list[str] | None = None
    # present only when the machine allows desktop sessions, so HQs that
    # predate them read every other machine's hello as before
    desktop: DesktopSummary | None = None

    @model_serializer(mode="wrap")
    def _drop_no_desktop(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("desktop") is None:
            data.pop("desktop", None)
        return data


# --- frames --------------------------------------------------------------------


class Hello(Model):
    type: Literal["hello"] = "hello"
    protocol: int
    agent_id: str
    version: str
    facts: Facts
    spool_dropped: int = Field(ge=0)
    catalog: list[CatalogEntry] = Field(default_factory=list)
    policy: PolicySummary | None = None


class Health(Model):
    type: Literal["health"] = "health"
    seq: int = Field(ge=1)
    sampled_at: datetime
    spool_dropped: int = Field(ge=0)
    report: HealthReport


class Help(Model):
    """A person at the machine asks for help (`fieldlink-agent help TEXT`).
    Spooled like health, so a request made while HQ is away is not lost."""

    type: Literal["help"] = "help"
    seq: int = Field(ge=1)
    text: str = Field(min_length=1, max_length=5000)
    user: str = Field(max_length=200)  # the local account that asked
    assist: bool = False  # asks for someone at HQ to take over (a session offer)
    asked_at: datetime
    snapshot: HealthReport | None = None  # a fresh sample taken when asked
    # the knowledge-base article that solved it (self-served); left out of the
    # frame when None, so HQs that predate it read other requests as before
    solved_by: str | None = Field(None, pattern=r"^KB-\d{1,12}$")

    @model_serializer(mode="wrap")
    def _drop_unsolved(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("solved_by") is None:
            data.pop("solved_by", None)
        return data


class KbQuery(Model):
    """The machine asks HQ for knowledge-base articles matching a person's words."""

    type: Literal["kb_query"] = "kb_query"
    id: int = Field(ge=1)
    text: str = Field(min_length=1, max_length=5000)
    limit: int = Field(3, ge=1, le=10)


class KbSuggestion(Model):
    number: str
    title: str
    symptom: str = ""
    resolution: str = ""
    snippet: str = ""


class KbSuggestions(Model):
    """HQ's answer to a `kb_query`: published articles for this machine's site, best first."""

    type: Literal["kb_suggestions"] = "kb_suggestions"
    id: int
    items: list[KbSuggestion]


class Rating(Model):
    """The requester at the machine rates the help on a ticket it opened."""

    type: Literal["rating"] = "rating"
    seq: int = Field(ge=1)
    ticket: str = Field(pattern=r"^FL-\d{1,12}$")
    score: int = Field(ge=1, le=5)
    comment: str = Field("", max_length=5000)
    user: str = Field(max_length=200)


class Consent(Model):
    """A person at the machine answers a session request (`fieldlink-agent
    consent --approve/--deny ID`) or ends an active session (`--end ID`)."""

    type: Literal["consent"] = "consent"
    seq: int = Field(ge=1)
    session_id: str = Field(min_length=1, max_length=64)
    # control / view_only: control of the screen in a desktop session granted or
    # taken back at the machine (it applies there at once; HQ records it)
    action: Literal["approve", "deny", "end", "control", "view_only"]
    user: str = Field(max_length=200)


SpooledKind = Literal["health", "help", "rating", "consent"]


class Ack(Model):
    """HQ has committed these frames; the agent may forget them."""

    type: Literal["ack"] = "ack"
    kind: SpooledKind
    seqs: list[int]


# A receipt's message for a help request folded into one the asker already has
# open (HQ: server.ops.helprequests); the ticket field names that request.
HELP_REPEAT = "added to your open request"


class Receipt(Model):
    """HQ's answer to a help request or rating, sent before its ack: the ticket
    it opened, or why it refused."""

    type: Literal["receipt"] = "receipt"
    kind: Literal["help", "rating"]
    seq: int
    ok: bool
    ticket: str | None = None
    message: str = ""


class TicketBrief(Model):
    number: str
    title: str
    status: str
    priority: str
    updated_at: datetime
    assignee: str | None = None
    rated: bool = False
    requested_here: bool = False


class SessionInfo(Model):
    """HQ tells the machine about a remote session on it: a request waiting
    for consent, the session becoming active (what the agent will then allow),
    or its end (the agent stops it too). Sent on every state change and, for
    live ones, after each hello."""

    type: Literal["session"] = "session"
    session_id: str
    kind: Literal["shell", "exec", "files", "desktop"]
    state: Literal[
        "requested", "awaiting_consent", "active", "ended", "denied", "expired", "failed"
    ]
    origin: Literal["hq", "site"] = "hq"
    engineer: str
    ticket: str
    reason: str = ""
    consent_by: str | None = None
    expires_at: datetime | None = None  # consent deadline while awaiting, else session end
    started_at: datetime | None = None
    end_reason: str | None = None
    record_input: bool = False
    # desktop sessions: the engineer asked for keyboard and mouse (else view
    # only), and who at the site granted it through HQ (a machine whose policy
    # says `desktop_control = "ask"` needs that, or a grant at the machine).
    # Left out when unset, so agents that predate desktops read other sessions.
    control: bool = False
    control_by: str | None = Field(None, max_length=200)

    @model_serializer(mode="wrap")
    def _drop_desktop_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if not data.get("control"):
            data.pop("control", None)
        if data.get("control_by") is None:
            data.pop("control_by", None)
        return data


class Tickets(Model):
    """The machine's open (and recently resolved) tickets, pushed by HQ on
    connect and whenever one changes, for `fieldlink-agent tickets`."""

    type: Literal["tickets"] = "tickets"
    items: list[TicketBrief]


# --- the `fieldlink-run` subsystem: one run per channel ---------------------------------
#
# HQ opens a session on subsystem RUN_SUBSYSTEM and writes one RunRequest line.
# The agent answers with RunOutput frames as output arrives and ends with one
# RunResult, then closes the channel. HQ closing the channel early cancels the
# run (the agent kills the whole process group).

RUN_SUBSYSTEM = "fieldlink-run"

RunStatus = Literal["ok", "failed", "timeout", "refused", "interrupted"]


class RunRequest(Model):
    type: Literal["run"] = "run"
    id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=100)  # a catalog entry, or "exec"
    params: dict[str, Any] = Field(default_factory=dict)
    timeout: float | None = Field(None, gt=0)
    ticket_id: str | None = None
    engineer: str | None = None
    session_id: str | None = None


class RunOutput(Model):
    type: Literal["output"] = "output"
    stream: Literal["stdout", "stderr"]
    data: str


class RunResult(Model):
    type: Literal["result"] = "result"
    status: RunStatus
    exit_code: int | None = None
    truncated: bool = False
    data: Any = None  # structured result (rows, objects) where the entry has one
    reason: str | None = None  # why it was refused or failed, for a person
    started_at: datetime
    finished_at: datetime


# --- the `fieldlink-desktop` subsystem: one desktop stream per channel ----------------
#
# HQ opens a session on subsystem DESKTOP_SUBSYSTEM with the session's
# FIELDLINK_SESSION, FIELDLINK_TICKET and FIELDLINK_ENGINEER in its environment.
# The channel's data is the screen's RFB (VNC) stream, raw bytes both ways: HQ
# is the viewer. The agent writes JSON lines on the channel's stderr: a
# DesktopStatus when the stream opens and whenever control or clipboard change,
# and one DesktopClosed with the reason before it closes the channel (exit
# status 0 when the session or HQ ended it, 1 when refused or failed).

DESKTOP_SUBSYSTEM = "fieldlink-desktop"


class DesktopStatus(Model):
    """What the engineer may do on the screen now, and who decided it last."""

    type: Literal["desktop_status"] = "desktop_status"
    session_id: str
    control: bool  # keyboard and mouse reach the screen
    clipboard: bool  # the clipboard passes both ways
    # "policy", "view-only session", or who at the site granted or took back
    # control last; "" while nobody has granted it (desktop_control = "ask")
    by: str = ""
    notice: bool = False  # a notice shows on the machine's screen


class DesktopClosed(Model):
    """The agent ends the desktop stream: why, and whether HQ should record
    the session as failed (refused, or the machine could not serve it)."""

    type: Literal["desktop_closed"] = "desktop_closed"
    session_id: str
    reason: str
    failure: bool = False


AgentFrame = Annotated[
    Hello | Health | Help | Rating | Consent | KbQuery, Field(discriminator="type")
]
HQFrame = Annotated[
    Ack | Receipt | Tickets | SessionInfo | KbSuggestions, Field(discriminator="type")
]
AnyAgentFrame = Hello | Health | Help | Rating | Consent | KbQuery
AnyHQFrame = Ack | Receipt | Tickets | SessionInfo | KbSuggestions


# Validators are built on first use: each side decodes only the other's frames,
# and a site agent should not pay the memory for HQ's decoders.


@functools.cache
def _adapter(kind: str) -> TypeAdapter[Any]:
    shapes: dict[str, Any] = {
        "agent": AgentFrame,
        "hq": HQFrame,
        "run_request": RunRequest,
        "run_reply": Annotated[RunOutput | RunResult, Field(discriminator="type")],
        "desktop_notice": Annotated[DesktopStatus | DesktopClosed, Field(discriminator="type")],
    }
    return TypeAdapter(shapes[kind])


class FrameError(ValueError):
    """A frame that is not valid JSON, not a known frame, or too large."""


def encode(frame: Model) -> bytes:
    """One frame as a JSON line."""
    return frame.model_dump_json(by_alias=True).encode() + b"\n"


def _decode(adapter: TypeAdapter[Any], line: bytes) -> Any:
    if len(line) > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {len(line)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        return adapter.validate_json(line)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "frame"
        raise FrameError(f"invalid frame at {where}: {first['msg']}") from None


def decode_agent_frame(line: bytes) -> AnyAgentFrame:
    frame: AnyAgentFrame = _decode(_adapter("agent"), line)
    return frame


def decode_hq_frame(line: bytes) -> AnyHQFrame:
    frame: AnyHQFrame = _decode(_adapter("hq"), line)
    return frame


def decode_run_request(line: bytes) -> RunRequest:
    frame: RunRequest = _decode(_adapter("run_request"), line)
    return frame


def decode_run_reply(line: bytes) -> RunOutput | RunResult:
    frame: RunOutput | RunResult = _decode(_adapter("run_reply"), line)
    return frame


def decode_desktop_notice(line: bytes) -> DesktopStatus | DesktopClosed:
    frame: DesktopStatus | DesktopClosed = _decode(_adapter("desktop_notice"), line)
    return frame


class FrameDecoder:
    """Splits a byte stream into lines, refusing any line over `limit` bytes.

    Pure: `feed` takes bytes and returns the complete lines seen so far.
    """

    def __init__(self, limit: int = MAX_FRAME_BYTES) -> None:
        self._limit = limit
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines: list[bytes] = []
        start = 0
        while True:
            end = self._buf.find(b"\n", start)
            if end < 0:
                break
            if end - start > self._limit:
                raise FrameError(f"frame exceeds {self._limit} bytes")
            line = bytes(self._buf[start:end]).strip()
            if line:
                lines.append(line)
            start = end + 1
        del self._buf[:start]
        if len(self._buf) > self._limit:
            raise FrameError(f"frame exceeds {self._limit} bytes")
        return lines
