"""Agents and runs: `fieldlink agents`, `fieldlink run`, `fieldlink exec`.

A run is `POST /api/v1/agents/{id}/run?stream=1`: NDJSON output frames
(`{"type": "output", "stream", "data"}`) as they come, then one
`{"type": "result", ...}`. Exit status: 0 when the result is `ok`; for
`exec`, the remote command's exit status when it ran to an end (a signal N
gives 128+N, as shells do); otherwise 1, with the reason on stderr.
"""

from __future__ import annotations

import json
import sys
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from server.client import params as kv
from server.client import render
from server.client.config import Login
from server.client.errors import ClientError, Unreachable
from server.client.http import Api

DEFAULT_TIMEOUT = 60.0  # HQ's default for a run
STREAM_MARGIN = 30.0  # beyond the run's own timeout, how long a silent stream is tolerated


async def list_agents(api: Api, site: str | None = None) -> list[dict[str, Any]]:
    return await api.pages("/api/v1/agents", {"site": site} if site else None)


def pick_agent(items: list[dict[str, Any]], ref: str) -> dict[str, Any]:
    """The agent `ref` names: an id, or a hostname only one live agent has. Pure."""
    for item in items:
        if item.get("id") == ref:
            return item
    wanted = ref.lower()
    named = [
        i
        for i in items
        if str(i.get("hostname", "")).lower() == wanted and i.get("status") != "revoked"
    ]
    if len(named) == 1:
        return named[0]
    if named:
        listed = ", ".join(f"{i['id']} (site {i.get('site')}, {i.get('status')})" for i in named)
        raise ClientError(
            f"hostname {ref!r} is ambiguous: {len(named)} agents have it: {listed}; "
            "name the agent by its id"
        )
    raise ClientError(
        f"no agent with id or hostname {ref!r} among the agents you can see "
        "(`fieldlink agents` lists them)"
    )


async def resolve_agent(api: Api, ref: str) -> dict[str, Any]:
    return pick_agent(await list_agents(api), ref)


def schema_of(catalog: dict[str, Any], name: str) -> dict[str, Any] | None:
    for item in catalog.get("items") or []:
        if item.get("name") == name and isinstance(item.get("params_schema"), dict):
            schema: dict[str, Any] = item["params_schema"]
            return schema
    return None


def exit_status(result: dict[str, Any], *, remote_code: bool) -> int:
    """0 for ok; the remote exit status for a command that ran to an end
    (with `remote_code`); else 1. Pure."""
    status = result.get("status")
    code = result.get("exit_code")
    if remote_code and status in ("ok", "failed") and isinstance(code, int) and code != 0:
        if 0 < code < 256:
            return code
        if -128 < code < 0:
            return 128 - code
        return 1
    return 0 if status == "ok" else 1


@dataclass(frozen=True)
class RunSpec:
    agent: str
    name: str
    params: dict[str, Any] | None  # given (exec), or None: typed from the words by the catalog
    words: list[str]
    ticket: str | None
    timeout: float | None
    as_json: bool
    remote_code: bool = False


async def run(login: Login, spec: RunSpec) -> int:
    """Run one catalog entry (or exec) on one agent, streaming its output."""
    pairs = kv.split_pairs(spec.words)
    async with Api(login.url, login.fingerprint, login.token) as api:
        agent = await resolve_agent(api, spec.agent)
        agent_id = str(agent["id"])
        params = spec.params
        if params is None:
            catalog = await api.get(f"/api/v1/agents/{agent_id}/catalog")
            params = kv.coerce(pairs, schema_of(catalog, spec.name))
        body: dict[str, Any] = {"name": spec.name, "params": params}
        if spec.ticket:
            body["ticket_id"] = spec.ticket
        if spec.timeout:
            body["timeout"] = spec.timeout
        idle = (spec.timeout or DEFAULT_TIMEOUT) + STREAM_MARGIN
        label = f"{spec.name} on {agent.get('hostname') or agent_id}"
        out, err = render.console(), render.console(stderr=True)
        view = render.RunView(label, out, err)
        result: dict[str, Any] | None = None
        frames = api.ndjson(
            f"/api/v1/agents/{agent_id}/run", body, params={"stream": "1"}, idle=idle
        )
        async with aclosing(frames) as stream:
            if spec.as_json:
                async for frame in stream:
                    if frame.get("type") == "result":
                        result = frame
            else:
                with view:
                    async for frame in stream:
                        if frame.get("type") == "output":
                            view.output(str(frame.get("stream")), str(frame.get("data", "")))
                        elif frame.get("type") == "result":
                            result = frame
    if result is None:
        raise Unreachable("the stream from HQ ended before the run's result")
    result.pop("type", None)
    code = exit_status(result, remote_code=spec.remote_code)
    if spec.as_json:
        print(json.dumps(result, indent=2))
        return code
    view.finish(result)
    status = str(result.get("status"))
    if result.get("truncated"):
        print(f"fieldlink: {label}: output truncated at the cap", file=sys.stderr)
    quiet = spec.remote_code and status == "failed" and isinstance(result.get("exit_code"), int)
    if status != "ok" and not (quiet and int(result["exit_code"]) > 0):
        reason = result.get("reason") or "no reason given"
        print(f"fieldlink: {label}: {status}: {reason}", file=sys.stderr)
    return code


async def agents(login: Login, site: str | None, as_json: bool) -> int:
    async with Api(login.url, login.fingerprint, login.token) as api:
        items = await list_agents(api, site)
    if as_json:
        print(json.dumps(items, indent=2))
        return 0
    out = render.console()
    if not items:
        where = f" on site {site}" if site else ""
        render.console(stderr=True).print(f"no agents{where} that you can see")
        return 0
    out.print(render.agents_table(items))
    return 0
