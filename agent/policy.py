"""The site's local policy: what HQ may ever do on this machine.

Defence in depth: HQ checks permissions, tickets and consent, and the agent
checks this file whatever HQ asks, so a compromised HQ still cannot exceed
what the site allowed.

DIR/policy.toml holds flat top-level keys (see `TEMPLATE`, written with a
comment per key by `fieldlink-agent enroll`). The daemon reads it at start
and again on SIGHUP; a broken file on reload keeps the previous policy.

`check_run()` is the one pure decision: may a run of this tier go ahead?

The desktop keys (`allow_desktop`, `desktop_*`, issue 18) are a block of
their own at the end of the model and the file; `vnc_target()` reads
`desktop_vnc_address`, which must name this machine itself (loopback or a
Unix socket): the agent never relays a screen from elsewhere.

With `allow_shell = false` a plain command must pass the allow-list
(`allowed_programs`, agent.allowlist: resolved on the machine when the policy
is loaded) and then the interpreter rule (agent.interpreters).
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from agent import allowlist
from agent.config import ConfigError, write_private
from shared import protocol as p

MIB = 1024 * 1024


class PolicyError(ConfigError):
    """The policy file is unreadable or invalid; the message says where and why."""


def current_user() -> str:
    """The name of the user this agent runs as."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _absolute(value: str) -> str:
    if not value.startswith("/") or "\x00" in value:
        raise ValueError(f"{value!r} is not an absolute path")
    return os.path.normpath(value)


AbsPath = Annotated[str, AfterValidator(_absolute)]


# --- desktop keys (issue 18) ----------------------------------------------------------

DISPLAY = re.compile(r":\d{1,4}(\.\d{1,3})?")


def _display(value: str) -> str:
    if value and not DISPLAY.fullmatch(value):
        raise ValueError(
            f'{value!r} is not a local X display: write it as ":0" (or ":0.0"); '
            "a display on another host is not served"
        )
    return value


def _optional_absolute(value: str) -> str:
    return _absolute(value) if value else value


@dataclass(frozen=True)
class VncTarget:
    """Where the site's own VNC server listens: a TCP address on this
    machine, or a Unix socket."""

    host: str = ""
    port: int = 0
    path: str = ""  # a Unix socket, instead of host and port

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def vnc_target(value: str) -> VncTarget:
    """`desktop_vnc_address` read: "127.0.0.1:5900", "[::1]:5900",
    "localhost:5900" or "unix:/run/wayvnc.sock". Anything that is not this
    machine itself is refused (ValueError, saying why)."""
    if value.startswith("unix:"):
        return VncTarget(path=_absolute(value[len("unix:") :]))
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f'{value!r} is not HOST:PORT (like "127.0.0.1:5900") or unix:/PATH')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f'{value!r}: write an IPv6 address in brackets, like "[::1]:5900"')
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(
                f"{value!r} is not on this machine: desktop_vnc_address must be a loopback "
                "address (127.0.0.1, [::1], localhost) or a Unix socket, so the VNC server "
                "listens to nothing but this machine"
            )
    return VncTarget(host="127.0.0.1" if host == "localhost" else host, port=int(port_text))


def _vnc_address(value: str) -> str:
    if value:
        vnc_target(value)
    return value


Display = Annotated[str, Field(max_length=16), AfterValidator(_display)]
OptionalAbsPath = Annotated[str, Field(max_length=4096), AfterValidator(_optional_absolute)]
VncAddress = Annotated[str, Field(max_length=4096), AfterValidator(_vnc_address)]
DesktopControl = Literal["never", "ask", "allow"]
ProgramName = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
]


class Policy(BaseModel):
    """The effective local policy. Unknown keys and wrong types are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    allow_actions: bool = True
    allow_exec: bool = False
    allow_shell: bool = False
    allowed_programs: list[allowlist.Entry] = Field(default_factory=list, max_length=256)
    allowed_interpreters: list[ProgramName] = Field(default_factory=list, max_length=64)
    require_consent: bool = True
    shell_user: str = Field(default_factory=current_user, min_length=1, max_length=64)
    file_roots: list[AbsPath] = Field(default_factory=lambda: ["/var/log"], max_length=64)
    max_output_bytes: int = Field(default=MIB, ge=1024, le=64 * MIB)
    max_runtime_seconds: float = Field(default=300.0, gt=0, le=24 * 3600)
    max_concurrent: int = Field(default=4, ge=1, le=64)
    max_file_bytes: int = Field(default=100 * MIB, ge=1, le=64 * 1024 * MIB)
    cleanup_dirs: list[AbsPath] = Field(
        default_factory=lambda: ["/tmp", "/var/tmp"],  # noqa: S108 - the system temp dirs are what disk.cleanup cleans
        max_length=64,
    )
    cleanup_min_age_hours: float = Field(default=24.0, ge=0)

    # --- remote desktop (issue 18); see docs/desktop.md ---------------------------------
    allow_desktop: bool = False
    desktop_control: DesktopControl = "ask"
    desktop_display: Display = ""
    desktop_xauthority: OptionalAbsPath = ""
    desktop_vnc_address: VncAddress = ""
    desktop_clipboard: bool = False

    @model_validator(mode="after")
    def _desktop_has_a_screen(self) -> Policy:
        if self.allow_desktop and not (self.desktop_display or self.desktop_vnc_address):
            raise ValueError(
                "allow_desktop = true needs a screen: desktop_display (an X display such "
                'as ":0") or desktop_vnc_address (a VNC server on this machine)'
            )
        return self

    def desktop_summary(self) -> p.DesktopSummary | None:
        """What HQ is told about desktop sessions; None when they are not allowed."""
        if not self.allow_desktop:
            return None
        return p.DesktopSummary(
            control=self.desktop_control,
            clipboard=self.desktop_clipboard,
            source="vnc" if self.desktop_vnc_address else "x11",
            notice=bool(self.desktop_display),
        )

    # --- the hello ------------------------------------------------------------------------

    def summary(self, programs: allowlist.AllowList | None = None) -> p.PolicySummary:
        """What HQ is told about this policy (in the hello): with `programs` (the
        allow-list as resolved here) the real paths exec may run while
        `allow_shell = false`."""
        runnable = None
        if programs is not None and self.allow_exec and not self.allow_shell:
            runnable = programs.runnable()
        return p.PolicySummary(
            allow_actions=self.allow_actions,
            allow_exec=self.allow_exec,
            allow_shell=self.allow_shell,
            require_consent=self.require_consent,
            file_roots=list(self.file_roots),
            max_output_bytes=self.max_output_bytes,
            max_runtime_seconds=self.max_runtime_seconds,
            max_concurrent=self.max_concurrent,
            desktop=self.desktop_summary(),
            allowed_programs=runnable,
        )


def check_run(
    policy: Policy,
    tier: p.Tier,
    *,
    shell: bool,
    argv: Sequence[str] | None = None,
    programs: allowlist.AllowList = allowlist.EMPTY,
    program: allowlist.Identity | str | None = None,
    agent_uid: int = 0,
) -> str | None:
    """Why this machine's policy refuses a run of `tier`, or None if it allows it.

    Diagnostics are always allowed. Actions need `allow_actions`; plain
    commands need `allow_exec`, and a shell string needs `allow_shell` too.
    While `allow_shell = false` an `argv` runs only if its program (`program`:
    argv[0] as identified on this machine) is in the resolved allow-list
    `programs` with arguments its patterns allow, and it is not a shell or
    interpreter the policy's `allowed_interpreters` does not name
    (agent.allowlist, agent.interpreters).
    """
    if tier == "diagnostic":
        return None
    if tier == "action":
        if not policy.allow_actions:
            return "this machine's policy does not allow actions (allow_actions = false)"
        return None
    if not policy.allow_exec:
        return "this machine's policy does not allow plain commands (allow_exec = false)"
    if shell and not policy.allow_shell:
        return (
            "this machine's policy does not allow shell command strings (allow_shell = false); "
            "send an argv list instead"
        )
    if argv is not None and not policy.allow_shell:
        return allowlist.refusal(
            programs,
            argv,
            program if program is not None else f"{argv[0] if argv else ''}: not identified",
            agent_uid=agent_uid,
            allowed_interpreters=policy.allowed_interpreters,
        )
    return None


def _toml_str(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"


def _toml_programs(entries: Sequence[allowlist.Entry]) -> str:
    if not entries:
        return "[]"
    lines = []
    for entry in entries:
        if isinstance(entry, str):
            lines.append(f"  {_toml_str(entry)},")
            continue
        parts = [f"path = {_toml_str(entry.path)}"]
        if entry.args is not None:
            args = [_toml_str(a) if isinstance(a, str) else _toml_list(a) for a in entry.args]
            parts.append("args = [" + ", ".join(args) + "]")
        lines.append("  { " + ", ".join(parts) + " },")
    return "[\n" + "\n".join(lines) + "\n]"


def template(policy: Policy | None = None) -> str:
    """The policy file's text: every key with a comment saying what it does."""
    pol = policy if policy is not None else Policy()

    def flag(value: bool) -> str:
        return "true" if value else "false"

    return f"""\
# Fieldlink agent local policy: what HQ may ever do on this machine.
# The agent enforces this file whatever HQ asks. After editing, reload with
#   kill -HUP <agent pid>   (or restart the agent)
# A file that does not parse on reload is ignored and the previous policy kept.
# Check it with: fieldlink-agent policy --config-dir <this directory>

# Allow state-changing actions (service.restart, process.kill, disk.cleanup,
# net.flush_dns). Read-only diagnostics are always allowed.
allow_actions = {flag(pol.allow_actions)}

# Allow plain commands ("exec": an argv list run without a shell).
allow_exec = {flag(pol.allow_exec)}

# Allow interactive shells in remote sessions (a login shell of shell_user
# under a terminal), and shell command strings for exec (run with
# /bin/sh -c; those need allow_exec = true as well). While false, exec runs
# only the programs listed in allowed_programs (below), and never a shell or
# script interpreter that allowed_interpreters does not name.
allow_shell = {flag(pol.allow_shell)}

# With allow_shell = false: the only programs exec may run. Each entry is an
# absolute path or a bare name (looked up on the agent's fixed PATH), or a
# table with argument patterns matched against all the arguments, one word
# each: "*" any text, "?" one character (a wildcard word never matches an
# option unless it starts with "-"), a last word "..." any further
# non-option arguments. The agent resolves each entry to its real file when
# it loads this policy and runs a program only if it is that very file (a
# copy or link of a shell under another name is refused; a listed file
# replaced later is refused until the policy is reloaded). Programs that can
# run code through their arguments (find, env, flock, sed, tar, make, git,
# vim, socat, ...) need argument patterns. See docs/agent-runs.md
# ("Plain commands: the allow-list"). For example:
#   allowed_programs = [
#     "uptime", "df", "/usr/bin/lpstat",
#     {{ path = "systemctl", args = ["status *", "is-active *"] }},
#     {{ path = "journalctl", args = ["-u * -n ?", "-u * -n ??"] }},
#   ]
allowed_programs = {_toml_programs(pol.allowed_programs)}

# Interpreters exec may run with allow_shell = false, by name: "python3"
# allows python3 however it resolves, "python" every python. Empty: none.
# They must be in allowed_programs too (where they need no argument patterns).
allowed_interpreters = {_toml_list(pol.allowed_interpreters)}

# Ask the site for consent before shells, plain commands and file writes.
# HQ reads this and asks; the site may answer from this machine. The agent
# enforces it too: a plain command (exec) runs only inside an active remote
# session (kind exec or shell) that someone at the site consented to, for
# the same ticket and engineer.
require_consent = {flag(pol.require_consent)}

# The user plain commands and shells run as. The agent must run as root to
# use any other user than its own.
shell_user = {_toml_str(pol.shell_user)}

# Directories HQ may read files under (log.tail, disk.largest) and, in a
# files session, read and write files under. Paths are resolved first, so
# ".." and symlinks cannot lead outside them.
file_roots = {_toml_list(pol.file_roots)}

# Most output one run may send (bytes); beyond it output is cut and the run
# stopped.
max_output_bytes = {pol.max_output_bytes}

# Longest any run may take (seconds); then its processes are killed.
max_runtime_seconds = {pol.max_runtime_seconds:g}

# How many runs may go on at once; more wait a moment, then are refused.
max_concurrent = {pol.max_concurrent}

# Largest file a files session may write (bytes); a write past it is refused.
max_file_bytes = {pol.max_file_bytes}

# Temporary directories disk.cleanup may delete old files from.
cleanup_dirs = {_toml_list(pol.cleanup_dirs)}

# disk.cleanup deletes only files untouched for at least this many hours.
cleanup_min_age_hours = {pol.cleanup_min_age_hours:g}

# --- Remote desktop: HQ sees (and, if granted, uses) this machine's screen ---
# Nothing listens here: the screen's VNC stream travels inside the agent's own
# connection, and only in a desktop session the site consented to. While one is
# open, a notice on the screen says who is connected and can end it.
# See docs/desktop.md.

# Allow desktop sessions at all.
allow_desktop = {flag(pol.allow_desktop)}

# Keyboard and mouse for the engineer: "never" (view only, always); "ask"
# (someone at the site grants it during the session, e.g.
# `fieldlink-agent consent --control ID`, and can take it back); "allow" (a
# session that asked for control has it until taken back here).
desktop_control = {_toml_str(pol.desktop_control)}

# The X display to share (":0"): the agent starts x11vnc on it for each
# session, talking through a socket pair it holds. "" for none.
desktop_display = {_toml_str(pol.desktop_display)}

# The X authority file x11vnc needs to open that display. "" for none.
desktop_xauthority = {_toml_str(pol.desktop_xauthority)}

# A VNC server this machine already runs, used instead of x11vnc (Windows,
# macOS, Wayland with wayvnc): a loopback address ("127.0.0.1:5900",
# "[::1]:5900") or a Unix socket ("unix:/run/wayvnc.sock"). "" for none.
desktop_vnc_address = {_toml_str(pol.desktop_vnc_address)}

# Let the clipboard pass both ways, while control is granted.
desktop_clipboard = {flag(pol.desktop_clipboard)}
"""


def write_default(path: Path, policy: Policy | None = None) -> None:
    """Write the policy file with its comments (owner-only), replacing any old one."""
    write_private(path, template(policy).encode())


def ensure_policy(path: Path) -> bool:
    """Write the default policy file if there is none; True if it was written."""
    if path.exists():
        return False
    write_default(path)
    return True


def _describe(exc: ValidationError) -> str:
    parts: list[str] = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"]) or "file"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {where!r}")
        else:
            parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse_policy(text: str, source: str = "policy") -> Policy:
    """A policy from TOML text; PolicyError names the line or key that is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source} is not valid TOML: {exc}") from None
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(f"invalid {source}: {_describe(exc)}") from None


def load_policy(path: Path) -> Policy:
    """Read and check the policy file at `path`."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PolicyError(
            f"{path} not found: write the default with `fieldlink-agent policy --init`"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read {path}: {exc}") from None
    policy = parse_policy(text, str(path))
    try:
        pwd.getpwnam(policy.shell_user)
    except KeyError:
        raise PolicyError(
            f"invalid {path}: shell_user {policy.shell_user!r} is not a user on this machine"
        ) from None
    return policy
