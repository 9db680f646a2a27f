"""A hostile agent's catalog must not freeze HQ: parameter schemas are vetted
at hello (size, depth, patterns RE2 can match in linear time) and parameters
are checked off the event loop with a deadline (server.engine.paramcheck)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncssh
import pytest
from structlog.testing import capture_logs

from agent import catalog
from agent.sampler import collect_facts
from server.engine import paramcheck
from shared import protocol as p
from shared.errors import Invalid
from shared.version import PROTOCOL_VERSION, __version__
from tests.support import wait_until

EVIL = "^(a+)+$"


def _entry(name: str, schema: dict[str, Any]) -> p.CatalogEntry:
    return p.CatalogEntry(
        name=name,
        description="hostile",
        tier="diagnostic",
        params_schema=schema,
        timeout=10.0,
        output_cap=1000,
    )


def _one(prop: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"name": prop}, "additionalProperties": False}


def _deep(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        node = {"type": "object", "properties": {"x": node}}
    return node


async def _impostor_hello(hq: Any, handle: Any, entries: list[p.CatalogEntry]) -> Any:
    """Dial HQ with an enrolled agent's real key and say hello with `entries`
    added to the real catalog; the connection stays up (returned)."""
    key = asyncssh.read_private_key(handle.dir.key_file)
    hello = p.Hello(
        protocol=PROTOCOL_VERSION,
        agent_id=handle.agent_id,
        version=__version__,
        facts=await asyncio.to_thread(collect_facts),
        spool_dropped=0,
        catalog=[*catalog.advertise(), *entries],
    )

    async def process(proc: asyncssh.SSHServerProcess[bytes]) -> None:
        proc.stdout.write(p.encode(hello))
        await proc.stdin.read()

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return False

    return await asyncssh.connect_reverse(
        "127.0.0.1",
        hq.hq.parts.ssh_port,
        server_host_keys=[key],
        process_factory=process,
        server_factory=Server,
        encoding=None,
        config=None,
    )


async def test_redos_pattern_from_an_agent_does_not_freeze_hq(sqlite_hq, agent_factory):
    handle = await agent_factory(sqlite_hq, run=False)
    entries = [
        _entry("evil.redos", _one({"type": "string", "pattern": EVIL})),
        _entry("evil.backref", _one({"type": "string", "pattern": r"^(a+)\1$"})),
        _entry("evil.lookahead", {"type": "object", "patternProperties": {"(?=x)": {}}}),
        _entry("evil.deep", _deep(40)),
        _entry("evil.big", _one({"type": "string", "enum": ["x" * 100] * 200})),
        _entry("evil.remote", {"$ref": "https://127.0.0.1:1/schema.json"}),
        _entry("evil.unevaluated", {"type": "object", "unevaluatedProperties": False}),
    ]
    with capture_logs() as logs:
        conn = await _impostor_hello(sqlite_hq, handle, entries)
        try:
            async with sqlite_hq.client(sqlite_hq.admin_token) as api:

                async def offered() -> set[str]:
                    body = await api.ok("GET", f"/api/v1/agents/{handle.agent_id}/catalog")
                    names = {e["name"] for e in body["items"]}
                    return names if "evil.redos" in names else set()

                names = await wait_until(offered, what="the impostor's catalog at HQ")
                # RE2 matches ^(a+)+$ in linear time: offered; the rest refused at hello
                assert set(catalog.entries()) | {"evil.redos"} == names
                refused = {
                    e["entry"]: e["reason"]
                    for e in logs
                    if e["event"] == "agent_catalog_entry_refused"
                }
                assert set(refused) == {e.name for e in entries} - {"evil.redos"}, refused
                assert "not linear-time" in refused["evil.backref"]
                assert "not linear-time" in refused["evil.lookahead"]
                assert "nested deeper" in refused["evil.deep"]
                assert "bytes of schema" in refused["evil.big"]
                assert "not local" in refused["evil.remote"]
                assert "unevaluatedProperties" in refused["evil.unevaluated"]

                # Before: this input held HQ's loop for tens of seconds (doubling with every "a")
                evil = {"name": "a" * 29 + "!"}
                url = f"/api/v1/agents/{handle.agent_id}/run"
                async with sqlite_hq.client() as probe:
                    started = time.monotonic()
                    run = asyncio.create_task(api.post(url, {"name": "evil.redos", "params": evil}))
                    await asyncio.sleep(0.2)
                    asked = time.monotonic()
                    health, _ = await probe.get("/healthz")
                    health_took = time.monotonic() - asked
                    status, err = await run
                    run_took = time.monotonic() - started
                assert health == 200
                assert status == 422, err
                assert "params.name" in err["error"]["fields"], err
                assert run_took < 5 and health_took < 5, (run_took, health_took)
                # a job over the same entry is checked the same way
                status, err = await api.post(
                    "/api/v1/jobs",
                    {
                        "target": {"agent_ids": [handle.agent_id]},
                        "name": "evil.redos",
                        "params": evil,
                    },
                )
                assert status == 422 and "params.name" in err["error"]["fields"], err
                # matching input passes the check and reaches the agent
                status, body = await api.post(url, {"name": "evil.redos", "params": {"name": "aa"}})
                assert status != 422, body
                # a refused entry is not offered
                status, err = await api.post(url, {"name": "evil.backref", "params": {}})
                assert status == 422 and "name" in err["error"]["fields"], err
                assert (await probe_health(sqlite_hq)) == 200
        finally:
            conn.close()


async def probe_health(hq: Any) -> int:
    async with hq.client() as api:
        return (await api.get("/healthz"))[0]


def test_real_agent_catalog_passes_the_vetting():
    kept, refused = paramcheck.vet_catalog(catalog.advertise())
    assert refused == {} and len(kept) == len(catalog.entries())


async def test_a_schema_built_to_explode_hits_the_deadline():
    """anyOf of two references, nested 40 deep through $defs: 2^40 paths. The
    check stops at its deadline (every keyword checks it) and answers 422."""
    defs: dict[str, Any] = {"l40": {"type": "string"}}
    for i in range(39, -1, -1):
        defs[f"l{i}"] = {"anyOf": [{"$ref": f"#/$defs/l{i + 1}"}, {"$ref": f"#/$defs/l{i + 1}"}]}
    schema = {"$defs": defs, "type": "object", "properties": {"x": {"$ref": "#/$defs/l0"}}}
    paramcheck.vet_schema(schema)  # small and shallow: passes the hello rules
    with pytest.raises(Invalid) as caught:
        await paramcheck.validate_params(schema, {"x": 1}, seconds=0.5)
    assert caught.value.fields == {"params": "not checked within 0.5 s"}
    # and the loop stays free meanwhile
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    with pytest.raises(Invalid):
        await paramcheck.validate_params(schema, {"x": 1}, seconds=1.0)
    task.cancel()
    assert ticks > 5


def test_patterns_use_json_schema_meaning():
    """RE2 and ECMA-262: `$` is the end of the text (Python's re would let a
    trailing newline through), as the agent's own check (pydantic) does."""
    schema = _one({"type": "string", "pattern": "^[a-z]+$"})

    async def check(value: str) -> None:
        await paramcheck.validate_params(schema, {"name": value})

    asyncio.run(check("abc"))
    with pytest.raises(Invalid):
        asyncio.run(check("abc\n"))
