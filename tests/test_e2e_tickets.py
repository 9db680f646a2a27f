"""Tickets end to end: lifecycle over the API, site staff and their own
requests, SLA pause and breach, KPIs, signed webhooks, and alert rules that
open exactly one ticket per (rule, agent) with triage attached."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from datetime import timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import update

from server.store.models import Ticket, utcnow
from tests.support import HQHandle, make_user, wait_until
from tests.test_e2e_runs_api import online_agent


async def admin(hq: HQHandle, method: str, path: str, **kw: Any) -> Any:
    async with hq.client(hq.admin_token) as api:
        return await api.ok(method, path, **kw)


async def test_lifecycle_and_illegal_transitions(hq):
    """new -> ack -> start -> wait -> start -> resolve -> close; 409 names allowed ones."""
    await admin(hq, "POST", "/api/v1/sites", json={"name": "shop-1"})
    t = await admin(
        hq,
        "POST",
        "/api/v1/tickets",
        json={"title": "Till 3 freezes", "site": "shop-1", "impact": 1, "urgency": 2},
    )
    assert t["number"].startswith("FL-") and t["priority"] == "P2" and t["source"] == "api"
    n = t["number"]
    async with hq.client(hq.admin_token) as api:
        status, err = await api.post(f"/api/v1/tickets/{n}/transition", {"action": "close"})
        assert status == 409 and set(err["error"]["allowed"]) == {
            "ack",
            "start",
            "resolve",
            "cancel",
        }
        for action, extra in [
            ("ack", {}),
            ("start", {}),
            ("wait", {"reason": "on_vendor"}),
            ("start", {}),
            ("resolve", {"resolution_code": "fixed", "resolution_text": "new cable"}),
            ("close", {}),
        ]:
            await api.ok(
                "POST", f"/api/v1/tickets/{n}/transition", json={"action": action, **extra}
            )
        status, err = await api.post(f"/api/v1/tickets/{n}/transition", {"action": "reopen"})
        assert status == 409 and "allowed" in err["error"]["message"]
        status, err = await api.post(f"/api/v1/tickets/{n}/transition", {"action": "wait"})
        assert status == 409  # closed tickets do not wait, whatever the reason
        final = await api.ok("GET", f"/api/v1/tickets/{n}")
        # the audit trail, by the ticket's number or its id
        for ref in (n, final["id"]):
            trail = (await api.ok("GET", "/api/v1/audit", params={"ticket": ref}))["items"]
            assert {e["ticket_id"] for e in trail} == {final["id"]} and len(trail) >= 7
        nothing = await api.ok("GET", "/api/v1/audit", params={"ticket": "FL-999999"})
        assert nothing["items"] == []
    kinds = [e["kind"] for e in final["timeline"]]
    assert kinds[0] == "created" and kinds.count("state") == 6
    assert final["status"] == "closed" and final["resolution_text"] == "new cable"
    assert final["acknowledged_at"] and final["paused_seconds"] >= 0
    assert final["sla"]["ack"]["state"] == "met"


async def test_site_staff_see_and_rate_only_their_own_requests(sqlite_hq):
    """Staff open, read and comment on their own requests; others' are invisible; rate once."""
    await admin(sqlite_hq, "POST", "/api/v1/sites", json={"name": "shop-1"})
    cashier = await make_user(sqlite_hq, "site_staff", "shop-1")
    other = await make_user(sqlite_hq, "site_staff", "shop-1")
    tech = await make_user(sqlite_hq, "site_tech", "shop-1")
    async with sqlite_hq.client(cashier.token) as api:
        mine = await api.ok(
            "POST",
            "/api/v1/tickets",
            json={
                "title": "receipt printer prints blank",
                "site": "shop-1",
                "type": "service_request",
            },
        )
        assert mine["tier"] == "site"
        status, _ = await api.post(
            "/api/v1/tickets", {"title": "x", "site": "shop-1", "priority": "P1"}
        )
        assert status == 403
    async with sqlite_hq.client(other.token) as api:
        assert (await api.get(f"/api/v1/tickets/{mine['number']}"))[0] == 404
        assert (await api.ok("GET", "/api/v1/tickets"))["items"] == []
    async with sqlite_hq.client(tech.token) as api:
        await api.ok(
            "POST",
            f"/api/v1/tickets/{mine['number']}/comments",
            json={"body": "internal: toner?", "internal": True},
        )
        await api.ok(
            "POST",
            f"/api/v1/tickets/{mine['number']}/comments",
            json={"body": "Please restart the printer."},
        )
        await api.ok(
            "POST", f"/api/v1/tickets/{mine['number']}/transition", json={"action": "resolve"}
        )
        status, _ = await api.post(f"/api/v1/tickets/{mine['number']}/rating", {"score": 5})
        assert status == 403  # only the requester rates
    async with sqlite_hq.client(cashier.token) as api:
        seen = await api.ok("GET", f"/api/v1/tickets/{mine['number']}")
        assert [e["body"] for e in seen["timeline"] if e["kind"] == "comment"] == [
            "Please restart the printer."
        ]
        status, _ = await api.post(
            f"/api/v1/tickets/{mine['number']}/transition", {"action": "reopen"}
        )
        assert status == 403
        rated = await api.ok(
            "POST",
            f"/api/v1/tickets/{mine['number']}/rating",
            json={"score": 4, "comment": "quick, thanks"},
        )
        assert rated["rating"] == 4
        status, _ = await api.post(f"/api/v1/tickets/{mine['number']}/rating", {"score": 1})
        assert status == 409


async def test_sla_pauses_while_waiting_and_breaches_are_events(sqlite_hq):
    """Waiting pauses the clock; a missed target becomes one breach event and a KPI."""
    await admin(sqlite_hq, "POST", "/api/v1/sites", json={"name": "shop-1"})
    t = await admin(
        sqlite_hq,
        "POST",
        "/api/v1/tickets",
        json={"title": "network down", "site": "shop-1", "priority": "P1"},
    )  # 24x7, ack in 15 min
    n = t["number"]
    assert t["sla"]["ack"]["state"] == "running" and t["sla"]["ack"]["due"]
    async with sqlite_hq.sessions.begin() as session:
        await session.execute(
            update(Ticket)
            .where(Ticket.id == t["id"])
            .values(created_at=utcnow() - timedelta(minutes=25))
        )
    assert await sqlite_hq.hq.parts.sla.check() >= 2  # ack breached, response warned...
    assert await sqlite_hq.hq.parts.sla.check() == 0  # ...once only
    after = await admin(sqlite_hq, "GET", f"/api/v1/tickets/{n}")
    kinds = [e["data"].get("clock") for e in after["timeline"] if e["kind"] == "sla_breach"]
    assert kinds == ["ack"] and after["sla"]["ack"]["state"] == "breached"
    warned = [e["data"].get("clock") for e in after["timeline"] if e["kind"] == "sla_warning"]
    assert warned == ["response"] and after["sla"]["response"]["state"] == "warning"
    await admin(sqlite_hq, "POST", f"/api/v1/tickets/{n}/transition", json={"action": "start"})
    await admin(
        sqlite_hq,
        "POST",
        f"/api/v1/tickets/{n}/transition",
        json={"action": "wait", "reason": "on_site"},
    )
    paused = await admin(sqlite_hq, "GET", f"/api/v1/tickets/{n}")
    assert paused["sla"]["resolve"]["state"] == "paused" and paused["sla"]["resolve"]["due"] is None
    await asyncio.sleep(1.1)
    resumed = await admin(
        sqlite_hq, "POST", f"/api/v1/tickets/{n}/transition", json={"action": "start"}
    )
    assert resumed["paused_seconds"] >= 1.0 and resumed["sla"]["resolve"]["due"]
    k = await admin(sqlite_hq, "GET", "/api/v1/kpis", params={"site": "shop-1"})
    assert k["groups"]["all"]["sla_compliance"]["ack"] == 0.0


async def test_kpis_from_real_tickets(sqlite_hq):
    """KPIs over the API: escalation, tier-1 resolution, CSAT, grouped by site."""
    await admin(sqlite_hq, "POST", "/api/v1/sites", json={"name": "shop-1"})
    staff = await make_user(sqlite_hq, "site_staff", "shop-1")
    tech = await make_user(sqlite_hq, "site_tech", "shop-1")
    numbers = []
    async with sqlite_hq.client(staff.token) as api:
        for title in ("a", "b"):
            numbers.append(
                (await api.ok("POST", "/api/v1/tickets", json={"title": title, "site": "shop-1"}))[
                    "number"
                ]
            )
    async with sqlite_hq.client(tech.token) as api:
        await api.ok("POST", f"/api/v1/tickets/{numbers[0]}/transition", json={"action": "resolve"})
        await api.ok("POST", f"/api/v1/tickets/{numbers[1]}/escalate", json={"reason": "needs HQ"})
        await api.ok("POST", f"/api/v1/tickets/{numbers[1]}/transition", json={"action": "resolve"})
    async with sqlite_hq.client(staff.token) as api:
        await api.ok("POST", f"/api/v1/tickets/{numbers[0]}/rating", json={"score": 5})
        await api.ok("POST", f"/api/v1/tickets/{numbers[1]}/rating", json={"score": 2})
    auditor = await make_user(sqlite_hq, "auditor")
    async with sqlite_hq.client(auditor.token) as api:
        k = await api.ok("GET", "/api/v1/kpis", params={"group_by": "site"})
    shop = k["groups"]["shop-1"]
    assert shop["tickets"] == 2 and shop["resolved"] == 2
    assert shop["escalation_rate"] == 0.5 and shop["tier1_resolution_rate"] == 0.5
    assert shop["csat"] == 0.5 and shop["csat_response_rate"] == 1.0


async def test_webhooks_are_signed_and_retried(sqlite_hq):
    """Ticket events reach a webhook, HMAC-signed; a failed delivery is retried."""
    received: list[tuple[dict[str, str], bytes]] = []
    fail_first = {"left": 1}

    async def hook(request: web.Request) -> web.Response:
        if fail_first["left"]:
            fail_first["left"] -= 1
            return web.Response(status=500)
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        secret = "webhook-secret-for-tests"
        await admin(
            sqlite_hq,
            "POST",
            "/api/v1/webhooks",
            json={"url": f"http://127.0.0.1:{port}/hook", "secret": secret, "events": ["ticket.*"]},
        )
        await admin(sqlite_hq, "POST", "/api/v1/sites", json={"name": "shop-1"})
        t = await admin(sqlite_hq, "POST", "/api/v1/tickets", json={"title": "x", "site": "shop-1"})
        svc = sqlite_hq.hq.parts
        await wait_until(lambda: fail_first["left"] == 0, what="first attempt")
        from server.store.models import OutboxItem

        async with svc.sessions.begin() as session:  # skip the backoff wait
            await session.execute(update(OutboxItem).values(next_attempt_at=utcnow()))
        svc.webhooks.wake()
        await wait_until(lambda: received, what="delivery")
    finally:
        await runner.cleanup()
    headers, body = received[0]
    payload = json.loads(body)
    assert payload["event"] == "ticket.create" and payload["ticket"]["number"] == t["number"]
    stamp = headers["X-Fieldlink-Timestamp"]
    expected = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    assert headers["X-Fieldlink-Signature"] == f"sha256={expected}"
    hooks = await admin(sqlite_hq, "GET", "/api/v1/webhooks")
    assert "secret" not in json.dumps(hooks)


async def alert_tickets(hq: HQHandle) -> list[dict[str, Any]]:
    body = await admin(hq, "GET", "/api/v1/tickets", params={"source": "alert"})
    return [t for t in body["items"] if t["title"].startswith("Disk test")]


async def test_alert_opens_one_ticket_with_triage_and_resolves_on_recovery(hq, agent_factory):
    """Crossing a threshold opens exactly one P2 incident with the snapshot and triage output;
    repeated reports and an HQ restart add no duplicate; recovery auto-resolves it; a re-fire
    within the window reopens the same ticket."""
    agent = await online_agent(hq, agent_factory)
    rule = await admin(
        hq,
        "POST",
        "/api/v1/alert-rules",
        json={
            "name": "Disk test",
            "metric": "disk[*].percent",
            "op": ">",
            "threshold": 1,
            "clear_threshold": 1,
            "priority": "P2",
            "diagnostics": ["disk.usage", "disk.largest"],
            "site": "shop-1",
        },
    )
    found = await wait_until(lambda: alert_tickets(hq), what="alert ticket")
    assert len(found) == 1
    number = found[0]["number"]

    async def triaged() -> dict[str, Any] | None:
        t = await admin(hq, "GET", f"/api/v1/tickets/{number}")
        names = {e["data"].get("name") for e in t["timeline"] if e["kind"] == "run"}
        return t if {"disk.usage", "disk.largest"} <= names else None

    ticket = await wait_until(triaged, timeout=30, what="triage results attached")
    assert ticket["priority"] == "P2" and ticket["type"] == "incident"
    assert ticket["agents"] == [agent.agent_id]
    fired = [e for e in ticket["timeline"] if e["kind"] == "alert_fired"]
    assert len(fired) == 1 and fired[0]["data"]["snapshot"]["disks"]
    await asyncio.sleep(1.0)  # several more reports above the threshold
    await hq.restart()
    await wait_until(lambda: hq.hq.parts.links.get(agent.agent_id), what="back")
    await asyncio.sleep(1.0)
    assert [t["number"] for t in await alert_tickets(hq)] == [number]
    alerts = await admin(hq, "GET", "/api/v1/alerts", params={"status": "firing"})
    mine = [a for a in alerts["items"] if a["rule_id"] == rule["id"]]
    assert len(mine) == 1 and mine[0]["count"] == 1 and mine[0]["ticket"] == number

    await admin(
        hq,
        "PATCH",
        f"/api/v1/alert-rules/{rule['id']}",
        json={"threshold": 99.5, "clear_threshold": 99.5},
    )

    async def resolved() -> dict[str, Any] | None:
        t = await admin(hq, "GET", f"/api/v1/tickets/{number}")
        return t if t["status"] == "resolved" else None

    ticket = await wait_until(resolved, what="auto-resolved on recovery")
    assert ticket["resolution_code"] == "auto_recovered"
    assert any(e["kind"] == "alert_recovered" for e in ticket["timeline"])

    await admin(
        hq,
        "PATCH",
        f"/api/v1/alert-rules/{rule['id']}",
        json={"threshold": 1, "clear_threshold": 1},
    )

    async def reopened() -> dict[str, Any] | None:
        t = await admin(hq, "GET", f"/api/v1/tickets/{number}")
        return t if t["reopen_count"] == 1 else None

    ticket = await wait_until(reopened, what="reopened by a re-fire")
    assert ticket["status"] == "in_progress"
    assert [t["number"] for t in await alert_tickets(hq)] == [number]


async def test_offline_agent_alert_opens_a_ticket_and_recovers(sqlite_hq, agent_factory):
    """`agent.offline` is evaluated on a timer: a machine gone long enough gets one incident,
    resolved when it is back."""
    agent = await online_agent(sqlite_hq, agent_factory)
    await admin(
        sqlite_hq,
        "POST",
        "/api/v1/alert-rules",
        json={
            "name": "Disk test offline",
            "metric": "agent.offline",
            "op": ">=",
            "threshold": 1,
            "clear_threshold": 1,
            "priority": "P2",
            "site": "shop-1",
        },
    )
    engine = sqlite_hq.hq.parts.alerts
    await engine.reload_rules()
    await agent.stop()
    await wait_until(lambda: sqlite_hq.hq.parts.links.get(agent.agent_id) is None, what="gone")
    await asyncio.sleep(1.2)
    await engine.check_offline()
    await engine.check_offline()
    tickets = await alert_tickets(sqlite_hq)
    assert len(tickets) == 1 and tickets[0]["priority"] == "P2"
    await agent.start()
    await wait_until(lambda: sqlite_hq.hq.parts.links.get(agent.agent_id), what="back")

    async def resolved() -> bool:
        await engine.check_offline()
        t = await admin(sqlite_hq, "GET", f"/api/v1/tickets/{tickets[0]['number']}")
        return t["status"] == "resolved"

    await wait_until(resolved, what="resolved when back online")
