"""`fieldlink job`: one catalog entry over a site, tagged agents or a list.

`POST /api/v1/jobs`, then follow `GET /api/v1/jobs/{id}/events` (server-sent
events: `item` per status change, `done` at the end) with a live progress
bar, then `GET /api/v1/jobs/{id}` for the per-agent summary. The event stream
starts with a snapshot of every item, so when it goes quiet for a while or
drops (an HQ restart), following it again loses nothing. Exit status 0 only
when every item ended `ok`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from server.client import params as kv
from server.client import render
from server.client.config import Login
from server.client.errors import IdleTimeout, Unreachable
from server.client.http import Api
from server.client.remote import list_agents, pick_agent, schema_of

EVENTS_IDLE = 15.0  # re-follow a silent event stream after this long
MAX_RETRIES = 6


@dataclass(frozen=True)
class JobSpec:
    name: str
    words: list[str]
    site: str | None
    tags: list[str]
    agents: list[str]
    ticket: str | None
    ttl: int | None
    timeout: float | None
    as_json: bool


async def _target(api: Api, spec: JobSpec) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The API's target, and one targeted agent whose catalog types the params."""
    if spec.agents:
        items = await list_agents(api)
        picked = [pick_agent(items, ref) for ref in spec.agents]
        ids = list(dict.fromkeys(str(a["id"]) for a in picked))
        return {"agent_ids": ids}, picked[0]
    if spec.site:
        candidates = await list_agents(api, spec.site)
        target: dict[str, Any] = {"site": spec.site}
    else:
        found = await api.pages("/api/v1/agents", {"tag": spec.tags[0]})
        candidates = [a for a in found if set(spec.tags) <= set(a.get("tags") or [])]
        target = {"tags": spec.tags}
    live = [a for a in candidates if a.get("status") != "revoked"]
    live.sort(key=lambda a: a.get("status") != "online")
    return target, (live[0] if live else None)


async def follow(api: Api, job_id: str, progress: render.JobProgress) -> None:
    """Feed the job's item events to `progress` until `done`."""
    failures = 0
    while True:
        try:
            events = api.events(f"/api/v1/jobs/{job_id}/events", idle=EVENTS_IDLE)
            async with aclosing(events) as stream:
                async for name, data in stream:
                    failures = 0
                    if name == "item" and isinstance(data, dict):
                        progress.item(str(data.get("agent_id")), str(data.get("status")))
                    elif name == "done":
                        return
            failures += 1  # the stream ended without `done`: follow it again
        except IdleTimeout:
            continue
        except Unreachable:
            failures += 1
            if failures > MAX_RETRIES:
                raise
        await asyncio.sleep(min(0.5 * 2**failures, 10.0))


async def job(login: Login, spec: JobSpec) -> int:
    pairs = kv.split_pairs(spec.words)
    err = render.console(stderr=True)
    async with Api(login.url, login.fingerprint, login.token) as api:
        target, sample = await _target(api, spec)
        schema = None
        if sample is not None:
            catalog = await api.get(f"/api/v1/agents/{sample['id']}/catalog")
            schema = schema_of(catalog, spec.name)
        body: dict[str, Any] = {
            "target": target,
            "name": spec.name,
            "params": kv.coerce(pairs, schema),
        }
        if spec.ticket:
            body["ticket_id"] = spec.ticket
        if spec.ttl is not None:
            body["ttl"] = spec.ttl
        if spec.timeout:
            body["timeout"] = spec.timeout
        created = await api.post("/api/v1/jobs", body)
        job_id = str(created["id"])
        items = created.get("items") or []
        hosts = {str(i["agent_id"]): str(i.get("hostname") or "") for i in items}
        if not spec.as_json:
            err.print(
                f"job {job_id}: {spec.name} on {len(items)} agent(s)", highlight=False, markup=False
            )
        try:
            with render.JobProgress(err, len(items), hosts, quiet=spec.as_json) as progress:
                for item in items:
                    progress.item(str(item["agent_id"]), str(item["status"]))
                while True:
                    await follow(api, job_id, progress)
                    final = await api.get(f"/api/v1/jobs/{job_id}")
                    for item in final.get("items") or []:
                        progress.item(str(item["agent_id"]), str(item["status"]))
                    if final.get("status") == "done":
                        break
                    await asyncio.sleep(0.2)  # `done` outran what HQ stored: follow on
        except asyncio.CancelledError:
            print(
                f"\nfieldlink: stopped following; job {job_id} goes on at HQ "
                f"(GET /api/v1/jobs/{job_id})",
                file=sys.stderr,
            )
            raise
    statuses = [str(i.get("status")) for i in final.get("items") or []]
    code = 0 if statuses and all(s == "ok" for s in statuses) else 1
    if spec.as_json:
        print(json.dumps(final, indent=2))
        return code
    render.console().print(render.job_table(final))
    line = f"job {job_id} {final.get('status')}: {render.counts_line(final.get('counts') or {})}"
    err.print(line, highlight=False, markup=False)
    return code
