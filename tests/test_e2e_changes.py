"""Changes end to end with real agents: request, approval rules (not one's own,
one refusal rejects), staged jobs (pilot, health gate, rest), automatic halting
on failures and on a new alert on a pilot machine, review, the site's view of
upcoming changes, and carrying on after an HQ restart."""

from __future__ import annotations

import asyncio
from typing import Any

from tests import support
from tests.support import AgentHandle, HQHandle, make_user, wait_until
from tests.test_e2e_runs_api import online_agent


async def call(hq: HQHandle, token: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with hq.client(token) as api:
        return await api.request(method, path, **kw)


async def ok(hq: HQHandle, token: str, method: str, path: str, **kw: Any) -> Any:
    status, body = await call(hq, token, method, path, **kw)
    assert 200 <= status < 300, f"{method} {path} -> {status}: {body}"
    return body


def exec_change(agents: list[AgentHandle], **extra: Any) -> dict[str, Any]:
    return {
        "title": "Rotate the till config",
        "risk": "medium",
        "plan": "push the new config",
        "backout_plan": "restore the old one",
        "action": {"name": "exec", "params": {"argv": ["echo", "changed"]}},
        "target": {"agent_ids": [a.agent_id for a in agents]},
        "gate_seconds": 0,
        **extra,
    }


async def state_of(hq: HQHandle, number: str, *states: str) -> dict[str, Any] | None:
    change = await ok(hq, hq.admin_token, "GET", f"/api/v1/changes/{number}")
    return change if change["state"] in states else None


async def engineer_and_approver(hq: HQHandle) -> tuple[support.TestUser, support.TestUser]:
    return (
        await make_user(hq, "hq_engineer", totp=True),
        await make_user(hq, "admin", totp=True),
    )


async def test_change_approved_by_another_runs_pilot_then_rest(hq, agent_factory):
    """Requested by an engineer, refused to its own requester, approved by another; started,
    the pilot job runs on one machine, the gate passes, the rest runs, then review closes it
    successful; every step is audited and in the history (both databases), and an HQ restart
    in the middle of the gate does not lose it."""
    agents = [
        await online_agent(hq, agent_factory, allow_exec=True, require_consent=False)
        for _ in range(3)
    ]
    engineer, approver = await engineer_and_approver(hq)
    made = await ok(
        hq,
        engineer.token,
        "POST",
        "/api/v1/changes",
        json=exec_change(agents, gate_seconds=2, approvals_required=1),
    )
    number = made["number"]
    assert number.startswith("CHG-") and made["state"] == "requested"
    assert made["action"]["tier"] == "exec" and made["agent_count"] == 3
    # the engineer holds no changes:approve; an admin who asked cannot approve its own
    status, err = await call(
        hq, engineer.token, "POST", f"/api/v1/changes/{number}/approve", json={}
    )
    assert status == 403
    own = await ok(hq, approver.token, "POST", "/api/v1/changes", json=exec_change(agents[:1]))
    status, err = await call(
        hq, approver.token, "POST", f"/api/v1/changes/{own['number']}/approve", json={}
    )
    assert status == 403 and err["error"]["code"] == "own_change"
    assert "approver" in err["error"]["fields"]
    # not startable before approval
    status, err = await call(hq, engineer.token, "POST", f"/api/v1/changes/{number}/start")
    assert status == 409 and err["error"]["fields"]["state"] == "requested"
    approved = await ok(
        hq, approver.token, "POST", f"/api/v1/changes/{number}/approve", json={"comment": "go"}
    )
    assert approved["state"] == "approved" and approved["approvals"][0]["decision"] == "approve"
    status, _ = await call(hq, approver.token, "POST", f"/api/v1/changes/{number}/approve", json={})
    assert status == 409

    started = await ok(hq, engineer.token, "POST", f"/api/v1/changes/{number}/start")
    assert started["state"] == "in_progress" and started["stage"] == "pilot"
    assert [s["stage"] for s in started["stages"]] == ["pilot"]
    assert started["stages"][0]["agents"] == 1
    pilot = [a["id"] for a in started["agents"] if a["pilot"]]
    assert len(pilot) == 1

    async def in_gate() -> dict[str, Any] | None:
        change = await ok(hq, hq.admin_token, "GET", f"/api/v1/changes/{number}")
        return change if change["stage"] == "gate" or change["state"] != "in_progress" else None

    gated = await wait_until(in_gate, timeout=30, what="pilot done, gate open")
    assert gated["stages"][0]["counts"] == {"ok": 1}
    await hq.restart()  # the gate's clock and the next stage live in the database
    for agent in agents:
        await wait_until(lambda a=agent: hq.hq.parts.links.get(a.agent_id), what="back")

    done = await wait_until(
        lambda: state_of(hq, number, "review"), timeout=60, what="every stage ran"
    )
    assert [s["stage"] for s in done["stages"]] == ["pilot", "rest"]
    assert done["stages"][1]["counts"] == {"ok": 2} and not done["halted"]
    rest_job = await ok(hq, engineer.token, "GET", f"/api/v1/jobs/{done['stages'][1]['job_id']}")
    assert {i["agent_id"] for i in rest_job["items"]} == {a.agent_id for a in agents} - set(pilot)
    assert all(i["result"]["stdout"].strip() == "changed" for i in rest_job["items"])

    closed = await ok(
        hq,
        engineer.token,
        "POST",
        f"/api/v1/changes/{number}/review",
        json={"outcome": "successful", "comment": "all tills updated"},
    )
    assert closed["state"] == "successful" and closed["closed_at"]
    kinds = [e["kind"] for e in closed["history"]]
    assert kinds[0] == "requested" and "approval" in kinds and "gate_passed" in kinds
    assert kinds[-1] == "review"
    audit = await ok(hq, hq.admin_token, "GET", "/api/v1/audit", params={"action": "change.*"})
    mine = [e["action"] for e in audit["items"] if e["target_id"] == made["id"]]
    for action in (
        "change.request",
        "change.approve",
        "change.start",
        "change.stage",
        "change.gate_passed",
        "change.review_ready",
        "change.review",
    ):
        assert action in mine, (action, mine)


async def test_one_refusal_rejects_and_a_refusal_needs_a_reason(sqlite_hq, agent_factory):
    """Two approvals required: one approval leaves it requested, one refusal rejects it; a
    rejected change cannot be approved or started; a refusal without a comment is a 422."""
    hq = sqlite_hq
    agent = await online_agent(hq, agent_factory, allow_exec=True, require_consent=False)
    engineer, approver = await engineer_and_approver(hq)
    second = await make_user(hq, "admin", totp=True)
    made = await ok(
        hq,
        engineer.token,
        "POST",
        "/api/v1/changes",
        json=exec_change([agent], approvals_required=2),
    )
    n = made["number"]
    one = await ok(hq, approver.token, "POST", f"/api/v1/changes/{n}/approve", json={})
    assert one["state"] == "requested" and len(one["approvals"]) == 1
    status, err = await call(hq, second.token, "POST", f"/api/v1/changes/{n}/reject", json={})
    assert status == 422 and "comment" in err["error"]["fields"]
    rejected = await ok(
        hq, second.token, "POST", f"/api/v1/changes/{n}/reject", json={"comment": "not in Q4"}
    )
    assert rejected["state"] == "rejected"
    assert [a["decision"] for a in rejected["approvals"]] == ["approve", "reject"]
    status, _ = await call(hq, second.token, "POST", f"/api/v1/changes/{n}/approve", json={})
    assert status == 409
    status, _ = await call(hq, engineer.token, "POST", f"/api/v1/changes/{n}/start")
    assert status == 409


async def test_bad_requests_name_the_field(sqlite_hq, agent_factory):
    hq = sqlite_hq
    agent = await online_agent(hq, agent_factory, allow_exec=True, require_consent=False)
    engineer, _ = await engineer_and_approver(hq)
    cases = [
        ({"risk": "extreme"}, "risk"),
        ({"action": {"name": "no.such.thing"}}, "action.name"),
        ({"action": {"name": "net.tcp_check", "params": {"port": "x"}}}, "action.params.port"),
        ({"target": {}}, "target"),
        ({"target": {"sites": ["nowhere"]}}, "target.sites"),
        ({"pilot_agent_ids": ["ag_nope"]}, "pilot_agent_ids"),
        ({"failure_threshold": 101}, "failure_threshold"),
        ({"gate_minutes": -1}, "gate_minutes"),
        ({"planned_start": "2030-01-01T10:00:00"}, "planned_start"),
    ]
    for extra, field in cases:
        status, err = await call(
            hq, engineer.token, "POST", "/api/v1/changes", json=exec_change([agent], **extra)
        )
        assert status in (404, 422), (extra, status, err)
        assert any(k.startswith(field) for k in err["error"].get("fields", {})), (extra, err)
    tech = await make_user(hq, "site_tech", "shop-1")
    status, _ = await call(hq, tech.token, "POST", "/api/v1/changes", json=exec_change([agent]))
    assert status == 403
    status, _ = await call(hq, engineer.token, "GET", "/api/v1/changes/CHG-999")
    assert status == 404


async def approved_change(
    hq: HQHandle, engineer: support.TestUser, approver: support.TestUser, spec: dict[str, Any]
) -> str:
    made = await ok(hq, engineer.token, "POST", "/api/v1/changes", json=spec)
    await ok(hq, approver.token, "POST", f"/api/v1/changes/{made['number']}/approve", json={})
    return str(made["number"])


async def test_a_failing_pilot_halts_before_the_rest(sqlite_hq, agent_factory):
    """`false` fails on the pilot: the change halts at once, no rest job is made, and the
    review cannot call it successful."""
    hq = sqlite_hq
    agents = [
        await online_agent(hq, agent_factory, allow_exec=True, require_consent=False)
        for _ in range(2)
    ]
    engineer, approver = await engineer_and_approver(hq)
    spec = exec_change(agents, action={"name": "exec", "params": {"argv": ["false"]}})
    n = await approved_change(hq, engineer, approver, spec)
    await ok(hq, engineer.token, "POST", f"/api/v1/changes/{n}/start")
    halted = await wait_until(lambda: state_of(hq, n, "review"), timeout=30, what="halted")
    assert halted["halted"] and "pilot" in halted["halt_reason"]
    assert [s["stage"] for s in halted["stages"]] == ["pilot"]
    assert halted["stages"][0]["counts"] == {"failed": 1}
    status, err = await call(
        hq, engineer.token, "POST", f"/api/v1/changes/{n}/review", json={"outcome": "successful"}
    )
    assert status == 409 and err["error"]["fields"]["outcome"]
    closed = await ok(
        hq, engineer.token, "POST", f"/api/v1/changes/{n}/review", json={"outcome": "failed"}
    )
    assert closed["state"] == "failed"


async def test_failures_above_the_threshold_halt_the_rest_and_cancel_what_waits(
    sqlite_hq, agent_factory
):
    """Pilot ok; in the rest one machine refuses (its policy forbids commands) and one is
    offline: 1 of 2 failed is above 25%, so the change halts and the offline machine's
    queued item is cancelled, never run. Rolled back, the backout runs where it ran."""
    hq = sqlite_hq
    pilot = await online_agent(hq, agent_factory, allow_exec=True, require_consent=False)
    refusing = await online_agent(hq, agent_factory)  # allow_exec = false
    offline = await online_agent(hq, agent_factory, allow_exec=True, require_consent=False)
    await offline.stop()
    await wait_until(lambda: not hq.hq.parts.links.get(offline.agent_id), what="gone")
    engineer, approver = await engineer_and_approver(hq)
    spec = exec_change(
        [pilot, refusing, offline],
        pilot_agent_ids=[pilot.agent_id],
        failure_threshold=25,
        backout_action={"name": "exec", "params": {"argv": ["echo", "restored"]}},
    )
    n = await approved_change(hq, engineer, approver, spec)
    await ok(hq, engineer.token, "POST", f"/api/v1/changes/{n}/start")
    halted = await wait_until(lambda: state_of(hq, n, "review"), timeout=30, what="halted")
    assert halted["halted"] and "25% threshold" in halted["halt_reason"]
    assert halted["stages"][1]["counts"] == {"refused": 1, "cancelled": 1}
    job = await ok(hq, engineer.token, "GET", f"/api/v1/jobs/{halted['stages'][1]['job_id']}")
    assert job["status"] == "done"
    assert {i["agent_id"]: i["status"] for i in job["items"]} == {
        refusing.agent_id: "refused",
        offline.agent_id: "cancelled",
    }
    closed = await ok(
        hq,
        engineer.token,
        "POST",
        f"/api/v1/changes/{n}/review",
        json={"outcome": "rolled_back", "run_backout": True, "comment": "undo"},
    )
    assert closed["state"] == "rolled_back" and closed["stages"][-1]["stage"] == "backout"
    backout = closed["stages"][-1]["job_id"]

    async def backed_out() -> dict[str, Any] | None:
        job = await ok(hq, engineer.token, "GET", f"/api/v1/jobs/{backout}")
        return job if job["status"] == "done" else None

    job = await wait_until(backed_out, timeout=30, what="backout ran")
    # where it ran (the pilot, and the refusing machine which was asked); not where it waited
    assert {i["agent_id"] for i in job["items"]} == {pilot.agent_id, refusing.agent_id}
    done = {i["agent_id"]: i for i in job["items"]}
    assert done[pilot.agent_id]["result"]["stdout"].strip() == "restored"


async def test_failures_within_the_threshold_carry_on_in_batches(sqlite_hq, agent_factory):
    """One refusal in a batch of two is 50%, not above a 50% threshold (whichever batch it
    falls in): the change carries on batch by batch (pilot, rest of 2, rest of 2) and
    reaches review not halted."""
    hq = sqlite_hq
    pilot = await online_agent(hq, agent_factory, allow_exec=True, require_consent=False)
    refusing = await online_agent(hq, agent_factory)  # allow_exec = false
    others = [
        await online_agent(hq, agent_factory, allow_exec=True, require_consent=False)
        for _ in range(3)
    ]
    engineer, approver = await engineer_and_approver(hq)
    spec = exec_change(
        [pilot, refusing, *others],
        pilot_agent_ids=[pilot.agent_id],
        failure_threshold=50,
        batch_size=2,
    )
    n = await approved_change(hq, engineer, approver, spec)
    await ok(hq, engineer.token, "POST", f"/api/v1/changes/{n}/start")
    done = await wait_until(lambda: state_of(hq, n, "review"), timeout=60, what="review")
    assert not done["halted"]
    assert [s["stage"] for s in done["stages"]] == ["pilot", "rest", "rest"]
    assert [s["agents"] for s in done["stages"]] == [1, 2, 2]
    counts: dict[str, int] = {}
    for stage in done["stages"][1:]:
        for status, k in stage["counts"].items():
            counts[status] = counts.get(status, 0) + k
    assert counts == {"ok": 3, "refused": 1}


async def test_the_gate_catches_a_new_alert_on_a_pilot_machine(sqlite_hq, agent_factory):
    """During the gate an alert fires on the pilot machine (a real health report crossing a
    rule's threshold): the change halts before the rest runs."""
    hq = sqlite_hq
    agents = [
        await online_agent(hq, agent_factory, allow_exec=True, require_consent=False)
        for _ in range(2)
    ]
    engineer, approver = await engineer_and_approver(hq)
    n = await approved_change(
        hq, engineer, approver, exec_change(agents, gate_seconds=600, pilot_size=1)
    )
    await ok(hq, engineer.token, "POST", f"/api/v1/changes/{n}/start")

    async def gate() -> dict[str, Any] | None:
        change = await ok(hq, hq.admin_token, "GET", f"/api/v1/changes/{n}")
        return change if change["stage"] == "gate" else None

    await wait_until(gate, timeout=30, what="gate open")
    await ok(
        hq,
        hq.admin_token,
        "POST",
        "/api/v1/alert-rules",
        json={
            "name": "Disk gate test",
            "metric": "disk[*].percent",
            "op": ">",
            "threshold": 1,
            "priority": "P3",
            "site": "shop-1",
        },
    )
    halted = await wait_until(lambda: state_of(hq, n, "review"), timeout=30, what="gate halt")
    assert halted["halted"] and "Disk gate test" in halted["halt_reason"]
    assert [s["stage"] for s in halted["stages"]] == ["pilot"]


async def test_site_sees_upcoming_changes_for_its_machines_only(sqlite_hq, agent_factory):
    """Site staff and technicians of shop-1 see the change touching their machine in the
    upcoming list (and can open it); shop-2's people do not see it at all. Cancelled,
    it leaves the upcoming list."""
    hq = sqlite_hq
    agent = await online_agent(
        hq, agent_factory, site="shop-1", allow_exec=True, require_consent=False
    )
    await online_agent(hq, agent_factory, site="shop-2", allow_exec=True, require_consent=False)
    engineer, _ = await engineer_and_approver(hq)
    made = await ok(
        hq,
        engineer.token,
        "POST",
        "/api/v1/changes",
        json=exec_change([agent], planned_start="2030-01-02T03:00:00Z"),
    )
    staff = await make_user(hq, "site_staff", "shop-1")
    tech = await make_user(hq, "site_tech", "shop-1")
    other = await make_user(hq, "site_staff", "shop-2")
    for user in (staff, tech):
        listed = await ok(hq, user.token, "GET", "/api/v1/changes", params={"upcoming": "true"})
        assert [c["number"] for c in listed["items"]] == [made["number"]]
        assert listed["items"][0]["planned_start"].startswith("2030-01-02T03:00")
        mine = await ok(hq, user.token, "GET", "/api/v1/changes", params={"agent": agent.agent_id})
        assert [c["number"] for c in mine["items"]] == [made["number"]]
        await ok(hq, user.token, "GET", f"/api/v1/changes/{made['number']}")
    listed = await ok(hq, other.token, "GET", "/api/v1/changes", params={"upcoming": "true"})
    assert listed["items"] == []
    status, _ = await call(hq, other.token, "GET", f"/api/v1/changes/{made['number']}")
    assert status == 404
    status, _ = await call(
        hq, staff.token, "POST", f"/api/v1/changes/{made['number']}/cancel", json={}
    )
    assert status == 403
    await ok(
        hq,
        engineer.token,
        "POST",
        f"/api/v1/changes/{made['number']}/cancel",
        json={"reason": "moved to January"},
    )
    listed = await ok(hq, staff.token, "GET", "/api/v1/changes", params={"upcoming": "true"})
    assert listed["items"] == []


async def test_cancelling_a_running_change_halts_it_and_cancels_what_waits(
    sqlite_hq, agent_factory
):
    """The pilot machine is offline, so its item waits; cancelling the running change halts
    it at once (to review, with who and why) and the waiting item is cancelled, never run."""
    hq = sqlite_hq
    agent = await online_agent(hq, agent_factory, allow_exec=True, require_consent=False)
    await agent.stop()
    await wait_until(lambda: not hq.hq.parts.links.get(agent.agent_id), what="gone")
    engineer, approver = await engineer_and_approver(hq)
    n = await approved_change(hq, engineer, approver, exec_change([agent]))
    started = await ok(hq, engineer.token, "POST", f"/api/v1/changes/{n}/start")
    assert started["stages"][0]["counts"] == {"queued": 1}
    halted = await ok(
        hq, engineer.token, "POST", f"/api/v1/changes/{n}/cancel", json={"reason": "wrong week"}
    )
    assert halted["state"] == "review" and halted["halted"]
    assert engineer.username in halted["halt_reason"] and "wrong week" in halted["halt_reason"]
    assert halted["stages"][0]["counts"] == {"cancelled": 1}
    assert halted["stages"][0]["status"] == "done"
    status, err = await call(hq, engineer.token, "POST", f"/api/v1/changes/{n}/cancel", json={})
    assert status == 409 and err["error"]["fields"]["state"] == "review"


async def test_approve_and_reject_at_the_same_moment_decide_once(hq, agent_factory):
    """Two approvers decide on one change at the same moment: one answers 200
    and the other 409, and the change holds one decision; the same approver
    twice at once is one 200 and one 409 (both databases). Both answered 200
    before: each read the change as requested."""
    agent = await online_agent(hq, agent_factory, allow_exec=True, require_consent=False)
    engineer, approver = await engineer_and_approver(hq)
    second = await make_user(hq, "admin", totp=True)
    async with hq.client(approver.token) as one, hq.client(second.token) as two:
        for round_ in range(4):
            made = await ok(
                hq, engineer.token, "POST", "/api/v1/changes", json=exec_change([agent])
            )
            n = made["number"]
            # warm both clients' connections, so the two requests really race
            await one.get("/api/v1/me")
            await two.get("/api/v1/me")
            (s1, b1), (s2, b2) = await asyncio.gather(
                one.post(f"/api/v1/changes/{n}/approve", {}),
                two.post(f"/api/v1/changes/{n}/reject", {"comment": "not now"}),
            )
            assert sorted((s1, s2)) == [200, 409], (round_, s1, b1, s2, b2)
            final = await ok(hq, hq.admin_token, "GET", f"/api/v1/changes/{n}")
            assert len(final["approvals"]) == 1, final["approvals"]
            winner = "approved" if s1 == 200 else "rejected"
            assert final["state"] == winner, (final["state"], s1, s2)
            events = [e["kind"] for e in final["history"]]
            assert events.count("rejected") + events.count("approval") == 1, events
        made = await ok(hq, engineer.token, "POST", "/api/v1/changes", json=exec_change([agent]))
        n = made["number"]
        (s1, b1), (s2, b2) = await asyncio.gather(
            one.post(f"/api/v1/changes/{n}/approve", {}),
            one.post(f"/api/v1/changes/{n}/approve", {}),
        )
        assert sorted((s1, s2)) == [200, 409], (s1, b1, s2, b2)
