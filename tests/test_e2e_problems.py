"""Problem records end to end over the API: the lifecycle with its rules
(known errors need a workaround, resolved problems a root cause and a
resolution), linked incidents that show the known error's workaround, site
scope, and HQ's proposals from an incident reopened twice and from an alert
rule firing on three machines (real agents, real health reports)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tests.support import HQHandle, make_user, wait_until
from tests.test_e2e_runs_api import online_agent


async def admin(hq: HQHandle, method: str, path: str, **kw: Any) -> Any:
    async with hq.client(hq.admin_token) as api:
        return await api.ok(method, path, **kw)


async def ticket(hq: HQHandle, site: str, title: str = "till 3 freezes") -> str:
    made = await admin(hq, "POST", "/api/v1/tickets", json={"title": title, "site": site})
    return str(made["number"])


async def test_problem_lifecycle_rules_and_workaround_on_linked_tickets(hq):
    """Open a problem with two incidents; illegal moves answer 409 with the allowed
    statuses; known_error without a workaround and resolved without root cause or
    resolution answer 422 naming the field; the known error's workaround shows on each
    linked ticket; every change is in the history and the audit trail."""
    await admin(hq, "POST", "/api/v1/sites", json={"name": "shop-1"})
    t1, t2, t3 = [await ticket(hq, "shop-1") for _ in range(3)]
    async with hq.client(hq.admin_token) as api:
        status, made = await api.post(
            "/api/v1/problems",
            {"title": "Tills freeze after update", "site": "shop-1", "tickets": [t1, t2]},
        )
        assert status == 201, made
        number = made["number"]
        assert number.startswith("PRB-") and made["status"] == "new"
        assert [t["number"] for t in made["tickets"]] == [t1, t2]
        assert made["site"] == "shop-1" and made["priority"] == "P4"
        assert made["allowed_statuses"] == ["investigating", "known_error", "resolved"]

        status, err = await api.post(f"/api/v1/problems/{number}/transition", {"status": "closed"})
        assert status == 409 and err["error"]["allowed"] == [
            "investigating",
            "known_error",
            "resolved",
        ]
        await api.ok(
            "POST", f"/api/v1/problems/{number}/transition", json={"status": "investigating"}
        )
        status, err = await api.post(
            f"/api/v1/problems/{number}/transition", {"status": "known_error"}
        )
        assert status == 422 and "workaround" in err["error"]["fields"]
        before = await api.ok("GET", f"/api/v1/tickets/{t1}")
        assert before["problems"][0]["number"] == number
        assert before["problems"][0]["workaround"] is None
        known = await api.ok(
            "POST",
            f"/api/v1/problems/{number}/transition",
            json={"status": "known_error", "workaround": "Restart the till service"},
        )
        assert known["status"] == "known_error" and known["known_error_at"]
        for ref in (t1, t2):
            seen = await api.ok("GET", f"/api/v1/tickets/{ref}")
            assert seen["problems"] == [
                {
                    "id": known["id"],
                    "number": number,
                    "title": "Tills freeze after update",
                    "status": "known_error",
                    "workaround": "Restart the till service",
                }
            ]
            notes = [e for e in seen["timeline"] if e["kind"] == "problem"]
            assert "Restart the till service" in notes[-1]["body"]
        # an incident linked later shows the workaround too
        linked = await api.ok("POST", f"/api/v1/problems/{number}/tickets", json={"ticket": t3})
        assert linked["ticket_count"] == 3
        third = await api.ok("GET", f"/api/v1/tickets/{t3}")
        assert third["problems"][0]["workaround"] == "Restart the till service"
        # a known error keeps its workaround
        status, err = await api.request(
            "PATCH", f"/api/v1/problems/{number}", json={"workaround": "  "}
        )
        assert status == 422 and "workaround" in err["error"]["fields"]

        status, err = await api.post(
            f"/api/v1/problems/{number}/transition",
            {"status": "resolved", "resolution": "rolled back"},
        )
        assert status == 422 and "root_cause" in err["error"]["fields"]
        status, err = await api.post(
            f"/api/v1/problems/{number}/transition",
            {"status": "resolved", "root_cause": "driver 4.2 leaks handles"},
        )
        assert status == 422 and "resolution" in err["error"]["fields"]
        await api.ok(
            "PATCH", f"/api/v1/problems/{number}", json={"root_cause": "driver 4.2 leaks handles"}
        )
        done = await api.ok(
            "POST",
            f"/api/v1/problems/{number}/transition",
            json={"status": "resolved", "resolution": "driver 4.3 rolled out"},
        )
        assert done["status"] == "resolved" and done["root_cause"] == "driver 4.2 leaks handles"
        assert done["allowed_statuses"] == ["investigating", "closed"]
        unlinked = await api.ok("DELETE", f"/api/v1/problems/{number}/tickets/{t3}")
        assert [t["number"] for t in unlinked["tickets"]] == [t1, t2]
        status, _ = await api.request("DELETE", f"/api/v1/problems/{number}/tickets/{t3}")
        assert status == 404
        closed = await api.ok(
            "POST", f"/api/v1/problems/{done['id']}/transition", json={"status": "closed"}
        )
        status, err = await api.post(f"/api/v1/problems/{number}/notes", {"body": " "})
        assert status == 422 and "body" in err["error"]["fields"]
        noted = await api.ok(
            "POST", f"/api/v1/problems/{number}/notes", json={"body": "vendor ships 4.3.1"}
        )
        assert noted["history"][-1]["kind"] == "note"
        assert noted["history"][-1]["body"] == "vendor ships 4.3.1"
        assert closed["closed_at"] and closed["allowed_statuses"] == []
        status, err = await api.post(f"/api/v1/problems/{number}/tickets", {"ticket": t3})
        assert status == 409

        kinds = [h["kind"] for h in closed["history"]]
        assert kinds[0] == "created" and kinds.count("state") == 4
        assert kinds.count("ticket_linked") == 3 and kinds.count("ticket_unlinked") == 1
        trail = (await api.ok("GET", "/api/v1/audit", params={"limit": 500}))["items"]
        actions = [e["action"] for e in trail if e.get("target_id") == closed["id"]]
        for action in (
            "problem.create",
            "problem.link",
            "problem.transition",
            "problem.update",
            "problem.note",
        ):
            assert action in actions, action

        listed = await api.ok("GET", "/api/v1/problems", params={"status": "closed"})
        assert [p["number"] for p in listed["items"]] == [number]
        assert (await api.ok("GET", "/api/v1/problems", params={"status": "open"}))["items"] == []
        by_ticket = await api.ok("GET", "/api/v1/problems", params={"ticket": t1})
        assert [p["number"] for p in by_ticket["items"]] == [number]
        status, err = await api.get("/api/v1/problems", params={"status": "opne"})
        assert status == 422 and "status" in err["error"]["fields"]
        status, err = await api.post("/api/v1/problems", {"title": "", "site": "nowhere"})
        assert status == 422 and "title" in err["error"]["fields"]
        status, err = await api.post("/api/v1/problems", {"title": "x", "site": "nowhere"})
        assert status == 404 and err["error"]["fields"] == {"site": "no such site"}
        status, err = await api.post("/api/v1/problems", {"title": "x", "tickets": ["FL-999999"]})
        assert status == 422 and "tickets" in err["error"]["fields"]


async def test_site_scope_of_problems(sqlite_hq):
    """A site technician sees its site's problems and HQ-wide ones tied to its incidents,
    works only its site's; nobody links another site's incident to a site's problem."""
    hq = sqlite_hq
    for name in ("shop-a", "shop-b"):
        await admin(hq, "POST", "/api/v1/sites", json={"name": name})
    ta, tb = await ticket(hq, "shop-a"), await ticket(hq, "shop-b")
    own = await admin(hq, "POST", "/api/v1/problems", json={"title": "A", "site": "shop-a"})
    other = await admin(hq, "POST", "/api/v1/problems", json={"title": "B", "site": "shop-b"})
    wide = await admin(hq, "POST", "/api/v1/problems", json={"title": "HQ", "tickets": [ta, tb]})
    hidden = await admin(hq, "POST", "/api/v1/problems", json={"title": "HQ only"})
    assert wide["site"] is None
    tech = await make_user(hq, "site_tech", "shop-a", totp=True)
    staff = await make_user(hq, "site_staff", "shop-a", totp=True)
    async with hq.client(tech.token) as api:
        seen = await api.ok("GET", "/api/v1/problems")
        assert {p["title"] for p in seen["items"]} == {"A", "HQ"}
        status, _ = await api.get(f"/api/v1/problems/{other['number']}")
        assert status == 404
        status, _ = await api.get(f"/api/v1/problems/{hidden['number']}")
        assert status == 404
        got = await api.ok("GET", f"/api/v1/problems/{wide['number']}")
        assert [t["number"] for t in got["tickets"]] == [ta]  # only what it may read
        assert got["allowed_statuses"] == []
        status, err = await api.post(
            f"/api/v1/problems/{wide['number']}/transition", {"status": "investigating"}
        )
        assert status == 403
        status, err = await api.post("/api/v1/problems", {"title": "mine"})
        assert status == 403 and "site" in err["error"]["fields"]
        status, err = await api.post(f"/api/v1/problems/{own['number']}/tickets", {"ticket": tb})
        assert status == 422 and "ticket" in err["error"]["fields"]
        await api.ok("POST", f"/api/v1/problems/{own['number']}/tickets", json={"ticket": ta})
    async with hq.client(hq.admin_token) as api:
        status, err = await api.post(f"/api/v1/problems/{own['number']}/tickets", {"ticket": tb})
        assert status == 422 and "not on the problem's site" in err["error"]["fields"]["ticket"]
    async with hq.client(staff.token) as api:
        status, _ = await api.get("/api/v1/problems")
        assert status == 403


async def reopen_cycle(api: Any, number: str) -> None:
    await api.ok("POST", f"/api/v1/tickets/{number}/transition", json={"action": "resolve"})
    await api.ok("POST", f"/api/v1/tickets/{number}/transition", json={"action": "reopen"})


async def test_an_incident_reopened_twice_proposes_one_problem(hq):
    """The second reopen proposes a problem tied to the incident; a third adds none;
    an engineer accepts it (it becomes new) or dismisses another (with a reason)."""
    await admin(hq, "POST", "/api/v1/sites", json={"name": "shop-1"})
    number = await ticket(hq, "shop-1", "printer jams again")
    engineer = await make_user(hq, "hq_engineer", totp=True)
    async with hq.client(engineer.token) as api:
        await reopen_cycle(api, number)
        assert (await api.ok("GET", "/api/v1/problems", params={"status": "proposed"}))[
            "items"
        ] == []
        await reopen_cycle(api, number)
        proposals = (await api.ok("GET", "/api/v1/problems", params={"status": "proposed"}))[
            "items"
        ]
        assert len(proposals) == 1
        prop = proposals[0]
        assert prop["origin"] == "reopened" and prop["origin_label"] == number
        assert prop["ticket_count"] == 1 and "reopened 2 times" in prop["proposed_reason"]
        assert prop["allowed_statuses"] == ["new", "dismissed"]
        # proposals stay out of the default list
        assert (await api.ok("GET", "/api/v1/problems"))["items"] == []
        await reopen_cycle(api, number)
        again = await api.ok("GET", "/api/v1/problems", params={"status": "proposed"})
        assert [p["number"] for p in again["items"]] == [prop["number"]]
        seen = await api.ok("GET", f"/api/v1/tickets/{number}")
        assert seen["problems"][0]["status"] == "proposed"
        accepted = await api.ok(
            "POST", f"/api/v1/problems/{prop['number']}/transition", json={"status": "new"}
        )
        assert accepted["status"] == "new" and accepted["accepted_at"]
        assert accepted["history"][-1]["data"] == {
            "from": "proposed",
            "to": "new",
            "changed": [],
        }

        other = await ticket(hq, "shop-1", "scanner drops")
        await reopen_cycle(api, other)
        await reopen_cycle(api, other)
        second = (await api.ok("GET", "/api/v1/problems", params={"status": "proposed"}))["items"]
        assert len(second) == 1 and second[0]["origin_label"] == other
        status, err = await api.post(
            f"/api/v1/problems/{second[0]['number']}/transition", {"status": "dismissed"}
        )
        assert status == 422 and "reason" in err["error"]["fields"]
        await api.ok(
            "POST",
            f"/api/v1/problems/{second[0]['number']}/transition",
            json={"status": "dismissed", "reason": "user error, trained"},
        )
        gone = await api.ok("GET", f"/api/v1/tickets/{other}")
        assert gone["problems"] == []
        trail = (await admin(hq, "GET", "/api/v1/audit", params={"limit": 500}))["items"]
        assert {"problem.propose", "problem.accept", "problem.dismiss"} <= {
            e["action"] for e in trail
        }


async def test_an_alert_rule_firing_on_three_machines_proposes_one_problem(
    sqlite_hq, agent_factory
):
    """Three real agents cross a rule's threshold: three incidents, then one proposal
    that links all three (not one per machine), visible to engineers."""
    hq = sqlite_hq
    agents = [await online_agent(hq, agent_factory) for _ in range(3)]
    rule = await admin(
        hq,
        "POST",
        "/api/v1/alert-rules",
        json={
            "name": "Disk cluster",
            "metric": "disk[*].percent",
            "op": ">",
            "threshold": 1,
            "clear_threshold": 1,
            "priority": "P2",
            "site": "shop-1",
        },
    )
    await hq.hq.parts.alerts.reload_rules()

    async def proposals() -> list[dict[str, Any]]:
        body = await admin(hq, "GET", "/api/v1/problems", params={"status": "proposed"})
        return [p for p in body["items"] if p["origin_ref"] == rule["id"]]

    found = await wait_until(proposals, timeout=30, what="a proposed problem")
    engineer = await make_user(hq, "hq_engineer", totp=True)
    async with hq.client(engineer.token) as api:
        prop = await api.ok("GET", f"/api/v1/problems/{found[0]['number']}")
        incidents = await api.ok("GET", "/api/v1/tickets", params={"source": "alert"})
    mine = [t for t in incidents["items"] if t["title"].startswith("Disk cluster")]
    assert len(mine) == 3
    assert {t["number"] for t in prop["tickets"]} == {t["number"] for t in mine}
    assert {a for t in mine for a in t["agents"]} == {a.agent_id for a in agents}
    assert prop["origin_label"] == "Disk cluster" and prop["priority"] == "P2"
    assert prop["site"] == "shop-1" and "3 machines" in prop["title"]
    assert len(await proposals()) == 1

    # a fourth machine's incident joins the proposal rather than making another
    fourth = await online_agent(hq, agent_factory)

    async def joined() -> dict[str, Any] | None:
        got = await admin(hq, "GET", f"/api/v1/problems/{prop['number']}")
        return got if got["ticket_count"] == 4 else None

    grown = await wait_until(joined, timeout=30, what="the fourth incident linked")
    assert len(await proposals()) == 1
    history = [h for h in grown["history"] if h["kind"] == "ticket_linked"]
    assert len(history) == 4 and history[-1]["actor"] == "problems"
    alert_tickets = await admin(hq, "GET", "/api/v1/tickets", params={"agent_id": fourth.agent_id})
    assert alert_tickets["items"][0]["number"] == history[-1]["data"]["ticket"]


async def test_problem_events_reach_webhooks(sqlite_hq):
    """A webhook subscribed to problem.* gets each problem event (with the known
    error's workaround), signed like ticket events, and no ticket event."""
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(json.loads(await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    hq = sqlite_hq
    try:
        await admin(
            hq,
            "POST",
            "/api/v1/webhooks",
            json={
                "url": f"http://127.0.0.1:{port}/hook",
                "secret": "webhook-secret-for-tests",
                "events": ["problem.*"],
            },
        )
        await admin(hq, "POST", "/api/v1/sites", json={"name": "shop-1"})
        number = await ticket(hq, "shop-1")
        made = await admin(
            hq,
            "POST",
            "/api/v1/problems",
            json={"title": "P", "site": "shop-1", "tickets": [number]},
        )
        await admin(
            hq,
            "POST",
            f"/api/v1/problems/{made['number']}/transition",
            json={"status": "known_error", "workaround": "reboot"},
        )
        hq.hq.parts.webhooks.wake()

        def all_three() -> bool:
            return len(received) >= 3

        await wait_until(all_three, timeout=30, what="three deliveries")
    finally:
        await runner.cleanup()
    events = sorted(p["event"] for p in received)
    assert events == ["problem.create", "problem.link", "problem.transition"]
    last = next(p for p in received if p["event"] == "problem.transition")
    assert last["problem"]["number"] == made["number"]
    assert last["problem"]["workaround"] == "reboot"
    assert last["data"]["to"] == "known_error"


async def test_resolving_a_problem_can_resolve_its_incidents(sqlite_hq):
    """With resolve_incidents, the open linked incidents the caller may work are
    resolved with the problem's resolution; the others stay as they are."""
    hq = sqlite_hq
    for name in ("shop-a", "shop-b"):
        await admin(hq, "POST", "/api/v1/sites", json={"name": name})
    ta, tb, done = (
        await ticket(hq, "shop-a"),
        await ticket(hq, "shop-b"),
        await ticket(hq, "shop-a"),
    )
    await admin(hq, "POST", f"/api/v1/tickets/{done}/transition", json={"action": "resolve"})
    made = await admin(
        hq, "POST", "/api/v1/problems", json={"title": "wide", "tickets": [ta, tb, done]}
    )
    number = made["number"]
    # works HQ-wide problems, but tickets on shop-a only
    manager = await make_user(hq, "site_tech", "shop-a", totp=True)
    role = {"name": "problem_manager", "permissions": ["problems:read", "problems:write"]}
    await admin(hq, "POST", "/api/v1/roles", json=role)
    await admin(
        hq,
        "POST",
        "/api/v1/bindings",
        json={"user_id": manager.id, "role": "problem_manager", "scope": "global"},
    )
    path = f"/api/v1/problems/{number}/transition"
    async with hq.client(manager.token) as api:
        status, err = await api.post(path, {"status": "investigating", "resolve_incidents": True})
        assert status == 422 and "resolve_incidents" in err["error"]["fields"]
        await api.ok(
            "POST",
            path,
            json={"status": "resolved", "root_cause": "r", "resolution": "new firmware",
                  "resolve_incidents": True},
        )  # fmt: skip
    seen = {n: await admin(hq, "GET", f"/api/v1/tickets/{n}") for n in (ta, tb, done)}
    final = await admin(hq, "GET", f"/api/v1/problems/{number}")
    assert seen[ta]["status"] == "resolved" and seen[ta]["resolution_code"] == "problem_resolved"
    assert seen[ta]["resolution_text"] == f"{number}: new firmware"
    assert seen[tb]["status"] == "new"  # shop-b's: not the manager's to work
    assert seen[done]["resolution_code"] != "problem_resolved"
    event = final["history"][-1]
    assert event["kind"] == "incidents_resolved" and event["data"]["tickets"] == [ta]
