"""The engineer CLI's pure parts: typing key=value parameters, choosing an
agent, exit statuses, reading streams, fitting tables, the stored login."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from server.client import config, params, remote
from server.client.commands import describe
from server.client.errors import ApiError, ConfigError, UsageError
from server.client.http import LineSplitter, SseParser
from server.client.render import cell, data_table, fit_widths, heading

TOP = {
    "type": "object",
    "properties": {
        "sort": {"enum": ["cpu", "memory"], "type": "string"},
        "n": {"type": "integer", "minimum": 1},
    },
}
EXEC = {
    "type": "object",
    "properties": {
        "argv": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
        "command": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
}
MIXED = {
    "type": "object",
    "$defs": {"Ports": {"type": "array", "items": {"type": "integer"}}},
    "properties": {
        "dry_run": {"type": "boolean"},
        "min_age_hours": {"anyOf": [{"type": "number", "minimum": 0}, {"type": "null"}]},
        "ports": {"$ref": "#/$defs/Ports"},
        "labels": {"type": "object"},
    },
}


@pytest.mark.parametrize(
    ("words", "schema", "expected"),
    [
        (["n=5", "sort=memory"], TOP, {"n": 5, "sort": "memory"}),
        (["n=lots"], TOP, {"n": "lots"}),  # sent as given: HQ names the field
        (["colour=red"], TOP, {"colour": "red"}),  # unknown: HQ rejects it
        (["argv=ls", "argv=-l", "argv=/tmp"], EXEC, {"argv": ["ls", "-l", "/tmp"]}),
        (["argv=echo,hi"], EXEC, {"argv": ["echo", "hi"]}),
        (['argv=["echo","a,b"]'], EXEC, {"argv": ["echo", "a,b"]}),
        (["command=echo a=b"], EXEC, {"command": "echo a=b"}),
        (["command="], EXEC, {"command": None}),
        (["dry_run=no", "min_age_hours=2.5"], MIXED, {"dry_run": False, "min_age_hours": 2.5}),
        (["dry_run=YES", "min_age_hours=3"], MIXED, {"dry_run": True, "min_age_hours": 3}),
        (["min_age_hours=nan"], MIXED, {"min_age_hours": "nan"}),
        (["ports=22,443"], MIXED, {"ports": [22, 443]}),
        (['labels={"a": 1}'], MIXED, {"labels": {"a": 1}}),
        (["n=5"], None, {"n": "5"}),  # no schema known: strings
    ],
)
def test_params_are_typed_by_the_schema(words, schema, expected):
    """key=value words become JSON typed by the advertised schema."""
    assert params.coerce(params.split_pairs(words), schema) == expected


def test_params_refuse_what_cannot_be_meant():
    """A word without = and a scalar given twice are usage errors."""
    with pytest.raises(UsageError, match="key=value"):
        params.split_pairs(["n"])
    with pytest.raises(UsageError, match="twice"):
        params.coerce(params.split_pairs(["n=1", "n=2"]), TOP)
    with pytest.raises(UsageError, match="JSON list"):
        params.coerce(params.split_pairs(["argv=[oops"]), EXEC)


AGENTS = [
    {"id": "ag_1", "hostname": "till-1", "site": "a", "status": "online"},
    {"id": "ag_2", "hostname": "Till-2", "site": "a", "status": "offline"},
    {"id": "ag_3", "hostname": "till-2", "site": "b", "status": "online"},
    {"id": "ag_4", "hostname": "till-1", "site": "a", "status": "revoked"},
]


def test_an_agent_is_named_by_id_or_unique_hostname():
    """Ids win; a hostname must name exactly one agent that is not revoked."""
    assert remote.pick_agent(AGENTS, "ag_2")["id"] == "ag_2"
    assert remote.pick_agent(AGENTS, "TILL-1")["id"] == "ag_1"
    with pytest.raises(Exception, match=r"ambiguous: 2 agents.*ag_2.*ag_3"):
        remote.pick_agent(AGENTS, "till-2")
    with pytest.raises(Exception, match="no agent with id or hostname 'till-9'"):
        remote.pick_agent(AGENTS, "till-9")


@pytest.mark.parametrize(
    ("result", "remote_code", "expected"),
    [
        ({"status": "ok", "exit_code": 0}, False, 0),
        ({"status": "ok", "exit_code": None}, True, 0),
        ({"status": "failed", "exit_code": 3}, False, 1),
        ({"status": "failed", "exit_code": 3}, True, 3),
        ({"status": "failed", "exit_code": -9}, True, 137),
        ({"status": "failed", "exit_code": 0}, True, 1),
        ({"status": "timeout", "exit_code": -9}, True, 1),
        ({"status": "refused", "exit_code": None}, True, 1),
        ({"status": "offline", "exit_code": None}, False, 1),
        ({"status": "interrupted", "exit_code": None}, False, 1),
    ],
)
def test_exit_status(result, remote_code, expected):
    """ok is 0; exec passes the remote status on when the command ran to an end."""
    assert remote.exit_status(result, remote_code=remote_code) == expected


def test_streams_split_into_lines_and_events():
    """NDJSON lines and server-sent events arrive in any chunking, lines of any length."""
    splitter = LineSplitter()
    big = json.dumps({"data": "x" * 300_000}).encode()
    chunks = [b'{"a": 1}\n{"b"', b": 2}\r\n" + big[:1000], big[1000:] + b"\n", b"tail"]
    lines = [line for chunk in chunks for line in splitter.feed(chunk)]
    assert lines == [b'{"a": 1}', b'{"b": 2}', big]
    assert splitter.rest() == b"tail"

    parser = SseParser()
    text = 'event: item\ndata: {"a": 1}\n\n: keep-alive\n\ndata: x\ndata: y\n\n'
    text += "event: done\ndata: {}\n\n"
    found = [e for line in text.split("\n") if (e := parser.feed(line)) is not None]
    assert found == [("item", '{"a": 1}'), ("message", "x\ny"), ("done", "{}")]


def test_tables_fit_the_terminal_by_cutting_text():
    """Text columns give way to fit; numbers keep their width; hopeless tables are None."""
    assert fit_widths([5, 40, 9], [False, True, False], 30) == [5, 16, 9]
    assert fit_widths([5, 40, 30], [False, True, True], 30) == [5, 12, 13]
    assert fit_widths([50, 40], [False, True], 30) is None
    data = {"columns": ["mount", "used", "memory_percent"], "rows": [["/", 2048, 3.5]]}
    table = data_table(data, 120)
    assert table is not None and [c.header for c in table.columns] == ["mount", "used", "memory %"]
    assert heading("rx_bytes") == "rx bytes"
    assert cell(2048, "used") == "2.0 KiB" and cell(3.5, "cpu_percent") == "3.5%"
    assert cell(None, "x") == "" and cell(True, "up") == "yes"


def test_stored_login_and_environment(tmp_path):
    """The login file is private; the environment replaces it field by field, and a
    FIELDLINK_SERVER for another HQ does not borrow the stored token or pin."""
    fp = "ab" * 32
    saved = config.Login("https://hq:8443", fp, "flk_secret", None, "ann")
    path = config.save(tmp_path / "cfg", saved)
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "cfg").stat().st_mode & 0o777 == 0o700
    assert config.load(tmp_path / "cfg") == saved
    assert "flk_secret" not in repr(saved)

    assert config.effective({}, saved) == saved
    replaced = config.effective({"FIELDLINK_TOKEN": "flk_other"}, saved)
    assert replaced.token == "flk_other" and replaced.fingerprint == fp
    other = {"FIELDLINK_SERVER": "hq2:9443", "FIELDLINK_TOKEN": "t"}
    with pytest.raises(ConfigError, match="FIELDLINK_TLS_FINGERPRINT"):
        config.effective(other, saved)
    full = config.effective({**other, "FIELDLINK_TLS_FINGERPRINT": "CD:" * 31 + "CD"}, saved)
    assert full.url == "https://hq2:9443" and full.fingerprint == "cd" * 32
    with pytest.raises(ConfigError, match="not logged in"):
        config.effective({}, None)
    with pytest.raises(ConfigError, match="HTTPS only"):
        config.normalize_url("http://hq:8443")

    assert config.config_dir({"XDG_CONFIG_HOME": "/x"}).as_posix() == "/x/fieldlink"
    assert config.config_dir({"HOME": "/h"}).as_posix() == "/h/.config/fieldlink"
    assert config.config_dir({"FIELDLINK_CONFIG_DIR": "/c", "HOME": "/h"}).as_posix() == "/c"

    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    assert config.Login("https://hq", fp, "t", past).expired()
    assert not config.Login("https://hq", fp, "t", None).expired()

    assert config.delete(tmp_path / "cfg") and config.load(tmp_path / "cfg") is None


def test_hq_errors_are_described_with_their_fields():
    """HQ's message, each field, and what to do next."""
    err = ApiError(422, "invalid", "invalid parameters", {"params.n": "not an integer"})
    assert describe(err) == "fieldlink: invalid parameters\n  params.n: not an integer"
    assert "fieldlink login" in describe(ApiError(401, "unauthorized", "token expired"))
