"""The agent's local policy: the pure run decision, the file and its errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from typing import Any

import pytest

from agent import allowlist
from agent.catalog.base import which
from agent.policy import (
    Policy,
    PolicyError,
    check_run,
    current_user,
    ensure_policy,
    load_policy,
    parse_policy,
    template,
    write_default,
)

EXEC = "this machine's policy does not allow plain commands (allow_exec = false)"
ACTIONS = "this machine's policy does not allow actions (allow_actions = false)"
SHELL = "allow_shell = false"


@pytest.mark.parametrize(
    ("policy", "tier", "shell", "refusal"),
    [
        # diagnostics: always allowed, whatever the policy says
        ({}, "diagnostic", False, None),
        ({"allow_actions": False, "allow_exec": False}, "diagnostic", False, None),
        # actions
        ({}, "action", False, None),
        ({"allow_actions": False}, "action", False, ACTIONS),
        ({"allow_actions": False, "allow_exec": True}, "action", False, ACTIONS),
        # plain commands
        ({}, "exec", False, EXEC),
        ({}, "exec", True, EXEC),
        ({"allow_shell": True}, "exec", True, EXEC),  # shell alone is not enough
        ({"allow_exec": True}, "exec", False, None),
        ({"allow_exec": True}, "exec", True, SHELL),
        ({"allow_exec": True, "allow_shell": True}, "exec", True, None),
        ({"allow_exec": True, "allow_actions": False}, "exec", False, None),
    ],
)
def test_check_run_grid(policy, tier, shell, refusal):
    """Each tier needs exactly its own switches, and the reason names the key."""
    found = check_run(Policy(**policy), tier, shell=shell)
    if refusal is None:
        assert found is None
    else:
        assert found is not None and refusal in found


SHELL_ARGVS = [
    ["sh", "-c", "id"],
    ["/bin/sh"],
    ["/usr/bin/../bin/sh", "-c", "id"],
    ["bash", "-c", "id"],
    ["dash"],
    ["zsh", "-c", "id"],
    ["ksh93", "-c", "id"],
    ["fish", "-c", "id"],
    ["busybox", "sh", "-c", "id"],
    ["busybox", "ash"],
    ["python3", "-c", "print(1)"],
    ["python3.11", "-c", "print(1)"],
    ["/usr/bin/python3", "/tmp/script.py"],
    ["perl", "-e", "exec 'sh'"],
    ["ruby", "-e", "1"],
    ["node", "-e", "1"],
    ["awk", 'BEGIN { system("id") }'],
    ["env", "sh", "-c", "id"],
    ["env", "-i", "-u", "HOME", "PATH=/bin", "/bin/bash"],
    ["/usr/bin/env", "-S", "sh -c id"],
    ["env", "-iSsh -c id"],
    ["nice", "-n", "5", "python3", "-c", "1"],
    ["timeout", "5", "sh", "-c", "id"],
    ["sudo", "-u", "root", "sh"],
    ["xargs", "-a", "/dev/null", "bash"],
    ["find", "/", "-exec", "sh", "-c", "id", ";"],
    ["su", "-c", "id"],
    ["watch", "id"],
]
PLAIN_ARGVS = [
    ["id"],
    ["echo", "sh", "-c", "id"],  # echo runs nothing: its words are only printed
    ["ls", "-l", "/bin/sh"],
    ["env", "LANG=C", "ls", "/var/log"],
    ["nice", "-n", "5", "du", "-sh", "/var/log"],
    ["find", "/var/log", "-name", "*.log"],
    ["systemctl", "status", "cups"],
]


def decide(policy: Policy, argv: list[str]) -> str | None:
    """check_run as the run service calls it: the allow-list resolved here and
    argv[0] identified here."""
    return check_run(
        policy,
        "exec",
        shell=False,
        argv=argv,
        programs=allowlist.resolve(policy),
        program=allowlist.identify(argv[0]),
        agent_uid=os.geteuid(),
    )


def exactly(argv: list[str], **policy: Any) -> Policy:
    """A policy listing argv's program with exactly these arguments."""
    rule = allowlist.ProgramRule(path=argv[0], args=[argv[1:]])
    return Policy(allow_exec=True, allowed_programs=[rule], **policy)


@pytest.mark.parametrize("argv", SHELL_ARGVS, ids=" ".join)
def test_shells_and_interpreters_in_an_argv_need_allow_shell(argv):
    """With allow_shell = false, an argv that runs a shell or interpreter is
    refused however it is spelt, even when the allow-list lets exactly that
    argv through (the interpreter rule is the second line); with
    allow_shell = true it is not."""
    found = decide(exactly(argv), argv)
    assert found is not None and "allow_shell = false" in found, (argv, found)
    assert (
        check_run(Policy(allow_exec=True, allow_shell=True), "exec", shell=False, argv=argv) is None
    )


@pytest.mark.parametrize("argv", PLAIN_ARGVS, ids=" ".join)
def test_ordinary_programs_run_when_listed(argv):
    """Ordinary programs run with allow_shell = false when the allow-list names
    them (with these arguments); unlisted, they are refused."""
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed here")
    assert decide(exactly(argv), argv) is None
    plain = Policy(allow_exec=True, allowed_programs=[argv[0]])
    runner = allowlist.runs_code(argv[0], os.path.basename(os.path.realpath(which(argv[0]))))
    assert (decide(plain, argv) is None) == (runner is None), (argv, decide(plain, argv))
    other = Policy(allow_exec=True, allowed_programs=["true"])
    found = decide(other, argv)
    assert found is not None and "is not in allowed_programs" in found


def test_allowed_interpreters_lets_the_named_ones_through():
    """A listed interpreter runs without argument patterns when
    allowed_interpreters names it (by name, what it resolves to, or its
    family); nothing else does."""
    only3 = Policy(
        allow_exec=True,
        allowed_programs=["python3", "env", "sh"],
        allowed_interpreters=["python3"],
    )
    assert decide(only3, ["python3", "-c", "1"]) is None
    found = decide(only3, ["env", "python3", "-c", "1"])  # env runs code: needs patterns
    assert found is not None and "argument patterns" in found
    assert decide(only3, ["sh", "-c", "id"]) is not None
    not_listed = Policy(allow_exec=True, allowed_interpreters=["python3"], allowed_programs=["id"])
    assert decide(not_listed, ["python3", "-c", "1"]) is not None
    unnamed = Policy(allow_exec=True, allowed_programs=["python3"])
    found = decide(unnamed, ["python3", "-c", "1"])
    assert found is not None and "argument patterns" in found
    with pytest.raises(PolicyError, match="allowed_interpreters"):
        parse_policy('allowed_interpreters = ["/bin/sh"]\n')


def test_a_symlink_to_a_shell_is_a_shell(tmp_path):
    """The name a program resolves to counts too: a link called `ls` to bash."""
    link = tmp_path / "ls"
    link.symlink_to("/bin/bash")
    found = check_run(Policy(allow_exec=True), "exec", shell=False, argv=[str(link)])
    assert found is not None
    policy = Policy(allow_exec=True, allowed_programs=[str(link)])
    found = decide(policy, [str(link)])
    assert found is not None and "run arbitrary code" in found, found


def test_copies_and_links_of_a_shell_are_not_listed(tmp_path):
    """The allow-list goes by the real file: a copy, a hard link or a symlink of
    a shell under a listed program's name or any other is refused, and so is a
    listed file replaced after the policy was loaded."""
    sh = os.path.realpath("/bin/sh")
    copy = tmp_path / "uptime"
    shutil.copy2(sh, copy)
    hard = tmp_path / "df"
    os.link(copy, hard)
    link = tmp_path / "who"
    link.symlink_to(sh)
    policy = Policy(allow_exec=True, allowed_programs=["uptime", "df", "who", "echo"])
    for argv in ([str(copy), "-c", "id"], [str(hard), "-c", "id"], [str(link), "-c", "id"]):
        found = decide(policy, argv)
        assert found is not None and "allowed_programs" in found, (argv, found)

    tool = tmp_path / "tool"
    shutil.copy2(os.path.realpath(which("echo") or "/bin/echo"), tool)
    listed = Policy(allow_exec=True, allowed_programs=[str(tool)])
    programs = allowlist.resolve(listed)
    assert programs.runnable() == [str(tool)]

    def with_loaded(argv: list[str]) -> str | None:
        return check_run(
            listed,
            "exec",
            shell=False,
            argv=argv,
            programs=programs,
            program=allowlist.identify(argv[0]),
            agent_uid=os.geteuid(),
        )

    assert with_loaded([str(tool), "hi"]) is None
    new = tmp_path / "new"
    shutil.copy2(sh, new)
    new.replace(tool)
    found = with_loaded([str(tool), "-c", "id"])
    assert found is not None and "changed since the policy was loaded" in found
    tool.chmod(0o777)
    assert allowlist.resolve(listed).runnable() == []  # writable by anyone: left out


@pytest.mark.parametrize(
    ("pattern", "args", "fits"),
    [
        ("status *", ["status", "cups.service"], True),
        ("status *", ["status", "--all"], False),  # a wildcard word is no option
        ("status *", ["status"], False),
        ("status *", ["status", "a", "b"], False),
        ("status *", ["is-active", "cups"], False),
        ("-n ? -u *", ["-n", "5", "-u", "cups"], True),
        ("-n ? -u *", ["-n", "50", "-u", "cups"], False),
        ("--lines=*", ["--lines=20"], True),
        ("--lines=*", ["--lines"], False),
        ("-*", ["--anything"], True),
        ("", [], True),
        ("", ["x"], False),
        ("show ...", ["show"], True),
        ("show ...", ["show", "a", "b"], True),
        ("show ...", ["show", "a", "-x"], False),
        ("*.log", ["a.log"], True),
        ("*.log", ["a.log\nb"], False),
        ("*.log", ["a\nb.log"], True),  # any characters, one argument
        (["--message", "two words"], ["--message", "two words"], True),
        (["--message", "two words"], ["--message", "two", "words"], False),
        ("a.b", ["aXb"], False),  # only * and ? are special
        ("[ab]", ["a"], False),
    ],
)
def test_argument_patterns(pattern, args, fits):
    """A pattern is matched against all the arguments, one word each."""
    assert allowlist.matches(pattern, args) is fits


@pytest.mark.parametrize(
    ("name", "runs"),
    [
        ("find", True),
        ("flock", True),
        ("ld-linux-x86-64.so.2", True),
        ("ld-musl-x86_64.so.1", True),
        ("make", True),
        ("tar", True),
        ("sed", True),
        ("git", True),
        ("vim.basic", True),
        ("ex", True),
        ("socat", True),
        ("env", True),
        ("busybox", True),
        ("python3.11", True),
        ("mawk", True),
        ("uptime", False),
        ("df", False),
        ("systemctl", False),
        ("journalctl", False),
        ("lpstat", False),
    ],
)
def test_programs_that_run_code_through_their_arguments(name, runs):
    assert (allowlist.runs_code(name) is not None) is runs


def test_resolving_the_allow_list_warns_about_what_it_leaves_out(tmp_path):
    """At load: a program not installed, a file others may write and a
    code-running program without patterns are each named in a warning; an
    empty list with allow_exec names the key and the docs section."""
    writable = tmp_path / "tool"
    shutil.copy2(os.path.realpath(which("echo") or "/bin/echo"), writable)
    writable.chmod(0o775)
    policy = Policy(
        allow_exec=True,
        allowed_programs=[
            "no-such-program-here",
            str(writable),
            "sed",
            allowlist.ProgramRule(path="sed", args=["-n 1p /var/log/*"]),
            "id",
        ],
    )
    found = allowlist.resolve(policy)
    text = "\n".join(found.warnings)
    assert "no-such-program-here: command not found" in text
    assert "can be written by others" in text
    assert "sed" in text and "argument patterns" in text
    assert [os.path.basename(p) for p in found.runnable()] == sorted(
        [os.path.basename(os.path.realpath(which("sed") or "")), "id"]
    )
    assert decide(policy, ["sed", "-n", "1p", "/var/log/x"]) is None
    assert decide(policy, ["sed", "-n", "1e id", "/var/log/x"]) is not None
    old = allowlist.resolve(Policy(allow_exec=True))
    assert old.warnings == (allowlist.migration_notice(),)
    assert "allowed_programs" in old.warnings[0] and allowlist.DOCS in old.warnings[0]
    assert allowlist.resolve(Policy()).warnings == ()  # no exec: nothing to say


def test_defaults_are_the_safe_ones():
    """By default: actions yes; commands, shells no; consent required; logs only."""
    pol = Policy()
    assert pol.allow_actions and not pol.allow_exec and not pol.allow_shell
    assert pol.require_consent
    assert pol.file_roots == ["/var/log"]
    assert pol.shell_user == current_user()
    assert pol.max_output_bytes == 1024 * 1024 and pol.max_runtime_seconds == 300
    assert pol.max_concurrent == 4 and pol.cleanup_dirs == ["/tmp", "/var/tmp"]


def test_template_round_trips_and_documents_every_key():
    """The written file parses back to the same policy, and every key has a
    comment right above it."""
    custom = Policy(allow_exec=True, file_roots=["/var/log", '/srv/odd "dir"'], max_concurrent=2)
    programs = Policy(
        allow_exec=True,
        allowed_programs=[
            "uptime",
            "/usr/bin/lpstat",
            allowlist.ProgramRule(path="systemctl", args=["status *", ["-n", "a b"], ""]),
            allowlist.ProgramRule(path="/usr/bin/df"),
        ],
    )
    for pol in (Policy(), custom, programs):
        text = template(pol)
        assert parse_policy(text) == pol
    lines = template().splitlines()
    for key in Policy.model_fields:
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{key} = "))
        assert lines[at - 1].startswith("# "), f"{key} has no comment"
    assert set(tomllib.loads(template())) == set(Policy.model_fields)


def test_summary_matches_the_wire_model():
    """The hello's policy summary carries the policy's values."""
    pol = Policy(allow_exec=True, file_roots=["/srv/logs"], max_concurrent=7)
    summary = pol.summary()
    assert summary.allow_exec and summary.file_roots == ["/srv/logs"]
    assert summary.max_concurrent == 7 and summary.require_consent


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("allow_exe = true\n", "unknown key 'allow_exe'"),
        ('allow_exec = "yes"\n', "allow_exec: Input should be a valid boolean"),
        ("allow_exec = 1\n", "allow_exec: Input should be a valid boolean"),
        ("max_concurrent = 0\n", "max_concurrent: Input should be greater than or equal to 1"),
        ("max_output_bytes = 10\n", "max_output_bytes"),
        ('file_roots = ["var/log"]\n', "file_roots.0: Value error, 'var/log' is not an absolute"),
        ('file_roots = "/var/log"\n', "file_roots: Input should be a valid list"),
        ("allow_exec = true\nallow_exec = false\n", "is not valid TOML"),
        ("allow_exec = tru\n", "is not valid TOML"),
        ("[section]\nallow_exec = true\n", "unknown key 'section'"),
        ('allowed_programs = ["bin/ls"]\n', "neither an absolute path nor a bare program name"),
        ('allowed_programs = [{ path = "ls", args = ["... x"] }]\n', "only be a pattern's last"),
        ('allowed_programs = [{ path = "ls", argv = ["x"] }]\n', "unknown key"),
    ],
)
def test_bad_policy_text_is_refused_with_a_clear_error(text, message):
    """Typos, wrong types and bad TOML name the key or the line."""
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.toml")
    assert message in str(caught.value)
    assert "policy.toml" in str(caught.value)


def test_load_policy_file_errors(tmp_path):
    """A missing file, an unknown shell_user and a good file."""
    path = tmp_path / "policy.toml"
    with pytest.raises(PolicyError, match="not found: write the default"):
        load_policy(path)
    path.write_text('shell_user = "no-such-user-here"\n')
    with pytest.raises(PolicyError, match="'no-such-user-here' is not a user on this machine"):
        load_policy(path)
    path.write_text("allow_exec = true\nmax_runtime_seconds = 60\n")
    pol = load_policy(path)
    assert pol.allow_exec and pol.max_runtime_seconds == 60 and pol.allow_actions


def test_default_file_is_private_and_never_overwritten(tmp_path):
    """ensure_policy writes 0600 once and then leaves the site's edits alone."""
    path = tmp_path / "policy.toml"
    assert ensure_policy(path) is True
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_policy(path) == Policy()
    write_default(path, Policy(allow_exec=True))
    assert ensure_policy(path) is False
    assert load_policy(path).allow_exec is True


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, check=False
    )


def test_cli_policy_prints_the_effective_policy(tmp_path):
    """`fieldlink-agent policy --init` writes the default and prints every key;
    a broken file exits 1 with the reason."""
    done = _cli("policy", "--config-dir", str(tmp_path), "--init")
    assert done.returncode == 0, done.stderr
    for key in Policy.model_fields:
        assert re.search(rf"^{key} = ", done.stdout, re.M), key
    (tmp_path / "policy.toml").write_text("allow_exec = 1\n")
    done = _cli("policy", "--config-dir", str(tmp_path))
    assert done.returncode == 1
    assert "allow_exec: Input should be a valid boolean" in done.stderr


def test_every_policy_key_and_catalog_entry_is_documented():
    """docs/agent-runs.md names every policy key and every catalog entry."""
    from pathlib import Path

    from agent import catalog

    text = (Path(__file__).resolve().parent.parent / "docs" / "agent-runs.md").read_text()
    for key in Policy.model_fields:
        assert f"`{key}`" in text, key
    for name in catalog.entries():
        assert f"| `{name}` |" in text, name
