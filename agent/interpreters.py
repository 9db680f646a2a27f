"""Is a plain command's argv really a shell in disguise?

With `allow_shell = false` the agent refuses shell command strings, and it
must refuse the same thing spelt as an argv: `["sh", "-c", ...]`,
`["/bin/bash", ...]`, `["python3.11", "-c", ...]`, `["env", "-i", "sh"]`,
`["busybox", "sh"]`. The rule, by program *name* (what a machine calls a
program is what decides what it is):

1. The program's names are the base name of `argv[0]` and, when it is found
   on the agent's PATH, the base name of the file it resolves to (symlinks
   followed: `/bin/sh` -> `dash`, `python3` -> `python3.11`). A multi-call
   binary (busybox, toybox) is named by how it was invoked. A version suffix
   is dropped for the comparison (`python3.11` -> `python`, `ksh93` -> `ksh`).
2. A shell, a script interpreter or a program that runs a shell for you
   (`SHELLS`, `INTERPRETERS`, `SHELL_LAUNCHERS`) is refused whatever its
   arguments: `python3 -c ...` and `python3 script.py` alike. (A script on
   the machine runs by its own path: its `#!` line picks the interpreter.)
3. A command runner, a program that runs its arguments as another command
   (`RUNNERS`: env, nice, timeout, sudo, xargs, find, busybox ...), is refused
   when any later word names a shell or interpreter by rule 1 (`env -i sh`,
   `nice -n 5 python3 -c ...`, `find / -exec sh ...`); `env -S` (a command
   string split by env) is refused outright.
4. A program named in the policy's `allowed_interpreters` (by any of its
   names, or by its name without version) is not refused by rules 2 and 3.

This is a rule about names. It does not make `allow_exec = true` safe for an
engineer the site does not trust: many ordinary programs can start others
(an editor, `git`, GNU sed's `e` command). What runs under `allow_exec` is
governed by the ticket, the consent rule and the audit trail.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Collection, Sequence

from agent.runner import SAFE_PATH

SHELLS = frozenset(
    {
        "sh", "ash", "dash", "bash", "rbash", "zsh", "rzsh", "ksh", "mksh", "pdksh", "oksh",
        "lksh", "rksh", "csh", "tcsh", "fish", "yash", "posh", "elvish", "nushell", "xonsh",
        "pwsh", "powershell", "sash", "hush",
    }
)  # fmt: skip
INTERPRETERS = frozenset(
    {
        "python", "pythonw", "pypy", "jython", "ipython", "perl", "ruby", "irb", "jruby",
        "node", "nodejs", "deno", "bun", "php", "php-cgi", "lua", "luajit", "tclsh", "wish",
        "expect", "awk", "gawk", "mawk", "nawk", "busybox-awk", "guile", "racket", "sbcl",
        "clisp", "ecl", "julia", "rscript", "groovy", "jshell", "scala", "erl",
        "escript", "elixir", "iex", "ocaml", "ghci", "runghc", "runhaskell", "gdb", "lldb",
        "osascript", "tcl", "pike", "gst", "qjs", "rhino", "jjs", "nix-shell",
    }
)  # fmt: skip
# Programs that start a shell (or run their argument through one) themselves.
SHELL_LAUNCHERS = frozenset(
    {"su", "runuser", "sg", "newgrp", "login", "script", "watch", "screen", "tmux", "byobu"}
)
RUNNERS = frozenset(
    {
        "env", "busybox", "toybox", "nice", "nohup", "setsid", "timeout", "stdbuf", "ionice",
        "chrt", "taskset", "time", "sudo", "doas", "pkexec", "chroot", "unshare", "nsenter",
        "flock", "xargs", "find", "prlimit", "setpriv", "capsh", "strace", "ltrace", "valgrind",
        "systemd-run", "cgexec", "numactl", "firejail", "bwrap", "chpst", "softlimit",
        "faketime", "fakeroot", "proot", "parallel", "catchsegv", "exec", "command", "builtin",
        "start-stop-daemon", "ip", "schroot", "machinectl", "run-parts", "ssh", "dbus-launch",
    }
)  # fmt: skip
MULTI_CALL = frozenset({"busybox", "toybox"})
REFUSED = SHELLS | INTERPRETERS | SHELL_LAUNCHERS

_VERSION = re.compile(r"^(?P<name>[a-z][a-z_+-]*?)[-_.]?\d[\d._-]*[a-z]?$")
_TOKENS = re.compile(r"[\s=:;,'\"`|&()<>{}\[\]$]+")
_ENV_SPLIT = re.compile(r"^(-[0iv]*S|--split-string)")  # env -S, -iS, --split-string=
_MAX_LOOKUPS = 64  # PATH lookups for one argv's later words


def family(name: str) -> str:
    """`name` lowercased without a version suffix: python3.11 -> python, ksh93 -> ksh."""
    low = name.lower()
    found = _VERSION.match(low)
    return found.group("name") if found else low


def _resolve(program: str) -> str | None:
    """The real file `program` runs (an absolute path as given, else found on
    the agent's PATH), symlinks followed; None if it is not there."""
    if program.startswith("/"):
        path: str | None = program if os.path.exists(program) else None
    elif "/" in program:
        path = None
    else:
        path = shutil.which(program, path=SAFE_PATH)
    return os.path.realpath(path) if path is not None else None


Resolver = Callable[[str], str | None]


def names(program: str, resolve: Resolver = _resolve) -> list[str]:
    """The names a program goes by for this rule: how it is invoked and what it
    resolves to (a multi-call binary only by how it is invoked)."""
    invoked = os.path.basename(program.rstrip("/")) or program
    out = [invoked]
    real = resolve(program)
    if real is not None:
        target = os.path.basename(real)
        if target not in out and not (family(target) in MULTI_CALL and invoked != target):
            out.append(target)
    return out


def _kind(name: str) -> str:
    if name in SHELLS:
        return "a shell"
    if name in INTERPRETERS:
        return "a script interpreter"
    return "a program that runs a shell"


def _match(found: list[str], allowed: Collection[str]) -> tuple[str, str] | None:
    """(name, what it is) if one of `found` is a shell or interpreter not allowed."""
    if any(n in allowed or family(n) in allowed for n in found):
        return None
    for name in found:
        for candidate in (name.lower(), family(name)):
            if candidate in REFUSED:
                return name, _kind(candidate)
    return None


def refusal(
    argv: Sequence[str], allowed: Collection[str] = (), resolve: Resolver = _resolve
) -> str | None:
    """Why `argv` is a shell or interpreter that `allow_shell = false` refuses,
    or None if it is an ordinary program (see the module docstring)."""
    if not argv:
        return None
    hint = (
        "this machine's policy does not allow shells or script interpreters "
        "(allow_shell = false) unless allowed_interpreters lists them"
    )
    program = argv[0]
    own = names(program, resolve)
    hit = _match(own, allowed)
    if hit is not None:
        name, what = hit
        shown = program if name == os.path.basename(program) else f"{program} ({name})"
        return f"{shown} is {what}; {hint}"
    if not any(n.lower() in RUNNERS or family(n) in RUNNERS for n in own):
        return None
    lookups = 0
    for word in argv[1:]:
        if "env" in (family(n) for n in own) and _ENV_SPLIT.match(word):
            return f"{program} -S (--split-string) runs a command string; {hint}"
        for token in _TOKENS.split(word):
            if not token or token.startswith("-"):
                continue
            found = [os.path.basename(token.rstrip("/")) or token]
            if lookups < _MAX_LOOKUPS and (token.startswith("/") or "/" not in token):
                lookups += 1
                found = names(token, resolve)
            hit = _match(found, allowed)
            if hit is not None:
                name, what = hit
                shown = token if name == os.path.basename(token) else f"{token} ({name})"
                return f"{program} would run {shown}, which is {what}; {hint}"
    return None
