"""Running diagnostics, actions and commands on one agent; stored results."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from server.api.agents import load_agent
from server.engine import runs
from server.store.models import RunRecord
from server.views.runs import readable_result, result_json
from server.web.act import fetch
from server.web.authn import principal
from server.web.keys import DB, RUNS
from server.web.routing import ApiRouter, body, json_response, query
from shared import protocol as p
from shared.numbers import FiniteFloat

routes = ApiRouter("runs")


class CatalogItem(BaseModel):
    name: str
    description: str
    tier: str
    params_schema: dict[str, Any]
    timeout: float
    output_cap: int


class Catalog(BaseModel):
    items: list[CatalogItem]
    policy: dict[str, Any] | None = Field(description="the agent's local policy, as it reports it")
    next: str | None = None


@routes.route(
    "GET",
    "/api/v1/agents/{agent_id}/catalog",
    permission="agents:read",
    response=Catalog,
    summary="What this agent offers (from its last hello), with "
    "parameter schemas and tiers, and its local policy",
)
async def catalog(request: web.Request) -> web.Response:
    agent, _ = await load_agent(request, "agents:read")
    return json_response(
        Catalog(items=[CatalogItem(**e) for e in agent.catalog or []], policy=agent.policy)
    )


class RunRequest(BaseModel):
    name: str = Field(
        min_length=1,
        max_length=100,
        description='a catalog entry, or "exec" with params argv or command',
    )
    params: dict[str, Any] = Field(default_factory=dict)
    ticket_id: str | None = Field(
        None,
        description="ticket id or number (FL-N); "
        "actions and commands need an open ticket on the agent's site",
    )
    timeout: FiniteFloat | None = Field(None, gt=0, le=runs.MAX_TIMEOUT)


class RunQuery(BaseModel):
    stream: bool = Field(
        False, description="answer NDJSON: output frames as they come, then the result"
    )


class RunResult(BaseModel):
    result_id: str
    agent_id: str
    name: str
    tier: str
    params: dict[str, Any]
    status: str = Field(description="ok, failed, timeout, refused, interrupted or offline")
    exit_code: int | None
    stdout: str
    stderr: str
    truncated: bool
    data: Any = None
    reason: str | None
    ticket_id: str | None
    job_id: str | None
    requested_by: str | None
    started_at: datetime | None
    finished_at: datetime | None


@routes.route(
    "POST",
    "/api/v1/agents/{agent_id}/run",
    permission="diag:run",
    body=RunRequest,
    query=RunQuery,
    response=RunResult,
    summary="Run a catalog entry or a command on the agent and wait for the result "
    "(diag:run, action:run or exec:run by the entry's tier)",
)
async def run(request: web.Request) -> web.StreamResponse:
    app = request.app
    who = principal(request)
    agent, _ = await load_agent(request, "agents:read")
    req = body(request, RunRequest)
    q = query(request, RunQuery)
    async with app[DB]() as session:
        prep = await runs.prepare(
            session, who, agent, req.name, req.params, req.ticket_id, req.timeout
        )
    if not q.stream:
        record = await app[RUNS].execute(prep)
        return json_response(RunResult(**result_json(record)))
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)

    async def sink(frame: p.RunOutput) -> None:
        await resp.write(frame.model_dump_json().encode() + b"\n")

    record = await app[RUNS].execute(prep, sink)
    final = {"type": "result", **RunResult(**result_json(record)).model_dump(mode="json")}
    await resp.write(json.dumps(final).encode() + b"\n")
    await resp.write_eof()
    return resp


@routes.route(
    "GET",
    "/api/v1/results/{result_id}",
    permission="diag:run",
    response=RunResult,
    summary="A stored run result",
)
async def get_result(request: web.Request) -> web.Response:
    record, _ = await fetch(request, readable_result)
    return json_response(RunResult(**result_json(record)))


class ResultQuery(BaseModel):
    limit: int = Field(50, ge=1, le=500)
    name: str | None = None


class ResultList(BaseModel):
    items: list[RunResult]
    next: str | None = None


@routes.route(
    "GET",
    "/api/v1/agents/{agent_id}/results",
    permission="diag:run",
    query=ResultQuery,
    response=ResultList,
    summary="Recent run results on this agent",
)
async def list_results(request: web.Request) -> web.Response:
    from sqlalchemy import select

    agent, _ = await load_agent(request, "diag:run")
    q = query(request, ResultQuery)
    async with request.app[DB]() as session:
        stmt = select(RunRecord).where(RunRecord.agent_id == agent.id)
        if q.name:
            stmt = stmt.where(RunRecord.name == q.name)
        rows = (
            await session.scalars(stmt.order_by(RunRecord.created_at.desc()).limit(q.limit))
        ).all()
    return json_response(ResultList(items=[RunResult(**result_json(r)) for r in rows]))
