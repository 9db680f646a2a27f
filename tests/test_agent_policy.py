"""The agent's local policy: the pure run decision, the file and its errors."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest

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


@pytest.mark.parametrize("argv", SHELL_ARGVS, ids=" ".join)
def test_shells_and_interpreters_in_an_argv_need_allow_shell(argv):
    """With allow_shell = false, an argv that runs a shell or interpreter is
    refused, however it is spelt; with allow_shell = true it is not."""
    found = check_run(Policy(allow_exec=True), "exec", shell=False, argv=argv)
    assert found is not None and "allow_shell = false" in found, (argv, found)
    assert (
        check_run(Policy(allow_exec=True, allow_shell=True), "exec", shell=False, argv=argv) is None
    )


@pytest.mark.parametrize("argv", PLAIN_ARGVS, ids=" ".join)
def test_ordinary_programs_run_without_allow_shell(argv):
    assert check_run(Policy(allow_exec=True), "exec", shell=False, argv=argv) is None


def test_allowed_interpreters_lets_the_named_ones_through():
    """A listed name allows the program by that name, what it resolves to, or its
    family (without version); nothing else."""
    only3 = Policy(allow_exec=True, allowed_interpreters=["python3"])
    assert check_run(only3, "exec", shell=False, argv=["python3", "-c", "1"]) is None
    assert check_run(only3, "exec", shell=False, argv=["env", "python3", "-c", "1"]) is None
    assert check_run(only3, "exec", shell=False, argv=["python3.11", "-c", "1"]) is not None
    assert check_run(only3, "exec", shell=False, argv=["sh", "-c", "id"]) is not None
    every = Policy(allow_exec=True, allowed_interpreters=["python"])
    assert check_run(every, "exec", shell=False, argv=["python3.11", "-c", "1"]) is None
    with pytest.raises(PolicyError, match="allowed_interpreters"):
        parse_policy('allowed_interpreters = ["/bin/sh"]\n')


def test_a_symlink_to_a_shell_is_a_shell(tmp_path):
    """The name a program resolves to counts too: a link called `ls` to bash."""
    link = tmp_path / "ls"
    link.symlink_to("/bin/bash")
    found = check_run(Policy(allow_exec=True), "exec", shell=False, argv=[str(link)])
    assert found is not None and "(bash) is a shell" in found


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
    for pol in (Policy(), custom):
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
