"""What every catalog entry is made of, and what it gets to work with.

An `Entry` names a diagnostic or action, its pydantic parameter model, its
risk tier, its own timeout and output cap, and an async `run(ctx, params)`
returning an `Outcome`. `Context` is the entry's only way out: `write()` text
for the engineer, `exec()` a fixed argv through `agent.runner`, `thread()`
for blocking psutil/file work. Both count against the run's output cap.

Parameter types here (`Host`, `DnsName`, `Unit`, `AbsPath`, `Pattern`) are
strict and never start with `-`, so a value handed to a tool's argv cannot be
read as an option; and no value ever reaches a shell.

    Problem            the entry cannot do it here -> status "failed"
    └── Refused        this request is not allowed -> status "refused"
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import shutil
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from agent.allowlist import Launch
from agent.containment import Containment
from agent.groups import GroupBook
from agent.policy import Policy
from agent.runner import SAFE_PATH, ProcessResult, Stream, base_env, run_process
from shared import protocol as p

T = TypeVar("T")

KIB = 1024
MIB = 1024 * KIB
SEND_CHUNK = 32 * KIB  # characters per output frame, well under the frame limit


class Problem(Exception):
    """The entry could not do what was asked on this machine (status failed)."""

    status: Literal["failed", "refused"] = "failed"

    def __init__(self, reason: str, *, data: Any = None, exit_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.data = data
        self.exit_code = exit_code


class Refused(Problem):
    """This request is not allowed here, whatever the machine's state (status refused)."""

    status = "refused"


@dataclass
class Outcome:
    """What an entry's `run` returns when it got to an answer."""

    data: Any = None
    status: Literal["ok", "failed"] = "ok"
    reason: str | None = None
    exit_code: int | None = None


class Params(BaseModel):
    """Base of every parameter model: unknown keys refused, no type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NoParams(Params):
    """This entry takes no parameters."""


@dataclass(frozen=True)
class Entry:
    name: str
    description: str
    params: type[Params]
    tier: p.Tier
    timeout: float
    output_cap: int
    run: Callable[[Context, Any], Awaitable[Outcome]]
    # For exec: does this request use a shell string? (policy decides separately)
    wants_shell: Callable[[Any], bool] = field(default=lambda _params: False)
    # For exec: the argv it runs, if given as one (the policy checks its program)
    argv: Callable[[Any], Sequence[str] | None] = field(default=lambda _params: None)

    def advertise(self) -> p.CatalogEntry:
        return p.CatalogEntry(
            name=self.name,
            description=self.description,
            tier=self.tier,
            params_schema=self.params.model_json_schema(),
            timeout=self.timeout,
            output_cap=self.output_cap,
        )


# --- parameter types ------------------------------------------------------------

_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def _check_host(value: str) -> str:
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > 253 or not all(_LABEL.match(x) for x in name.split(".")):
        raise ValueError("not a valid host name or IP address")
    return value


Host = Annotated[
    str,
    Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9:][A-Za-z0-9.:-]*$"),
    AfterValidator(_check_host),
]
DnsName = Annotated[
    str,
    Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_:][A-Za-z0-9_.:-]*$"),
    AfterValidator(_check_host),
]
Unit = Annotated[
    str,
    Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_\\][A-Za-z0-9_.:@\\-]*$"),
]


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("path contains a NUL byte")
    return value


AbsPath = Annotated[
    str, Field(min_length=1, max_length=4096, pattern=r"^/"), AfterValidator(_no_nul)
]

# A quantified group that itself ends in a quantifier: (a+)+, (x*)*, (a{2,})+ ...
_NESTED = re.compile(r"[+*}?]\)[+*{]")


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    if _NESTED.search(value):
        raise ValueError("nested quantifiers such as (a+)+ are not allowed (they can run forever)")
    return value


Pattern = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_check_regex)]


# --- the context ------------------------------------------------------------------


class Context:
    """One run's budget (time, output) and its way to send output to HQ."""

    def __init__(
        self,
        *,
        policy: Policy,
        timeout: float,
        output_cap: int,
        send: Callable[[Stream, str], Awaitable[None]],
        groups: GroupBook | None = None,
        containment: Containment | None = None,
    ) -> None:
        self.policy = policy
        self.groups = groups
        self.containment = containment
        self.timeout = timeout
        self.output_cap = output_cap
        self.used = 0
        self.truncated = False
        self.stop = threading.Event()  # set when the run ends: worker threads give up
        # exec under the allow-list: the real file that was checked, and its argv[0]
        self.program: Launch | None = None
        self._send = send
        self._deadline = asyncio.get_running_loop().time() + timeout

    def remaining(self) -> float:
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    async def write(self, text: str, stream: Stream = "stdout") -> None:
        """Send text, counted against the cap; the part beyond it is dropped."""
        if not text or self.used >= self.output_cap:
            if text:
                self.truncated = True
            return
        raw = text.encode()
        room = self.output_cap - self.used
        if len(raw) > room:
            raw = raw[:room]
            text = raw.decode(errors="ignore")
            self.truncated = True
        self.used += len(raw)
        for i in range(0, len(text), SEND_CHUNK):
            await self._send(stream, text[i : i + SEND_CHUNK])

    async def line(self, text: str = "") -> None:
        await self.write(text + "\n")

    async def exec(
        self,
        argv: Sequence[str],
        *,
        stream: bool = True,
        user: str | None = None,
        home: str = "/",
        cwd: str = "/",
        executable: str | None = None,
    ) -> ProcessResult:
        """Run a fixed argv (the first word looked up on a fixed PATH), streaming
        its output to HQ or (stream=False) only capturing it for parsing; either
        way the result keeps the output (up to the cap) for parsing.
        Raises Problem if the program is not installed. With `executable`, that
        file runs, with `argv` (its argv[0] too) as given."""
        program = which(argv[0]) if executable is None else argv[0]
        if program is None:
            raise Problem(f"{argv[0]} is not installed on this machine")
        if stream:
            room = max(self.output_cap - self.used, 0)
            result = await run_process(
                [program, *argv[1:]],
                timeout=self.remaining() + 1.0,
                output_cap=room,
                on_output=self._send,
                env=base_env(home),
                cwd=cwd,
                user=user,
                groups=self.groups,
                executable=executable,
                containment=self.containment,
            )
            self.used += result.output_bytes
            self.truncated = self.truncated or result.truncated
        else:
            result = await run_process(
                [program, *argv[1:]],
                timeout=self.remaining() + 1.0,
                output_cap=self.output_cap,
                env=base_env(home),
                cwd=cwd,
                user=user,
                groups=self.groups,
                executable=executable,
                containment=self.containment,
            )
        return result

    async def thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work (psutil, file walks) in a worker thread."""
        return await asyncio.to_thread(fn, *args)


def which(program: str) -> str | None:
    """Where `program` is on the agent's fixed PATH (absolute paths as they are)."""
    if program.startswith("/"):
        return program if shutil.which(program) else None
    if "/" in program:
        return None  # relative to what? Name a program or give its absolute path.
    return shutil.which(program, path=SAFE_PATH)


def systemd_running() -> bool:
    """True when PID 1 is systemd (the same test as systemd's sd_booted())."""
    return os.path.isdir("/run/systemd/system")


def no_systemd_reason(what: str) -> str:
    return (
        f"{what} needs systemd, and systemd is not running on this machine "
        "(PID 1 is another init), so there are no systemd units to query"
    )


def resolve_under(path: str, roots: Sequence[str]) -> str:
    """`path` with symlinks and `..` resolved, if that lies under one of `roots`
    (themselves resolved); else Refused, naming what it resolved to."""
    real = os.path.realpath(path)
    for root in roots:
        top = os.path.realpath(root)
        if real == top or real.startswith(top.rstrip("/") + "/"):
            return real
    shown = path if real == path else f"{path} (which resolves to {real})"
    allowed = ", ".join(roots) or "none"
    raise Refused(f"{shown} is outside this machine's allowed file roots ({allowed})")


# --- rendering -------------------------------------------------------------------------


def table(columns: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    """The structured shape of a tabular result."""
    return {"columns": columns, "rows": rows}


def render_table(columns: list[str], rows: list[list[Any]], empty: str = "(none)") -> str:
    """Rows as aligned text columns, for a person reading stdout."""
    if not rows:
        return empty + "\n"
    cells = [[_cell(c) for c in columns]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines) + "\n"


def render_pairs(pairs: list[tuple[str, Any]]) -> str:
    width = max((len(k) for k, _ in pairs), default=0)
    return "".join(f"{k.ljust(width)}  {_cell(v)}\n" for k, v in pairs)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(_cell(v) for v in value)
    return str(value)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
