"""The catalog's parts on their own: parameter validation (no injection gets
through), path containment, the process runner's bounds, the run context."""

from __future__ import annotations

import asyncio
import os
import threading
from datetime import UTC, datetime

import psutil
import pytest
from pydantic import ValidationError

from agent import catalog
from agent.catalog.base import Context, Refused, render_table, resolve_under
from agent.catalog.logs import _tail_file
from agent.policy import Policy
from agent.run import _fit, describe_validation
from agent.runner import describe_exit, run_process
from shared import protocol as p

HOSTILE = [
    "; rm -rf /",
    "127.0.0.1; rm -rf /",
    "$(reboot)",
    "`reboot`",
    "a|b",
    "a&&b",
    "a > /etc/passwd",
    "-f",
    "--help",
    "-oProxyCommand=x",
    "a b",
    "a\nb",
    "a\x00b",
    "",
    "x" * 300,
]


def _params(name: str):
    entry = catalog.get(name)
    assert entry is not None
    return entry.params


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize(
    ("name", "field", "extra"),
    [
        ("net.ping", "host", {}),
        ("net.traceroute", "host", {}),
        ("net.tcp_check", "host", {"port": 80}),
        ("net.dns", "name", {}),
        ("service.status", "unit", {}),
        ("service.restart", "unit", {}),
        ("log.tail", "unit", {}),
    ],
)
def test_hostile_values_never_validate(name, field, extra, value):
    """Shell metacharacters, spaces, option-looking and empty values are refused
    for every parameter that reaches a tool's argv."""
    with pytest.raises(ValidationError) as caught:
        _params(name).model_validate({field: value, **extra})
    assert field in describe_validation(caught.value) or "exactly one" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("net.ping", {"host": "example.com"}),
        ("net.ping", {"host": "printer-3.shop.example.", "count": 2}),
        ("net.ping", {"host": "10.0.0.1"}),
        ("net.ping", {"host": "::1"}),
        ("net.ping", {"host": "fe80::1:2"}),
        ("net.dns", {"name": "_sip._tcp.example.com", "type": "SRV"}),
        ("net.dns", {"name": "8.8.8.8", "type": "PTR"}),
        ("net.tcp_check", {"host": "db.local", "port": 5432, "timeout": 2}),
        ("service.status", {"unit": "nginx"}),
        ("service.status", {"unit": "getty@tty1.service"}),
        ("service.status", {"unit": "systemd-fsck@dev-disk-by\\x2duuid-1.service"}),
        ("log.tail", {"path": "/var/log/syslog", "lines": 10, "pattern": r"error|fail\d+"}),
        ("process.kill", {"pid": 1234, "signal": "HUP"}),
        ("disk.cleanup", {"dir": "/tmp", "dry_run": False, "min_age_hours": 48}),
        ("exec", {"argv": ["ls", "-la", "/var/log"]}),
        ("exec", {"command": "df -h | sort"}),
    ],
)
def test_ordinary_values_validate(name, params):
    """Real host names, addresses, unit names and paths pass."""
    _params(name).model_validate(params)


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("net.ping", {"host": "a..b"}, "host"),
        ("net.ping", {"host": "-a.example"}, "host"),
        ("net.ping", {"host": "example.com", "count": 0}, "count"),
        ("net.ping", {"host": "example.com", "count": "4"}, "count"),  # strict: no coercion
        ("net.ping", {"host": "example.com", "count": 4.0}, "count"),
        ("net.tcp_check", {"host": "x", "port": 70000}, "port"),
        ("process.top", {"n": True}, "n"),
        ("process.kill", {"pid": 12, "signal": "SIGKILL"}, "signal"),
        ("disk.largest", {"path": "var/log"}, "path"),
        ("disk.largest", {"path": "/var/log\x00/x"}, "path"),
        ("log.tail", {"path": "/var/log/x", "pattern": "("}, "pattern"),
        ("log.tail", {"path": "/var/log/x", "pattern": "(x*)*y"}, "pattern"),
        ("log.tail", {"path": "/var/log/x", "pattern": "(a|a?)+$"}, "pattern"),
        ("log.tail", {}, "exactly one of unit or path"),
        ("disk.cleanup", {"dir": "/tmp", "dry_run": "false"}, "dry_run"),
        ("exec", {}, "exactly one of argv or command"),
        ("exec", {"argv": []}, "argv"),
        ("exec", {"argv": ["a\x00b"]}, "NUL"),
        ("exec", {"argv": "ls -la"}, "argv"),
        ("system.summary", {"verbose": True}, "verbose: not a parameter of this entry"),
    ],
)
def test_bad_values_are_refused_naming_the_field(name, params, field):
    """Wrong types, ranges and shapes give a reason that names the field."""
    with pytest.raises(ValidationError) as caught:
        _params(name).model_validate(params)
    assert field in describe_validation(caught.value)


def test_every_entry_is_well_formed():
    """Names are unique and dotted, tiers known, bounds positive, schemas strict."""
    entries = catalog.entries()
    assert len(entries) >= 21
    for name, entry in entries.items():
        assert name == entry.name and (name == "exec" or "." in name)
        assert entry.tier in ("diagnostic", "action", "exec")
        assert entry.timeout > 0 and entry.output_cap >= 1024
        schema = entry.params.model_json_schema()
        assert schema["additionalProperties"] is False
    tiers = {e.name: e.tier for e in entries.values()}
    assert {n for n, t in tiers.items() if t == "action"} == {
        "service.restart",
        "process.kill",
        "disk.cleanup",
        "net.flush_dns",
    }
    assert tiers["exec"] == "exec"


def test_advertised_schemas_agree_with_the_agent():
    """HQ validates with the advertised JSON schemas: they are valid Draft 2020-12
    and refuse the same hostile values the agent refuses."""
    jsonschema = pytest.importorskip("jsonschema")
    for entry in catalog.entries().values():
        jsonschema.Draft202012Validator.check_schema(entry.params.model_json_schema())
    for name, field, extra in [
        ("net.ping", "host", {}),
        ("net.dns", "name", {}),
        ("service.status", "unit", {}),
    ]:
        schema = _params(name).model_json_schema()
        for value in ("; rm -rf /", "$(reboot)", "`id`", "-f", "a b"):
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate({field: value, **extra}, schema)
    jsonschema.validate({"host": "example.com"}, _params("net.ping").model_json_schema())


def test_resolve_under_follows_symlinks_and_dots(tmp_path):
    """Paths are judged by where they really lead."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f").write_text("x")
    (tmp_path / "out").mkdir()
    (root / "out-link").symlink_to(tmp_path / "out")
    (root / "in-link").symlink_to(root / "sub")
    roots = [str(root)]
    assert resolve_under(str(root / "sub" / "f"), roots) == str(root / "sub" / "f")
    assert resolve_under(str(root / "in-link" / "f"), roots) == str(root / "sub" / "f")
    assert resolve_under(str(root), roots) == str(root)
    for bad in (
        str(root / "out-link"),
        str(root / "sub" / ".." / ".." / "out"),
        str(tmp_path / "root2"),  # a sibling that shares the prefix
        "/etc/passwd",
    ):
        with pytest.raises(Refused, match="outside this machine's allowed file roots"):
            resolve_under(bad, roots)
    with pytest.raises(Refused, match="none"):
        resolve_under(str(root), [])


def test_tail_file_reads_only_the_end(tmp_path):
    """The last lines come back whole, even across read blocks and without a
    final newline; a symlink at the last step is not opened."""
    path = tmp_path / "big.log"
    path.write_text("".join(f"line {i:06d} {'y' * 100}\n" for i in range(20_000)) + "tail")
    lines, read = _tail_file(str(path), 3, threading.Event())
    assert lines[0].startswith("line 019998") and lines[-1] == "tail"
    assert read < 128 * 1024  # it did not read the whole 2 MB file
    (tmp_path / "link.log").symlink_to(path)
    with pytest.raises(Exception, match="cannot open"):
        _tail_file(str(tmp_path / "link.log"), 3, threading.Event())


def test_result_that_does_not_fit_a_frame_drops_its_data():
    """Structured data too big for one frame is replaced, and flagged."""
    now = datetime.now(UTC)
    big = p.RunResult(status="ok", data=["x" * 1000] * 2000, started_at=now, finished_at=now)
    fitted = _fit(big)
    assert fitted.truncated and "too large" in fitted.data["omitted"]
    assert len(p.encode(fitted)) < p.MAX_FRAME_BYTES
    small = p.RunResult(status="ok", data={"a": 1}, started_at=now, finished_at=now)
    assert _fit(small) is small


def test_render_table_aligns_columns():
    text = render_table(["a", "long name"], [[1, None], [22.5, ["x", "y"]]])
    assert text.splitlines() == ["a     long name", "1     -", "22.5  x,y"]
    assert render_table(["a"], [], "(none)") == "(none)\n"


# --- the runner ---------------------------------------------------------------------------------


async def _gone(pgid: int) -> bool:
    """Wait (briefly) until group `pgid` has no live process: a killed process
    may still show as running for a moment while the kernel tears it down."""
    for _ in range(100):
        if not _alive(pgid):
            return True
        await asyncio.sleep(0.02)
    return False


def _alive(pgid: int) -> list[int]:
    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


async def test_runner_streams_both_streams_and_the_exit_code():
    """stdout and stderr arrive as text through the callback; the code is kept."""
    seen: list[tuple[str, str]] = []

    async def collect(stream, text):
        seen.append((stream, text))

    res = await run_process(
        ["sh", "-c", "printf 'h\\303\\251llo\\n'; printf 'bad \\377\\n' >&2; exit 3"],
        timeout=10,
        output_cap=1000,
        on_output=collect,
    )
    assert res.exit_code == 3 and not res.timed_out and not res.truncated
    assert res.stdout == "héllo\n" and res.stderr == "bad \ufffd\n"
    assert "".join(t for s, t in seen if s == "stdout") == "héllo\n"
    assert describe_exit(res.exit_code) == "exited with status 3"


async def test_runner_timeout_kills_the_group_including_background_children():
    """On timeout every process of the group dies, the leader by SIGTERM."""
    res = await run_process(
        ["sh", "-c", "echo $$; sleep 300 & sleep 300"], timeout=0.5, output_cap=1000
    )
    assert res.timed_out and res.exit_code == -15
    assert describe_exit(res.exit_code) == "killed by SIGTERM"
    assert await _gone(int(res.stdout.split()[0]))


async def test_runner_kills_a_group_that_ignores_sigterm():
    """A leader that ignores SIGTERM gets SIGKILL after the grace."""
    res = await run_process(
        ["sh", "-c", "trap '' TERM; echo $$; sleep 300"], timeout=0.3, output_cap=1000, grace=0.3
    )
    assert res.timed_out and res.exit_code == -9
    assert await _gone(int(res.stdout.split()[0]))


async def test_runner_cap_truncates_and_stops_the_producer():
    """Output past the cap is dropped, flagged, and the producer killed."""
    res = await run_process(["yes", "0123456789"], timeout=10, output_cap=10_000)
    assert res.truncated and not res.timed_out
    assert res.output_bytes == 10_000 and len(res.stdout) == 10_000
    assert res.exit_code is not None and res.exit_code < 0


async def test_runner_does_not_leave_lingering_children():
    """When the leader exits, children left holding the pipe are killed."""
    res = await run_process(["sh", "-c", "sleep 300 & echo $$"], timeout=10, output_cap=1000)
    assert res.exit_code == 0 and not res.timed_out
    assert await _gone(int(res.stdout.split()[0]))


async def test_cancelling_a_run_kills_its_group():
    """A cancelled run (HQ hung up) leaves no process behind."""
    pid: list[int] = []
    started = asyncio.Event()

    async def note(stream, text):
        pid.append(int(text.split()[0]))
        started.set()

    task = asyncio.create_task(
        run_process(
            ["sh", "-c", "echo $$; sleep 300 & sleep 300"],
            timeout=60,
            output_cap=1000,
            on_output=note,
        )
    )
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _gone(pid[0])


async def test_runner_missing_program_raises():
    with pytest.raises(FileNotFoundError):
        await run_process(["/nonexistent/program"], timeout=1, output_cap=10)


async def test_context_write_counts_against_the_cap():
    """Text written by an entry is cut at the cap on a character boundary."""
    sent: list[str] = []

    async def send(stream, text):
        sent.append(text)

    ctx = Context(policy=Policy(), timeout=5, output_cap=10, send=send)
    await ctx.write("ééééé")  # 10 bytes
    assert not ctx.truncated and ctx.used == 10
    await ctx.write("more")
    assert ctx.truncated and "".join(sent) == "ééééé"

    ctx = Context(policy=Policy(), timeout=5, output_cap=5, send=send)
    sent.clear()
    await ctx.write("aéééé")
    assert ctx.truncated and "".join(sent) == "aéé" and ctx.used == 5
