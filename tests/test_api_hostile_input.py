"""Hostile input to the API gets a 4xx in the one error shape, never a 500:
integers too big for the database, deleting a site that still holds
tickets, null for a field that cannot be empty, bodies nested too deep,
and a site calendar without working time (which broke every SLA clock).
Found by the API fuzzer (`make fuzz`); each ran into a 500 before its fix."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support import HQHandle

HUGE = "99999999999999999999"


def _failed(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == "request_failed"]


async def test_integer_query_parameters_beyond_64_bits_are_refused(hq, agent_factory):
    """?after=99999999999999999999 on tickets, an agent's health and the audit
    log is a 422 naming `after`, on both databases (was OverflowError, 500)."""
    agent = await agent_factory(hq)
    async with hq.client(hq.admin_token) as api:
        for path in (
            "/api/v1/tickets",
            f"/api/v1/agents/{agent.agent_id}/health",
            "/api/v1/audit",
        ):
            with capture_logs() as logs:
                status, err = await api.get(path, params={"after": HUGE})
            assert status == 422, (path, status, err)
            assert err["error"]["code"] == "invalid"
            assert "after" in err["error"]["fields"], err
            assert not _failed(logs)
            # The largest 64-bit value is still a fine cursor.
            ok, _ = await api.get(path, params={"after": str(2**63 - 1)})
            assert ok == 200, path
        status, doc = await api.get("/api/openapi.json")
    params = doc["paths"]["/api/v1/tickets"]["get"]["parameters"]
    after = next(p for p in params if p["name"] == "after")
    assert after["schema"]["maximum"] == 2**63 - 1


async def test_a_site_with_tickets_is_not_deleted(hq):
    """DELETE on a site that has tickets is a 409 naming them, and the site and
    its tickets stay (was an IntegrityError, 500); without them it goes."""
    async with hq.client(hq.admin_token) as api:
        site = await api.ok("POST", "/api/v1/sites", json={"name": "shop-9"})
        ticket = await api.ok("POST", "/api/v1/tickets", json={"title": "till", "site": "shop-9"})
        status, err = await api.request("DELETE", f"/api/v1/sites/{site['id']}")
        assert status == 409, err
        assert err["error"]["code"] == "conflict"
        assert "1 ticket(s)" in err["error"]["message"] and err["error"]["tickets"] == 1
        assert (await api.ok("GET", f"/api/v1/sites/{site['id']}"))["name"] == "shop-9"
        assert (await api.ok("GET", f"/api/v1/tickets/{ticket['id']}"))["site"] == "shop-9"
        empty = await api.ok("POST", "/api/v1/sites", json={"name": "shop-10"})
        await api.ok("DELETE", f"/api/v1/sites/{empty['id']}")
        status, _ = await api.get(f"/api/v1/sites/{empty['id']}")
        assert status == 404


async def test_null_for_a_required_alert_rule_field_is_refused(hq):
    """PATCH an alert rule with null name, threshold or op: 422 naming the
    field, the rule unchanged (was NOT NULL IntegrityError, 500). Null
    clear_threshold is allowed: it means "the threshold"."""
    async with hq.client(hq.admin_token) as api:
        rule = await api.ok(
            "POST",
            "/api/v1/alert-rules",
            json={
                "name": "hot",
                "metric": "cpu.percent",
                "op": ">",
                "threshold": 90,
                "clear_threshold": 80,
            },
        )
        path = f"/api/v1/alert-rules/{rule['id']}"
        for field in ("name", "threshold", "op"):
            with capture_logs() as logs:
                status, err = await api.request("PATCH", path, json={field: None})
            assert status == 422, (field, status, err)
            assert field in err["error"]["fields"], err
            assert not _failed(logs)
        same = await api.ok("GET", path)
        assert (same["name"], same["op"], same["threshold"]) == ("hot", ">", 90)
        cleared = await api.ok("PATCH", path, json={"clear_threshold": None, "name": "hotter"})
        assert cleared["clear_threshold"] is None and cleared["name"] == "hotter"
        status, doc = await api.get("/api/openapi.json")
    schema = doc["components"]["schemas"]["RulePatch"]["properties"]
    assert schema["name"]["type"] == "string" and "anyOf" not in schema["name"]
    assert {"type": "null"} in schema["clear_threshold"]["anyOf"]


async def test_a_body_nested_too_deep_is_refused_without_a_traceback(sqlite_hq: HQHandle):
    """A JSON body nested 1,000 deep on the public login is a 400 naming the
    body, with nothing logged as a failure (was RecursionError, 500, with a
    traceback each time). NaN is not JSON either."""
    deep = "[" * 1000 + "]" * 1000
    async with sqlite_hq.client() as api:
        for raw in (deep, '{"username": ' + deep + "}", '{"a": "' + "[" * 50 + '"}'):
            with capture_logs() as logs:
                status, err = await api.request(
                    "POST",
                    "/api/v1/auth/login",
                    data=raw.encode(),
                    headers={"Content-Type": "application/json"},
                )
            assert status in (400, 422), (raw[:20], status, err)
            assert not _failed(logs)
        with capture_logs() as logs:
            status, err = await api.request(
                "POST",
                "/api/v1/auth/login",
                data=deep.encode(),
                headers={"Content-Type": "application/json"},
            )
        assert status == 400, err
        assert err["error"]["code"] == "bad_request" and "body" in err["error"]["fields"]
        assert "nest" in err["error"]["message"]
        assert not _failed(logs) and not any("exception" in e for e in logs)
        status, err = await api.request(
            "POST",
            "/api/v1/auth/login",
            data=b'{"username": "admin", "password": NaN}',
            headers={"Content-Type": "application/json"},
        )
        assert status == 400 and err["error"]["fields"] == {"body": "not JSON"}
        # Brackets inside strings are text, not nesting: a wrong password, not a 400.
        status, _ = await api.post(
            "/api/v1/auth/login", {"username": "admin", "password": "[" * 1000}
        )
        assert status == 401


async def test_a_calendar_without_working_time_is_refused(sqlite_hq: HQHandle):
    """A site calendar with no working days is a 422 naming work_days (it was
    stored, and then every ticket read of that site was a 500: the SLA clock
    found no working time)."""
    async with sqlite_hq.client(sqlite_hq.admin_token) as api:
        site = await api.ok("POST", "/api/v1/sites", json={"name": "shop-7"})
        await api.ok("POST", "/api/v1/tickets", json={"title": "till", "site": "shop-7"})
        for body in ({"calendar": {"work_days": []}}, {"name": "x", "calendar": {"work_days": []}}):
            if "name" in body:
                status, err = await api.post("/api/v1/sites", body)
            else:
                status, err = await api.request("PATCH", f"/api/v1/sites/{site['id']}", json=body)
            assert status == 422, (body, status, err)
            assert "calendar.work_days" in err["error"]["fields"], err
        status, listed = await api.get("/api/v1/tickets")
        assert status == 200 and len(listed["items"]) == 1
        status, _ = await api.get("/api/v1/kpis")
        assert status == 200


async def test_text_with_a_nul_character_is_refused(hq):
    """A NUL character in a body field, a query parameter or a path id is a
    4xx on both databases (PostgreSQL refused it: 500 before), and nothing is
    stored."""
    async with hq.client(hq.admin_token) as api:
        await api.ok("POST", "/api/v1/sites", json={"name": "shop-5"})
        ticket = await api.ok("POST", "/api/v1/tickets", json={"title": "till", "site": "shop-5"})
        with capture_logs() as logs:
            status, err = await api.post(
                "/api/v1/sites", {"name": "shop-6", "description": "a\x00b"}
            )
            assert status == 422 and "description" in err["error"]["fields"], err
            status, err = await api.post(
                f"/api/v1/tickets/{ticket['id']}/agents", {"agent_id": "ag_\x00"}
            )
            assert status == 422 and "agent_id" in err["error"]["fields"], err
            status, err = await api.get("/api/v1/tickets", params={"site": "shop\x00"})
            assert status == 422 and "site" in err["error"]["fields"], err
            status, err = await api.get("/api/v1/agents/ag_%00x")
            assert status == 404, err
        assert not _failed(logs)
        sites = await api.ok("GET", "/api/v1/sites")
        assert "shop-6" not in {s["name"] for s in sites["items"]}


async def test_a_due_date_beyond_ten_years_of_working_time_is_no_500(sqlite_hq: HQHandle):
    """A year-long SLA target on a site open one minute a week: its tickets
    read and list with no due date for that clock (every read was a 500)."""
    async with sqlite_hq.client(sqlite_hq.admin_token) as api:
        calendar = {"work_days": [0], "work_start": "09:00", "work_end": "09:01"}
        await api.ok("POST", "/api/v1/sites", json={"name": "shop-8", "calendar": calendar})
        year = 365 * 86400
        await api.ok(
            "PUT",
            "/api/v1/sla-policies/P3",
            json={"ack_seconds": 60, "response_seconds": 60, "resolve_seconds": year},
        )
        with capture_logs() as logs:
            t = await api.ok(
                "POST",
                "/api/v1/tickets",
                json={"title": "till", "site": "shop-8", "priority": "P3"},
            )
            assert t["sla"]["resolve"]["due"] is None
            assert t["sla"]["resolve"]["state"] == "running"
            assert t["sla"]["ack"]["due"] is not None
            got = await api.ok("GET", f"/api/v1/tickets/{t['id']}")
            assert got["sla"]["resolve"]["due"] is None
            await api.ok("GET", "/api/v1/tickets")
            await api.ok("GET", "/api/v1/kpis")
        assert not _failed(logs)


NON_FINITE = ("1e400", "-1e400", "1E999", "-2e308")


async def test_non_finite_numbers_are_refused_wherever_stored(hq):
    """1e400 parses as infinity: an alert rule's threshold, clear_threshold
    (POST and PATCH), a change's failure threshold and free-form run
    parameters answer 422 naming the field, on both databases; nothing is
    stored (the rule was stored with an infinite threshold and fired for
    every agent, read back as `threshold: null`)."""
    async with hq.client(hq.admin_token) as api:

        async def raw(method: str, path: str, text: str) -> tuple[int, Any]:
            return await api.request(
                method, path, data=text.encode(), headers={"Content-Type": "application/json"}
            )

        before = await api.ok("GET", "/api/v1/alert-rules")
        rule = await api.ok(
            "POST",
            "/api/v1/alert-rules",
            json={"name": "hot", "metric": "cpu.percent", "op": ">", "threshold": 90},
        )
        for number in NON_FINITE:
            for field in ("threshold", "clear_threshold"):
                body = '{"name": "x", "metric": "cpu.percent", "op": ">", "threshold": 1'
                body = body.replace('"threshold": 1', f'"threshold": 1, "{field}": {number}')
                if field == "threshold":
                    body = body.replace('"threshold": 1, ', "")
                with capture_logs() as logs:
                    status, err = await raw("POST", "/api/v1/alert-rules", body + "}")
                    assert status == 422, (number, field, status, err)
                    assert field in err["error"]["fields"], err
                    status, err = await raw(
                        "PATCH", f"/api/v1/alert-rules/{rule['id']}", f'{{"{field}": {number}}}'
                    )
                    assert status == 422, (number, field, status, err)
                    assert field in err["error"]["fields"], err
                assert not _failed(logs)
            # free-form parameters, stored as JSON (PostgreSQL refuses Infinity)
            status, err = await raw(
                "POST",
                "/api/v1/jobs",
                f'{{"target": {{"site": "shop-1"}}, "name": "sys.info", '
                f'"params": {{"deep": [1, {{"x": {number}}}]}}}}',
            )
            assert status == 422, (number, status, err)
            assert "params.deep.1.x" in err["error"]["fields"], err
        after = await api.ok("GET", "/api/v1/alert-rules")
        assert len(after["items"]) == len(before["items"]) + 1
        same = await api.ok("GET", f"/api/v1/alert-rules/{rule['id']}")
        assert same["threshold"] == 90 and same["clear_threshold"] is None


def test_settings_refuse_non_finite_numbers(tmp_path):
    """A setting of `inf` or `nan` (environment, config.toml, command line) is
    refused at start-up rather than taken as "never"."""
    import pydantic

    from server.config.settings import load_settings

    for name, value in (
        ("report_interval", "inf"),
        ("http_header_timeout", "nan"),
        ("help_limit_window_minutes", "1e400"),
        ("session_idle_minutes", float("inf")),
    ):
        with pytest.raises(pydantic.ValidationError, match=name):
            load_settings(tmp_path, **{name: value})
