"""Runs and jobs through HQ's API, end to end: HTTPS -> HQ -> SSH -> real agent
and back, with permissions, the ticket rule, parameter validation on HQ,
streaming, stored results, the durable job queue and HQ restarts."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from agent.policy import write_default
from tests.support import AgentHandle, HQHandle, machine_policy, make_user, wait_until


async def online_agent(
    hq: HQHandle, agent_factory: Any, site: str = "shop-1", **policy: Any
) -> AgentHandle:
    agent: AgentHandle = await agent_factory(hq, site=site, run=False)
    write_default(agent.dir.policy_file, machine_policy(**policy))
    await agent.start()
    await wait_until(lambda: hq.hq.parts.links.get(agent.agent_id), what="connected")

    async def catalog() -> bool:
        async with hq.client(hq.admin_token) as api:
            body = await api.ok("GET", f"/api/v1/agents/{agent.agent_id}/catalog")
        return bool(body["items"])

    await wait_until(catalog, what="catalog from the hello")
    return agent


async def new_ticket(hq: HQHandle, site: str = "shop-1") -> str:
    async with hq.client(hq.admin_token) as api:
        await api.post("/api/v1/sites", {"name": site})  # 201, or 409 if it exists
        made = await api.ok("POST", "/api/v1/tickets", json={"title": "work", "site": site})
    return str(made["number"])


async def test_diagnostic_runs_and_result_is_stored_and_audited(hq, agent_factory):
    """POST /run answers with the result; it is stored, listed and audited (both databases)."""
    agent = await online_agent(hq, agent_factory)
    async with hq.client(hq.admin_token) as api:
        result = await api.ok(
            "POST", f"/api/v1/agents/{agent.agent_id}/run", json={"name": "disk.usage"}
        )
        assert result["status"] == "ok" and result["exit_code"] in (0, None)
        assert result["data"]["columns"] and result["data"]["rows"]
        assert "/" in result["stdout"]
        stored = await api.ok("GET", f"/api/v1/results/{result['result_id']}")
        assert stored["data"] == result["data"]
        listed = await api.ok("GET", f"/api/v1/agents/{agent.agent_id}/results")
        assert listed["items"][0]["result_id"] == result["result_id"]
        audit = await api.ok("GET", "/api/v1/audit", params={"action": "run.*"})
    entry = audit["items"][-1]
    assert entry["details"]["name"] == "disk.usage" and entry["target_id"] == agent.agent_id


async def test_streamed_run_sends_output_then_result(sqlite_hq, agent_factory):
    """?stream=1 answers NDJSON: output frames as they come, then the result."""
    agent = await online_agent(sqlite_hq, agent_factory)
    async with sqlite_hq.client(sqlite_hq.admin_token) as api:
        status, text = await api.post(
            f"/api/v1/agents/{agent.agent_id}/run?stream=1", {"name": "system.summary"}
        )
    assert status == 200
    frames = [json.loads(line) for line in text.splitlines()]
    assert frames[-1]["type"] == "result" and frames[-1]["status"] == "ok"
    assert any(f["type"] == "output" for f in frames[:-1])


async def test_parameters_are_validated_on_hq(sqlite_hq, agent_factory):
    """Bad parameters are refused by HQ with 422 naming the field, before reaching the agent."""
    agent = await online_agent(sqlite_hq, agent_factory)
    async with sqlite_hq.client(sqlite_hq.admin_token) as api:
        url = f"/api/v1/agents/{agent.agent_id}/run"
        status, err = await api.post(
            url, {"name": "net.tcp_check", "params": {"host": "127.0.0.1", "port": "x"}}
        )
        assert status == 422 and "params.port" in err["error"]["fields"]
        status, err = await api.post(url, {"name": "disk.usage", "params": {"evil": 1}})
        assert status == 422
        status, err = await api.post(url, {"name": "net.ping", "params": {"host": "; rm -rf /"}})
        assert status == 422 and "params.host" in err["error"]["fields"]
        status, err = await api.post(url, {"name": "no.such.thing"})
        assert status == 422 and "name" in err["error"]["fields"]


async def test_actions_and_commands_need_an_open_ticket_on_the_site(sqlite_hq, agent_factory):
    """The ticket rule: none, another site's, a closed one -> 422; an open one -> runs."""
    agent = await online_agent(sqlite_hq, agent_factory, allow_exec=True, require_consent=False)
    other = await new_ticket(sqlite_hq, site="shop-2")
    mine = await new_ticket(sqlite_hq)
    done = await new_ticket(sqlite_hq)
    async with sqlite_hq.client(sqlite_hq.admin_token) as api:
        await api.ok("POST", f"/api/v1/tickets/{done}/transition", json={"action": "cancel"})
        url = f"/api/v1/agents/{agent.agent_id}/run"
        body = {"name": "exec", "params": {"argv": ["echo", "hello fieldlink"]}}
        for ticket in (None, other, done):
            status, err = await api.post(url, {**body, "ticket_id": ticket})
            assert status == 422 and "ticket_id" in err["error"]["fields"], (ticket, err)
        result = await api.ok("POST", url, json={**body, "ticket_id": mine})
        assert result["status"] == "ok" and result["stdout"].strip() == "hello fieldlink"
        ticket = await api.ok("GET", f"/api/v1/tickets/{mine}")
    runs = [e for e in ticket["timeline"] if e["kind"] == "run"]
    assert runs and runs[0]["data"]["run_id"] == result["result_id"]


async def test_agent_policy_refusal_reaches_the_engineer(sqlite_hq, agent_factory):
    """HQ allows it, the machine's policy does not: refused with the reason, audited."""
    agent = await online_agent(sqlite_hq, agent_factory)  # allow_exec = false
    ticket = await new_ticket(sqlite_hq)
    async with sqlite_hq.client(sqlite_hq.admin_token) as api:
        result = await api.ok(
            "POST",
            f"/api/v1/agents/{agent.agent_id}/run",
            json={"name": "exec", "params": {"argv": ["id"]}, "ticket_id": ticket},
        )
        audit = await api.ok("GET", "/api/v1/audit", params={"action": "run.exec"})
    assert result["status"] == "refused" and "allow_exec" in result["reason"]
    assert audit["items"][-1]["outcome"] == "denied"


async def test_site_tech_runs_diagnostics_but_not_actions(sqlite_hq, agent_factory):
    """A site_tech may diagnose its site's machine, not act on it, and not see other sites."""
    agent = await online_agent(sqlite_hq, agent_factory, site="shop-1")
    other = await online_agent(sqlite_hq, agent_factory, site="shop-2")
    ticket = await new_ticket(sqlite_hq)
    tech = await make_user(sqlite_hq, "site_tech", "shop-1")
    async with sqlite_hq.client(tech.token) as api:
        ok = await api.ok(
            "POST",
            f"/api/v1/agents/{agent.agent_id}/run",
            json={"name": "process.top", "params": {"n": 3}},
        )
        assert ok["status"] == "ok"
        status, err = await api.post(
            f"/api/v1/agents/{agent.agent_id}/run",
            {"name": "service.restart", "params": {"unit": "cron"}, "ticket_id": ticket},
        )
        assert status == 403 and "action:run" in err["error"]["message"]
        status, _ = await api.post(f"/api/v1/agents/{other.agent_id}/run", {"name": "disk.usage"})
        assert status == 404


async def test_offline_agent_run_says_offline(sqlite_hq, agent_factory):
    """A single run on an agent with no live link answers status offline."""
    agent = await online_agent(sqlite_hq, agent_factory)
    await agent.stop()
    await wait_until(lambda: sqlite_hq.hq.parts.links.get(agent.agent_id) is None, what="gone")
    async with sqlite_hq.client(sqlite_hq.admin_token) as api:
        result = await api.ok(
            "POST", f"/api/v1/agents/{agent.agent_id}/run", json={"name": "disk.usage"}
        )
    assert result["status"] == "offline"


async def job_state(hq: HQHandle, job_id: str) -> dict[str, Any]:
    async with hq.client(hq.admin_token) as api:
        return await api.ok("GET", f"/api/v1/jobs/{job_id}")


async def test_job_runs_now_and_later_for_the_offline_agent(hq, agent_factory):
    """A job over a site: the online agent at once, the offline one when it returns."""
    up = await online_agent(hq, agent_factory)
    down = await online_agent(hq, agent_factory)
    await down.stop()
    await wait_until(lambda: hq.hq.parts.links.get(down.agent_id) is None, what="gone")
    async with hq.client(hq.admin_token) as api:
        job = await api.ok(
            "POST",
            "/api/v1/jobs",
            json={"target": {"site": "shop-1"}, "name": "system.summary", "ttl": 600},
        )
    assert {i["agent_id"] for i in job["items"]} == {up.agent_id, down.agent_id}

    async def first_done() -> dict[str, Any] | None:
        state = await job_state(hq, job["id"])
        return state if state["counts"].get("ok") == 1 else None

    state = await wait_until(first_done, what="online agent's item")
    assert state["status"] == "running" and state["counts"]["queued"] == 1
    events: list[str] = []

    async def follow() -> None:
        async with (
            hq.client(hq.admin_token) as api,
            api._session.get(
                api.base + f"/api/v1/jobs/{job['id']}/events", headers=api.headers()
            ) as resp,
        ):
            async for raw in resp.content:
                events.append(raw.decode())

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.3)
    await down.start()
    await asyncio.wait_for(follower, timeout=30)
    state = await job_state(hq, job["id"])
    assert state["status"] == "done" and state["counts"] == {"ok": 2}
    assert all(i["result"]["status"] == "ok" for i in state["items"])
    text = "".join(events)
    assert "event: item" in text and "event: done" in text and '"running"' in text


async def test_queued_items_survive_an_hq_restart_and_expire_after_ttl(sqlite_hq, agent_factory):
    """Queued items wait through an HQ restart; items past the TTL become expired."""
    agent = await online_agent(sqlite_hq, agent_factory)
    late = await online_agent(sqlite_hq, agent_factory)
    for a in (agent, late):
        await a.stop()
    await wait_until(lambda: not len(sqlite_hq.hq.parts.links), what="all gone")
    async with sqlite_hq.client(sqlite_hq.admin_token) as api:
        job = await api.ok(
            "POST",
            "/api/v1/jobs",
            json={"target": {"agent_ids": [agent.agent_id]}, "name": "disk.usage", "ttl": 600},
        )
        short = await api.ok(
            "POST",
            "/api/v1/jobs",
            json={"target": {"agent_ids": [late.agent_id]}, "name": "disk.usage", "ttl": 1},
        )
    await sqlite_hq.restart()
    await agent.start()

    async def done() -> bool:
        return (await job_state(sqlite_hq, job["id"]))["status"] == "done"

    await wait_until(done, timeout=30, what="queued item ran after restart")
    assert (await job_state(sqlite_hq, job["id"]))["counts"] == {"ok": 1}
    await asyncio.sleep(1.1)
    assert await sqlite_hq.hq.parts.jobs.sweep() == 1
    await late.start()
    await asyncio.sleep(1.0)
    state = await job_state(sqlite_hq, short["id"])
    assert state["counts"] == {"expired": 1} and state["status"] == "done"


async def test_connection_lost_mid_run_is_interrupted_never_ok(sqlite_hq, agent_factory):
    """An item whose agent drops during the run ends `interrupted`."""
    agent = await online_agent(sqlite_hq, agent_factory, allow_exec=True, require_consent=False)
    ticket = await new_ticket(sqlite_hq)
    async with sqlite_hq.client(sqlite_hq.admin_token) as api:
        job = await api.ok(
            "POST",
            "/api/v1/jobs",
            json={
                "target": {"agent_ids": [agent.agent_id]},
                "name": "exec",
                "params": {"argv": ["sleep", "30"]},
                "ticket_id": ticket,
                "timeout": 60,
            },
        )

    async def running() -> bool:
        return (await job_state(sqlite_hq, job["id"]))["counts"].get("running") == 1

    await wait_until(running, what="item running")
    sqlite_hq.hq.parts.links.disconnect(agent.agent_id)

    async def settled() -> dict[str, Any] | None:
        state = await job_state(sqlite_hq, job["id"])
        return state if state["status"] == "done" else None

    state = await wait_until(settled, timeout=30, what="item settled")
    assert state["counts"] == {"interrupted": 1}
