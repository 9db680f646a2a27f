"""With `allow_shell = false`, `exec` runs only the programs the policy lists.

A rule about names (agent.interpreters) cannot stop a copy of a shell called
`lister`, `flock F -c ...`, `sed '1e id'` or `git -c alias.z=!id z`. So the
policy's `allowed_programs` is an allow-list, judged by the real file:

- Each entry is a program: an absolute path, or a bare name looked up on the
  agent's fixed PATH (`SAFE_PATH`), optionally with argument patterns:
  `"/usr/bin/uptime"`, `"df"`, `{ path = "systemctl", args = ["status *"] }`.
- When the policy is loaded (at start, on SIGHUP) each entry is resolved to
  its real file (symlinks followed) and remembered with its device and inode.
  An entry not installed here, not a regular file, or a file that users other
  than root (and the agent's own user) could change, is left out with a
  warning.
- At exec time argv[0] is resolved the same way and must be the same real
  path *and* the same (device, inode) as a listed entry: a copy, a hard link
  or a symlink of a shell under any name is not listed, so it is refused. A
  listed file replaced since the policy was loaded (a new inode at the same
  path: an upgrade, or an attacker) is refused until the policy is reloaded.
  The agent then runs the real file it checked, with argv[0] set to the
  path the listed entry was found at (`/usr/bin/ex`, `/bin/df`): a program
  that acts on its name (vim as ex, a busybox applet) acts as listed, and a
  link with another name cannot steer it.
- Argument patterns (`args`) are matched against the whole of argv[1:], one
  pattern word per argument (see `matches`); without `args` any arguments go.
- A program known to run arbitrary code through its arguments (a shell, an
  interpreter, env/nice/timeout/xargs/find/flock, make, tar, sed, git, vim,
  socat, ld.so, busybox ... see `runs_code`) is refused without argument
  patterns, unless `allowed_interpreters` names it too; the agent warns about
  such an entry when it loads the policy.

The interpreter rule (agent.interpreters) still applies after this, as a
second line. `resolve()` and `identify()` touch the file system; `refusal()`
is the pure decision.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from agent import interpreters
from agent.runner import SAFE_PATH

if TYPE_CHECKING:
    from agent.policy import Policy

DOCS = "docs/agent-runs.md#plain-commands-the-allow-list"
MAX_PATTERNS = 64
MAX_WORDS = 256
MORE = "..."  # as a pattern's last word: any number of further arguments (no options)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def _check_program(value: str) -> str:
    if "\x00" in value:
        raise ValueError("a program path cannot contain a NUL byte")
    if value.startswith("/"):
        return os.path.normpath(value)
    if not _NAME.match(value):
        raise ValueError(
            f"{value!r} is neither an absolute path nor a bare program name (looked up on "
            f"{SAFE_PATH})"
        )
    return value


def _check_words(words: list[str]) -> list[str]:
    if len(words) > MAX_WORDS:
        raise ValueError(f"an argument pattern has at most {MAX_WORDS} words")
    if any("\x00" in w for w in words):
        raise ValueError("an argument pattern cannot contain a NUL byte")
    if MORE in words[:-1]:
        raise ValueError(f"{MORE!r} may only be a pattern's last word")
    return words


def _check_pattern(value: str) -> str:
    _check_words(value.split())
    return value


ProgramPath = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_check_program)]
PatternText = Annotated[str, Field(max_length=8192), AfterValidator(_check_pattern)]
PatternWords = Annotated[list[Annotated[str, Field(max_length=8192)]], AfterValidator(_check_words)]


class ProgramRule(BaseModel):
    """One `allowed_programs` entry written as a table: a program and the
    argument patterns it may run with (None: any arguments)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    path: ProgramPath
    args: list[PatternText | PatternWords] | None = Field(default=None, max_length=MAX_PATTERNS)


Entry = ProgramPath | ProgramRule


def rule_of(entry: str | ProgramRule) -> ProgramRule:
    return entry if isinstance(entry, ProgramRule) else ProgramRule(path=entry)


# --- argument patterns (pure) ---------------------------------------------------------


def words_of(pattern: str | Sequence[str]) -> list[str]:
    """A pattern's words: a string split on whitespace, or a list as written
    (for arguments that contain spaces)."""
    return pattern.split() if isinstance(pattern, str) else list(pattern)


def _wild(word: str) -> re.Pattern[str] | None:
    if "*" not in word and "?" not in word:
        return None
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in word)
    return re.compile(body, re.DOTALL)


def word_matches(word: str, arg: str) -> bool:
    """One pattern word against one argument. `*` matches any run of
    characters, `?` one character, everything else itself; a word with a
    wildcard matches an argument starting with `-` only if the word itself
    starts with `-` (so `*` never lets an option through)."""
    wild = _wild(word)
    if wild is None:
        return word == arg
    if arg.startswith("-") and not word.startswith("-"):
        return False
    return wild.fullmatch(arg) is not None


def matches(pattern: str | Sequence[str], args: Sequence[str]) -> bool:
    """Does the whole of `args` (argv[1:]) fit `pattern`? One word per
    argument; a last word `...` stands for any number of further arguments,
    none of them starting with `-`. The empty pattern means no arguments."""
    words = words_of(pattern)
    if words and words[-1] == MORE:
        head = words[:-1]
        if len(args) < len(head):
            return False
        rest = args[len(head) :]
        if any(a.startswith("-") for a in rest):
            return False
        args = args[: len(head)]
        words = head
    if len(words) != len(args):
        return False
    return all(word_matches(w, a) for w, a in zip(words, args, strict=True))


# --- programs that run code through their arguments ----------------------------------

# Beyond shells, interpreters and command runners (agent.interpreters), programs
# whose arguments can make them run a command or code: make --eval/$(shell),
# tar --checkpoint-action/--to-command/-I, sed e, git -c alias/core.pager,
# editors (:!cmd), pagers (!cmd), socat/nc EXEC/-e, ssh ProxyCommand, rsync -e,
# zip -TT, apt -o ...::Pre-Invoke, tcpdump -z, database shells (\!, .shell) ...
CODE_VIA_ARGS = frozenset(
    {
        "make", "gmake", "bmake", "tar", "bsdtar", "gtar", "sed", "gsed", "git", "vim", "vi",
        "nvim", "ex", "view", "rvim", "rview", "vimdiff", "emacs", "nano", "pico", "ed", "red",
        "less", "more", "most", "pg", "man", "socat", "nc", "ncat", "netcat", "telnet", "ssh",
        "scp", "sftp", "rsync", "zip", "ldd", "dpkg", "apt", "apt-get", "aptitude", "dnf",
        "yum", "rpm", "pip", "pip3", "npm", "npx", "cpan", "gem", "cargo", "go", "docker",
        "podman", "kubectl", "crontab", "at", "batch", "mysql", "mariadb", "psql", "sqlite3",
        "tcpdump", "perf", "cmake", "ninja", "m4", "gcc", "cc", "clang", "ld", "openssl",
        "systemd-nspawn", "lxc-attach", "ansible", "terraform", "bpftrace",
        "mail", "mutt", "ftp", "lftp", "sudoedit", "visudo",
        "vipw", "run-mailcap", "xdg-open", "sensible-editor", "sensible-pager", "editor",
        "pager", "tclsh", "wish", "gdb", "dc", "bc", "jq", "yq",
    }
)  # fmt: skip
_LD_SO = re.compile(r"^ld(-linux[\w.-]*|-musl[\w.-]*)?\.so(\.\d+)*$")
RUNS_CODE = interpreters.REFUSED | interpreters.RUNNERS | CODE_VIA_ARGS


def _candidates(name: str) -> set[str]:
    low = name.lower()
    stem = low.split(".", 1)[0]  # vim.basic -> vim, python3.11 -> python3
    return {low, stem, interpreters.family(low), interpreters.family(stem)}


def runs_code(*names: str) -> str | None:
    """The name under which one of `names` (a program's listed and real base
    names) is known to run code through its arguments; None if none is."""
    for name in names:
        if _LD_SO.match(name.lower()):
            return name
        if _candidates(name) & RUNS_CODE:
            return name
    return None


# --- identity of a file (I/O) -------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """The file a program name runs: where it was found, its real path and what
    the kernel knows of it."""

    found: str
    real: str
    dev: int
    ino: int
    uid: int
    mode: int

    def same_file(self, other: Identity) -> bool:
        return (self.real, self.dev, self.ino) == (other.real, other.dev, other.ino)


def identify(program: str) -> Identity | str:
    """The real file `program` names (an absolute path as given, else looked up
    on the agent's fixed PATH; symlinks followed), or why there is none."""
    if program.startswith("/"):
        path = program
    elif "/" in program:
        return f"{program}: name a program or give its absolute path"
    else:
        looked = shutil.which(program, path=SAFE_PATH)
        if looked is None:
            return f"{program}: command not found (looked up on {SAFE_PATH})"
        path = looked
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as exc:
        return f"{program}: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        return f"{program} ({real}) is not a regular file"
    return Identity(path, real, st.st_dev, st.st_ino, st.st_uid, stat.S_IMODE(st.st_mode))


def unsafe_file(ident: Identity, agent_uid: int) -> str | None:
    """Why a program file cannot be trusted to stay what it is: someone other
    than root (or the agent's own user) owns it or may write to it."""
    if ident.uid not in (0, agent_uid):
        return f"{ident.real} belongs to uid {ident.uid}, who could change it"
    if ident.mode & 0o022:
        return f"{ident.real} can be written by others (mode {ident.mode:04o})"
    return None


# --- the resolved list ----------------------------------------------------------------


@dataclass(frozen=True)
class Allowed:
    """One listed program as resolved when the policy was loaded."""

    listed: str  # as the policy names it
    ident: Identity
    patterns: tuple[tuple[str, ...], ...] | None  # None: any arguments
    blocked: str | None  # why it may not run at all (runs code, no patterns)


@dataclass(frozen=True)
class AllowList:
    """`allowed_programs` resolved on this machine, and what was wrong with it."""

    programs: tuple[Allowed, ...] = ()
    warnings: tuple[str, ...] = ()
    # the policy lists no program at all (a policy from before the allow-list)
    unlisted: bool = True

    def runnable(self) -> list[str]:
        """Real paths of the programs exec may run (for HQ)."""
        return sorted({a.ident.real for a in self.programs if a.blocked is None})


EMPTY = AllowList()


def migration_notice() -> str:
    return (
        "allow_exec = true, but allow_shell = false and allowed_programs is empty, so every "
        "plain command is refused: exec now runs only the programs listed in allowed_programs. "
        'Add them to policy.toml (e.g. allowed_programs = ["/usr/bin/systemctl", "df"]) and '
        f"reload; see {DOCS}"
    )


def resolve(policy: Policy, agent_uid: int | None = None) -> AllowList:
    """Resolve the policy's `allowed_programs` on this machine (I/O: PATH
    lookups, realpath, stat). Entries that cannot be used are left out, each
    with a warning; so are code-running programs without argument patterns."""
    uid = os.geteuid() if agent_uid is None else agent_uid
    found: list[Allowed] = []
    warnings: list[str] = []
    interp = set(policy.allowed_interpreters)
    for entry in policy.allowed_programs:
        rule = rule_of(entry)
        ident = identify(rule.path)
        if isinstance(ident, str):
            warnings.append(f"allowed_programs: {ident}; left out")
            continue
        unsafe = unsafe_file(ident, uid)
        if unsafe is not None:
            warnings.append(f"allowed_programs: {rule.path}: {unsafe}; left out")
            continue
        blocked = None
        names = (os.path.basename(rule.path), os.path.basename(ident.real))
        runner = runs_code(*names)
        if runner is not None and rule.args is None:
            named = any(n in interp or interpreters.family(n) in interp for n in names)
            if not named:
                blocked = (
                    f"{rule.path} ({ident.real}) can run arbitrary code through its arguments "
                    f"({runner}), so allowed_programs must give it argument patterns (args) "
                    "before exec runs it"
                )
                warnings.append(f"allowed_programs: {blocked}; see {DOCS}")
        patterns = None if rule.args is None else tuple(tuple(words_of(a)) for a in rule.args)
        found.append(Allowed(rule.path, ident, patterns, blocked))
    if policy.allow_exec and not policy.allow_shell and not policy.allowed_programs:
        warnings.append(migration_notice())
    return AllowList(tuple(found), tuple(warnings), unlisted=not policy.allowed_programs)


# --- the decision (pure) --------------------------------------------------------------


def _hint() -> str:
    return (
        "with allow_shell = false, exec runs only the programs listed in this machine's "
        f"allowed_programs (see {DOCS})"
    )


def _shown_patterns(patterns: Sequence[Sequence[str]], limit: int = 5) -> str:
    shown = ["'" + " ".join(p) + "'" for p in patterns[:limit]]
    more = f" and {len(patterns) - limit} more" if len(patterns) > limit else ""
    return ", ".join(shown) + more


def refusal(
    allow: AllowList,
    argv: Sequence[str],
    ident: Identity | str,
    *,
    agent_uid: int,
    allowed_interpreters: Collection[str] = (),
) -> str | None:
    """Why `argv` (whose program resolved to `ident`) may not run under the
    allow-list, or None if it may. Then the interpreter rule, as a second line."""
    found = pick(allow, argv, ident, agent_uid=agent_uid)
    if isinstance(found, str):
        return found
    return interpreters.refusal(argv, allowed_interpreters)


@dataclass(frozen=True)
class Launch:
    """How to start an argv the allow-list let through: the real file checked
    (`ident`), given the argv[0] its listed entry was found as."""

    ident: Identity
    name: str

    def still_same(self) -> str | None:
        """Why the file is no longer the one checked (blocking: a stat), or None."""
        now = identify(self.ident.real)
        if isinstance(now, str) or not now.same_file(self.ident):
            return (
                f"{self.ident.real} was replaced while the run waited to start; "
                "it runs again once the policy is reloaded"
            )
        return None


def launch(allow: AllowList, argv: Sequence[str], ident: Identity) -> Launch:
    """How to start `argv`, which the allow-list let through (see `Launch`)."""
    found = pick(allow, argv, ident, agent_uid=None)
    listed = found.ident.found if isinstance(found, Allowed) else ident.real
    return Launch(ident, listed)


def pick(
    allow: AllowList, argv: Sequence[str], ident: Identity | str, *, agent_uid: int | None
) -> Allowed | str:
    """The listed entry that lets `argv` run, or why none does."""
    if not argv:
        return "an empty argv names no program"
    program = argv[0]
    if allow.unlisted:
        return (
            "this machine's policy lists no programs for plain commands: allowed_programs is "
            f"empty, and {_hint()}; add the programs HQ may run to policy.toml"
        )
    if isinstance(ident, str):
        return f"{ident}; {_hint()}"
    shown = program if program == ident.real else f"{program} ({ident.real})"
    listed = [a for a in allow.programs if a.ident.real == ident.real]
    if not listed:
        return f"{shown} is not in allowed_programs; {_hint()}"
    same = [a for a in listed if a.ident.same_file(ident)]
    if not same:
        return (
            f"{shown} changed since the policy was loaded (it is another file now); it runs "
            "again once the policy is reloaded (kill -HUP the agent) with the new file in place"
        )
    unsafe = unsafe_file(ident, agent_uid) if agent_uid is not None else None
    if unsafe is not None:
        return f"{shown} is not run: {unsafe}"
    usable = [a for a in same if a.blocked is None]
    if not usable:
        return same[0].blocked or f"{shown} is not allowed"
    args = list(argv[1:])
    fits = [a for a in usable if a.patterns is None or any(matches(p, args) for p in a.patterns)]
    if not fits:
        patterns = [p for a in usable for p in (a.patterns or ())]
        return (
            f"{shown} with these arguments matches none of the argument patterns "
            f"allowed_programs gives it ({_shown_patterns(patterns)}); see {DOCS}"
        )
    invoked = os.path.basename(program)
    return next((a for a in fits if os.path.basename(a.ident.found) == invoked), fits[0])
