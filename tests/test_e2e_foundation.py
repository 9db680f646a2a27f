"""End to end over real SSH and HTTPS on 127.0.0.1: enroll, report, revoke,
refusals, restarts. Real HQ code, real agent code, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncssh
import pytest
from sqlalchemy import func, select
from structlog.testing import capture_logs

from agent.config import ConfigDir
from agent.enroll import EnrollError, enroll
from agent.spool import Spool
from server.control import admin
from server.store.models import Agent, EnrollToken, HealthRecord
from tests.support import HQHandle, wait_until


async def agent_status(hq: HQHandle, agent_id: str) -> dict:
    async with hq.client(hq.admin_token) as api:
        return await api.ok("GET", f"/api/v1/agents/{agent_id}")


async def stored_seqs(hq: HQHandle, agent_id: str) -> list[int]:
    async with hq.sessions() as session:
        rows = await session.scalars(
            select(HealthRecord.seq)
            .where(HealthRecord.agent_id == agent_id)
            .order_by(HealthRecord.seq)
        )
        return list(rows)


async def test_enrolled_agent_comes_online_with_health(hq, agent_factory, admin_api):
    """An enrolled agent dials out, shows online, and its health history is served."""
    agent = await agent_factory(hq, site="shop-12")

    async def online():
        _, body = await admin_api.get("/api/v1/agents")
        items = [a for a in body["items"] if a["id"] == agent.agent_id]
        return (
            items
            and items[0]["status"] == "online"
            and items[0]["health"]["cpu_percent"] is not None
        )

    await wait_until(online, what="agent online with health")
    _, body = await admin_api.get("/api/v1/agents")
    item = body["items"][0]
    assert item["site"] == "shop-12"
    assert item["version"]
    assert 0 <= item["health"]["memory_percent"] <= 100
    assert item["health"]["disk_percent"] is not None

    detail = await admin_api.ok("GET", f"/api/v1/agents/{agent.agent_id}")
    facts = detail["facts"]
    for key in (
        "os",
        "kernel",
        "cpu_model",
        "cpu_cores",
        "memory_total",
        "ips",
        "boot_time",
        "agent_version",
    ):
        assert key in facts
    report = detail["latest_health"]
    assert report["cpu"]["count"] == len(report["cpu"]["per_core"])
    assert {"1m", "5m", "15m"} <= report["load"].keys()
    assert report["disks"] and report["disks"][0]["total"] > 0
    assert report["process_count"] > 0
    assert len(report["top_cpu"]) <= 5 and len(report["top_memory"]) <= 5

    await wait_until(lambda: stored_seqs(hq, agent.agent_id), what="stored reports")
    await asyncio.sleep(0.5)
    page = await admin_api.ok(
        "GET", f"/api/v1/agents/{agent.agent_id}/health", params={"limit": 1000}
    )
    seqs = [i["seq"] for i in page["items"]]
    assert seqs[0] == 1
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    assert all(i["sampled_at"] for i in page["items"])
    first = await admin_api.ok(
        "GET", f"/api/v1/agents/{agent.agent_id}/health", params={"limit": 1}
    )
    assert first["next"] == "1"
    rest = await admin_api.ok(
        "GET",
        f"/api/v1/agents/{agent.agent_id}/health",
        params={"after": first["next"], "limit": 1000},
    )
    assert rest["items"][0]["seq"] == 2


async def test_metrics_and_healthz(sqlite_hq, agent_factory):
    """/healthz answers and /metrics counts connected agents and ingested reports."""
    await agent_factory(sqlite_hq)
    await wait_until(lambda: len(sqlite_hq.hq.parts.links) == 1, what="connection")
    async with sqlite_hq.client() as api:
        status, body = await api.get("/healthz")
        assert status == 200 and body["status"] == "ok"

        async def ingested():
            _, text = await api.get("/metrics")
            return (
                "fieldlink_health_reports_ingested_total" in text
                and "fieldlink_agents_connected 1.0" in text
                and text
            )

        text = await wait_until(ingested, what="metrics")
    assert "fieldlink_ingest_lag_seconds_bucket" in text
    assert 'fieldlink_api_requests_total{status="200"}' in text


async def test_hq_restart_loses_nothing(hq, agent_factory):
    """Reports sampled while HQ is down arrive exactly once after it returns."""
    agent = await agent_factory(hq, interval=0.05)
    await wait_until(lambda: stored_seqs(hq, agent.agent_id), what="first reports")
    await hq.stop()
    await asyncio.sleep(1.0)  # the agent keeps sampling into its spool
    await hq.restart()
    stats_path = agent.dir.spool_file

    async def drained():
        spool = Spool(stats_path, 1000)
        try:
            stats = spool.stats()
        finally:
            spool.close()
        if stats.pending:
            return False
        seqs = await stored_seqs(hq, agent.agent_id)
        return seqs and seqs[-1] >= stats.last_seq - 1 and (seqs, stats.last_seq)

    await wait_until(drained, timeout=30, what="spool drained")
    await agent.stop()
    seqs = await stored_seqs(hq, agent.agent_id)
    spool = Spool(stats_path, 1000)
    last = spool.stats().last_seq
    spool.close()
    assert seqs == list(range(1, len(seqs) + 1)), "a gap or a duplicate"
    assert seqs[-1] >= last - 1  # at most the one report in flight at stop


async def test_revoked_agent_is_cut_off_and_refused(hq, agent_factory, admin_api):
    """Revoking closes the live connection at once and refuses reconnection."""
    agent = await agent_factory(hq)
    gw = hq.hq.parts.gateway
    await wait_until(lambda: gw.registry.get(agent.agent_id), what="connected")
    with capture_logs() as logs:
        body = await admin_api.ok("POST", f"/api/v1/agents/{agent.agent_id}/revoke")
        assert body["status"] == "revoked"
        await wait_until(lambda: gw.registry.get(agent.agent_id) is None, timeout=3, what="cut off")
        await wait_until(
            lambda: any(e["event"] == "agent_key_refused" for e in logs), what="refusal logged"
        )
    refused = next(e for e in logs if e["event"] == "agent_key_refused")
    assert refused["peer"].startswith("127.0.0.1:")
    assert refused["key_fingerprint"].startswith("SHA256:")
    await asyncio.sleep(1.5)
    assert gw.registry.get(agent.agent_id) is None
    assert (await agent_status(hq, agent.agent_id))["status"] == "revoked"


async def test_cli_revoke_reaches_running_server(sqlite_hq, agent_factory):
    """`fieldlink admin agent revoke` (another process's path) cuts the link at once."""
    agent = await agent_factory(sqlite_hq)
    gw = sqlite_hq.hq.parts.gateway
    await wait_until(lambda: gw.registry.get(agent.agent_id), what="connected")
    told = await admin.revoke_agent(sqlite_hq.settings, agent.agent_id)
    assert told
    await wait_until(lambda: gw.registry.get(agent.agent_id) is None, timeout=3, what="cut off")


async def test_agent_refuses_hq_with_wrong_key(sqlite_hq, agent_factory):
    """An agent whose pinned HQ key does not match refuses HQ, and logs why."""
    agent = await agent_factory(sqlite_hq, run=False)
    cfg = agent.dir.load()
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode()
    agent.dir.save(cfg.model_copy(update={"hq_public_key": other.strip()}))
    with capture_logs() as logs:
        await agent.start()
        await wait_until(
            lambda: any(e["event"] == "hq_key_refused" for e in logs), what="agent refusal"
        )
        await asyncio.sleep(0.5)
    refusal = next(e for e in logs if e["event"] == "hq_key_refused")
    assert refusal["peer"].startswith("127.0.0.1:")
    assert refusal["key_fingerprint"].startswith("SHA256:")
    assert sqlite_hq.hq.parts.links.get(agent.agent_id) is None
    assert (await agent_status(sqlite_hq, agent.agent_id))["status"] == "offline"


async def test_hq_refuses_unknown_agent_key(sqlite_hq, agent_factory):
    """An agent presenting a key HQ never enrolled is refused and logged."""
    agent = await agent_factory(sqlite_hq, run=False)
    new_key = asyncssh.generate_private_key("ssh-ed25519")
    agent.dir.key_file.write_bytes(new_key.export_private_key("openssh"))
    with capture_logs() as logs:
        await agent.start()
        await wait_until(
            lambda: any(e["event"] == "agent_key_refused" for e in logs), what="HQ refusal"
        )
    refusal = next(e for e in logs if e["event"] == "agent_key_refused")
    assert refusal["key_fingerprint"] == new_key.get_fingerprint("sha256")
    assert refusal["peer"].startswith("127.0.0.1:")
    assert sqlite_hq.hq.parts.links.get(agent.agent_id) is None


async def _counts(hq: HQHandle) -> tuple[int, dict[str, int]]:
    async with hq.sessions() as session:
        agents = await session.scalar(select(func.count()).select_from(Agent))
        uses = {
            row.id: row.uses
            for row in await session.execute(select(EnrollToken.id, EnrollToken.uses))
        }
    return int(agents or 0), uses


async def test_bad_tokens_are_refused_and_change_nothing(hq, tmp_path):
    """Used-up, expired, unknown and damaged tokens get a clear refusal; nothing changes."""
    token = await hq.enroll_token("shop-1", uses=1)
    await asyncio.to_thread(enroll, token, ConfigDir(tmp_path / "a1"))
    before = await _counts(hq)

    with pytest.raises(EnrollError, match="no uses left"):
        await asyncio.to_thread(enroll, token, ConfigDir(tmp_path / "a2"))

    expired = await hq.enroll_token("shop-1", ttl="1s")
    await asyncio.sleep(1.2)
    with pytest.raises(EnrollError, match="expired"):
        await asyncio.to_thread(enroll, expired, ConfigDir(tmp_path / "a3"))

    head, _, secret = token.rpartition(".")
    unknown = f"{head}.{'x' * len(secret)}"
    with pytest.raises(EnrollError, match="unknown enrollment token"):
        await asyncio.to_thread(enroll, unknown, ConfigDir(tmp_path / "a4"))

    with pytest.raises(EnrollError, match="not a Fieldlink enrollment token"):
        await asyncio.to_thread(enroll, "nonsense", ConfigDir(tmp_path / "a5"))

    after_agents, after_uses = await _counts(hq)
    assert after_agents == before[0]
    assert {k: after_uses[k] for k in before[1]} == before[1]
    assert set(after_uses.values()) == {0, 1}
    for name in ("a2", "a3", "a4", "a5"):
        assert not (tmp_path / name / "config.toml").exists()


async def test_enroll_api_rejects_bad_keys(sqlite_hq):
    """Bad public keys and malformed bodies get 4xx in the error shape."""
    token = await sqlite_hq.enroll_token()
    async with sqlite_hq.client() as api:
        status, body = await api.post(
            "/api/v1/enroll", {"token": token, "public_key": "ssh-rsa AAAAnotakey", "hostname": "h"}
        )
        assert status == 422
        assert "public_key" in body["error"]["fields"]
        status, body = await api.post("/api/v1/enroll", {"token": token})
        assert status == 422 and "public_key" in body["error"]["fields"]
        status, body = await api.request("POST", "/api/v1/enroll", data=b"{not json")
        assert status == 400 and body["error"]["code"] == "bad_request"
    assert list((await _counts(sqlite_hq))[1].values()) == [0]


async def test_enroll_refuses_hq_with_other_certificate(
    sqlite_hq, hq_factory, sqlite_url, tmp_path
):
    """`enroll` refuses an HQ whose TLS certificate does not match the token's pin."""
    other = await hq_factory(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}", name="other")
    token = await sqlite_hq.enroll_token()
    # Same token text, but pointing at the other HQ (different certificate).
    from shared.enrolltoken import EnrollToken

    parsed = EnrollToken.parse(token)
    forged = EnrollToken(other.url, parsed.fingerprint, parsed.secret).encode()
    with pytest.raises(EnrollError, match="fingerprint"):
        await asyncio.to_thread(enroll, forged, ConfigDir(tmp_path / "a"))
