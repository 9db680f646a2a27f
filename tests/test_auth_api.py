"""Access control over real HTTPS: login with TOTP, console sessions and CSRF,
throttling, API tokens, administration rules, the audit trail, and attacks."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
import structlog
from sqlalchemy import func, select, text, update

from server.auth import totp
from server.control import admin
from server.store.models import ApiToken, AuditEntry, LoginThrottle, utcnow
from tests.support import ApiClient, HQHandle, make_user


def totp_code(secret: str, offset: int = 0) -> str:
    import time

    return totp.code_for(secret, time.time() + offset)


async def login(api: ApiClient, username: str, password: str, **extra) -> tuple[int, dict]:
    return await api.post(
        "/api/v1/auth/login", {"username": username, "password": password, **extra}
    )


async def test_login_session_cookie_is_locked_down_and_needs_csrf_for_writes(sqlite_hq):
    """Session cookie is HttpOnly, Secure, SameSite=Strict; writes need the CSRF token."""
    user = await make_user(sqlite_hq, "auditor")
    async with sqlite_hq.client() as api:
        async with api._session.post(
            api.base + "/api/v1/auth/login",
            json={"username": user.username, "password": user.password},
        ) as resp:
            assert resp.status == 200
            body = await resp.json()
            raw = resp.headers.getall("Set-Cookie")[0].lower()
        assert "httponly" in raw and "secure" in raw and "samesite=strict" in raw
        csrf = body["csrf_token"]
        status, me = await api.get("/api/v1/me")
        assert status == 200 and me["user"]["username"] == user.username and me["via"] == "session"
        # A cookie-authenticated write without, then with a wrong, then the right CSRF token.
        status, err = await api.post("/api/v1/tokens", {"name": "t"})
        assert status == 403 and err["error"]["code"] == "csrf_failed"
        status, _ = await api.post("/api/v1/tokens", {"name": "t"}, headers={"X-CSRF-Token": "x"})
        assert status == 403
        status, made = await api.post(
            "/api/v1/tokens", {"name": "t"}, headers={"X-CSRF-Token": csrf}
        )
        assert status == 201 and made["token"].startswith("flk_")
        status, _ = await api.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf})
        assert status == 200
        status, err = await api.get("/api/v1/me")
        assert status == 401


async def test_console_sessions_end_when_idle_or_too_old(sqlite_hq):
    """A console session ends after `session_idle_minutes` without use (30) and
    `session_max_hours` after login (12), however used; the row goes too."""
    from datetime import timedelta

    from server.store.models import WebSession

    user = await make_user(sqlite_hq, "auditor")
    for field, moved in (("last_seen_at", timedelta(minutes=31)), ("expires_at", timedelta(0))):
        async with sqlite_hq.client() as api:
            assert (await login(api, user.username, user.password))[0] == 200
            assert (await api.get("/api/v1/me"))[0] == 200
            async with sqlite_hq.sessions.begin() as session:
                await session.execute(
                    update(WebSession)
                    .where(WebSession.user_id == user.id)
                    .values({field: utcnow() - moved})
                )
            status, err = await api.get("/api/v1/me")
            assert status == 401 and err["error"]["code"] == "session_expired", field
        async with sqlite_hq.sessions() as session:
            left = await session.scalar(
                select(func.count()).select_from(WebSession).where(WebSession.user_id == user.id)
            )
        assert left == 0


async def test_login_with_totp_enrollment_flow(sqlite_hq):
    """Enroll TOTP, confirm it, and from then on login needs a valid, fresh code."""
    user = await make_user(sqlite_hq, "auditor")
    async with sqlite_hq.client() as api:
        status, body = await login(api, user.username, user.password, token=True)
        assert status == 200 and body["token"]
        api.token = body["token"]
        setup = await api.ok("POST", "/api/v1/me/totp")
        assert setup["uri"].startswith("otpauth://totp/")
        status, err = await api.post("/api/v1/me/totp/confirm", {"code": "000000"})
        assert status == 422 and "code" in err["error"]["fields"]
        await api.ok("POST", "/api/v1/me/totp/confirm", json={"code": totp_code(setup["secret"])})
        api.token = None
        status, err = await login(api, user.username, user.password, token=True)
        assert status == 401 and err["error"]["code"] == "totp_required"
        status, err = await login(api, user.username, user.password, token=True, totp="123456")
        assert status == 401 and err["error"]["code"] == "totp_invalid"
        status, body = await login(
            api, user.username, user.password, token=True, totp=totp_code(setup["secret"], 30)
        )
        assert status == 200
        # the same code again is a replay
        status, _ = await login(
            api, user.username, user.password, token=True, totp=totp_code(setup["secret"], 30)
        )
        assert status == 401


async def test_sensitive_roles_must_enroll_2fa_first(sqlite_hq):
    """An engineer without TOTP can only enroll it; the break-glass token is exempt."""
    eng = await make_user(sqlite_hq, "hq_engineer")
    async with sqlite_hq.client() as api:
        _, body = await login(api, eng.username, eng.password, token=True)
        api.token = body["token"]
        status, err = await api.get("/api/v1/agents")
        assert status == 403 and err["error"]["code"] == "2fa_required"
        me = await api.ok("GET", "/api/v1/me")
        assert me["must_enroll_2fa"] is True
        setup = await api.ok("POST", "/api/v1/me/totp")
        await api.ok("POST", "/api/v1/me/totp/confirm", json={"code": totp_code(setup["secret"])})
        assert (await api.get("/api/v1/agents"))[0] == 200
    # The break-glass path works without 2FA and is audited as such.
    token = await admin.api_token(sqlite_hq.settings, user="admin", ttl="1h")
    async with sqlite_hq.client(token) as api:
        assert (await api.get("/api/v1/agents"))[0] == 200
        entries = await api.ok("GET", "/api/v1/audit", params={"action": "token.create"})
    assert any(e["details"]["origin"] == "break-glass" for e in entries["items"])


async def test_wrong_password_and_unknown_user_look_the_same(sqlite_hq):
    """Failures never reveal whether the user exists, and are audited."""
    user = await make_user(sqlite_hq, "auditor")
    async with sqlite_hq.client() as api:
        s1, e1 = await login(api, user.username, "wrong-password")
        s2, e2 = await login(api, "nobody-here", "wrong-password")
    assert s1 == s2 == 401
    assert e1 == e2
    async with sqlite_hq.sessions() as session:
        failures = (
            await session.scalars(
                select(AuditEntry).where(
                    AuditEntry.action == "auth.login", AuditEntry.outcome == "failure"
                )
            )
        ).all()
    assert {f.actor_name for f in failures} == {user.username, "nobody-here"}


async def test_brute_force_hits_the_limit(sqlite_hq):
    """Repeated failures are throttled (429 with Retry-After), even the right password."""
    user = await make_user(sqlite_hq, "auditor")
    async with sqlite_hq.client() as api:
        statuses = [(await login(api, user.username, f"guess-{i}"))[0] for i in range(6)]
        assert 429 in statuses
        async with api._session.post(
            api.base + "/api/v1/auth/login",
            json={"username": user.username, "password": user.password},
        ) as resp:
            assert resp.status == 429
            assert int(resp.headers["Retry-After"]) >= 1
            body = await resp.json()
        assert body["error"]["code"] == "rate_limited"
        # the same answer for a user that does not exist
        statuses = [(await login(api, "ghost", f"guess-{i}"))[0] for i in range(6)]
        assert 429 in statuses
    # Once the wait is over (simulated by moving the last failure back), the right password works.
    async with sqlite_hq.sessions.begin() as session:
        await session.execute(
            update(LoginThrottle).values(
                last_failure_at=utcnow().replace(year=2020), locked_until=None
            )
        )
    async with sqlite_hq.client() as api:
        assert (await login(api, user.username, user.password))[0] == 200


async def test_one_address_guessing_many_names_is_throttled(sqlite_hq):
    """Failures spread over many user names (none reaching its own limit) still
    throttle their source address: then even a real user's right password gets 429."""
    user = await make_user(sqlite_hq, "auditor")
    async with sqlite_hq.client() as api:
        statuses = [(await login(api, f"name-{i}", "guess"))[0] for i in range(12)]
        assert statuses[0] == 401 and statuses[-1] == 429
        assert (await login(api, user.username, user.password))[0] == 429


async def test_api_tokens_live_no_longer_than_the_setting_allows(sqlite_hq):
    """`max_token_ttl` (90 days by default) bounds what a token may ask for."""
    async with sqlite_hq.client(sqlite_hq.admin_token) as api:
        status, err = await api.post("/api/v1/tokens", {"name": "long", "ttl": "365d"})
        assert status == 422 and err["error"]["fields"] == {"ttl": "at most 90d"}
        made = await api.ok("POST", "/api/v1/tokens", json={"name": "ok", "ttl": "90d"})
        assert made["token"] and made["expires_at"]


async def test_tokens_expire_revoke_and_stay_within_owner_rights(sqlite_hq, agent_factory):
    """Narrowed tokens, beyond-permission use, expiry, revocation, owner losing rights."""
    agent = await agent_factory(sqlite_hq, site="shop-a", run=False)
    tech = await make_user(sqlite_hq, "site_tech", "shop-a")
    async with sqlite_hq.client(tech.token) as api:
        status, err = await api.post("/api/v1/tokens", {"name": "x", "permissions": ["shell:open"]})
        assert status == 403 and "permissions" in err["error"]["fields"]
        status, err = await api.post("/api/v1/tokens", {"name": "x", "permissions": ["nope"]})
        assert status == 422
        # a token cannot make tokens unless it holds users:admin explicitly
        status, err = await api.post("/api/v1/tokens", {"name": "x"})
        assert status == 403
    async with sqlite_hq.sessions.begin() as session:
        from server.ops import accounts
        from shared.durations import parse_duration

        narrow = await accounts.make_api_token(
            session,
            username=tech.username,
            name="ro",
            ttl=parse_duration("1h"),
            origin="api",
            actor=admin.local_actor(),
            permissions=["agents:read"],
        )
    async with sqlite_hq.client(narrow.token) as api:
        assert (await api.get(f"/api/v1/agents/{agent.agent_id}"))[0] == 200
        status, err = await api.get(f"/api/v1/agents/{agent.agent_id}/health")
        assert status == 403  # health:read is the owner's, but not this token's
        tokens = await api.ok("GET", "/api/v1/tokens")
        assert all("token" not in t for t in tokens["items"])
    # expiry
    async with sqlite_hq.sessions.begin() as session:
        await session.execute(
            update(ApiToken).where(ApiToken.id == narrow.token_id).values(expires_at=utcnow())
        )
    async with sqlite_hq.client(narrow.token) as api:
        assert (await api.get("/api/v1/agents"))[0] == 401
    # revocation through the API, and the owner losing their binding
    async with sqlite_hq.client(tech.token) as api:
        listed = await api.ok("GET", "/api/v1/tokens")
        own = next(t for t in listed["items"] if t["origin"] == "login")
    async with sqlite_hq.client(sqlite_hq.admin_token) as api:
        user = await api.ok("GET", f"/api/v1/users/{tech.id}")
        await api.ok("DELETE", f"/api/v1/bindings/{user['bindings'][0]['id']}")
    async with sqlite_hq.client(tech.token) as api:
        status, _ = await api.get("/api/v1/agents")
        assert status == 403  # the token's rights dropped with its owner's
        await api.ok("DELETE", f"/api/v1/tokens/{own['id']}")
        assert (await api.get("/api/v1/me"))[0] == 401


async def test_site_tech_never_sees_another_site(sqlite_hq, agent_factory):
    """A site_tech of A gets 404 for B's agent (as if absent) and B is not listed."""
    a = await agent_factory(sqlite_hq, site="shop-a", run=False)
    b = await agent_factory(sqlite_hq, site="shop-b", run=False)
    tech = await make_user(sqlite_hq, "site_tech", "shop-a")
    async with sqlite_hq.client(tech.token) as api:
        listed = await api.ok("GET", "/api/v1/agents")
        assert [i["id"] for i in listed["items"]] == [a.agent_id]
        status, err = await api.get(f"/api/v1/agents/{b.agent_id}")
        assert status == 404
        assert (await api.get("/api/v1/agents/ag_doesnotexist"))[1] == err
        assert (await api.get("/api/v1/agents", params={"site": "shop-b"}))[1]["items"] == []
        me = await api.ok("GET", "/api/v1/me")
        assert list(me["permissions"]) == ["site:shop-a"]


async def test_nobody_grants_themselves_more(sqlite_hq):
    """A site admin cannot grant itself global admin; the last admin stays."""
    site_admin = await make_user(sqlite_hq, "admin", "shop-a", totp=True)
    async with sqlite_hq.client(site_admin.token) as api:
        status, _ = await api.post(
            "/api/v1/bindings", {"user_id": site_admin.id, "role": "admin", "scope": "global"}
        )
        assert status == 404  # no users:admin on the global scope
        status, _ = await api.post(
            "/api/v1/bindings",
            {"user_id": site_admin.id, "role": "site_tech", "scope": "site:shop-a"},
        )
        assert status == 201
    async with sqlite_hq.client(sqlite_hq.admin_token) as api:
        users = await api.ok("GET", "/api/v1/users")
        root = next(u for u in users["items"] if u["username"] == "admin")
        status, err = await api.request("DELETE", f"/api/v1/users/{root['id']}")
        assert status == 409 and err["error"]["code"] == "last_admin"
        assert list(err["error"]["fields"]) == ["user_id"]
        status, err = await api.request(
            "PATCH", f"/api/v1/users/{root['id']}", json={"disabled": True}
        )
        assert status == 409 and err["error"]["code"] == "last_admin"
        assert list(err["error"]["fields"]) == ["disabled"]
        status, err = await api.request("DELETE", f"/api/v1/bindings/{root['bindings'][0]['id']}")
        assert status == 409 and list(err["error"]["fields"]) == ["binding_id"]
        again = await api.ok("GET", f"/api/v1/users/{root['id']}")
        assert again["disabled"] is False and again["bindings"] == root["bindings"]
        # a custom role, bound and used
        await api.ok(
            "POST",
            "/api/v1/roles",
            json={
                "name": "tier2",
                "description": "site tech plus actions",
                "permissions": ["agents:read", "diag:run", "action:run"],
            },
        )
        status, _ = await api.post("/api/v1/roles", {"name": "tier2", "permissions": []})
        assert status == 409
        status, _err = await api.request("PATCH", "/api/v1/roles/admin", json={"permissions": []})
        assert status == 409


async def test_bad_input_gets_the_error_shape_and_changes_nothing(sqlite_hq):
    """Malformed and oversized JSON, bad fields: 4xx with the shape; nothing stored."""
    async with sqlite_hq.client(sqlite_hq.admin_token) as api:
        before = await api.ok("GET", "/api/v1/users")
        status, err = await api.request("POST", "/api/v1/users", data=b'{"username": ')
        assert status == 400 and err["error"]["code"] == "bad_request"
        status, err = await api.request("POST", "/api/v1/users", data=b'["a"]')
        assert status == 422
        status, err = await api.post(
            "/api/v1/users", {"username": "Bad Name!", "password": "x" * 12}
        )
        assert status == 422 and "username" in err["error"]["fields"]
        big = json.dumps({"username": "big", "display_name": "x" * (2 * 1024 * 1024)}).encode()
        status, err = await api.request("POST", "/api/v1/users", data=io.BytesIO(big))
        assert status == 413 and err["error"]["code"] == "too_large"
        status, err = await api.post("/api/v1/users", {"username": "ok-user", "password": "short"})
        assert status == 422 and "password" in err["error"]["fields"]
        status, err = await api.get("/api/v1/nothing-here")
        assert status == 404 and err["error"]["code"] == "not_found"
        status, err = await api.request("DELETE", "/api/v1/agents")
        assert status == 405 and err["error"]["code"] == "method_not_allowed"
        after = await api.ok("GET", "/api/v1/users")
    assert before == after


async def test_secrets_never_reach_logs_or_responses(sqlite_hq):
    """Passwords, TOTP secrets and tokens are absent from logs and listings."""
    out = io.StringIO()
    from shared import logs

    logs.configure(json=True, stream=out)
    try:
        user = await make_user(sqlite_hq, "auditor")
        async with sqlite_hq.client() as api:
            _, body = await login(api, user.username, user.password, token=True)
            api.token = body["token"]
            setup = await api.ok("POST", "/api/v1/me/totp")
            await login(api, user.username, "wrong-" + user.password)
            await api.get("/api/v1/agents")
        async with sqlite_hq.client(sqlite_hq.admin_token) as api:
            listing = json.dumps(await api.ok("GET", "/api/v1/users"))
            listing += json.dumps(await api.ok("GET", "/api/v1/audit", params={"limit": 1000}))
    finally:
        structlog.reset_defaults()
        logs.configure(json=False)
    text_out = out.getvalue()
    for secret in (user.password, body["token"], setup["secret"], user.token):
        assert secret not in text_out
        assert secret not in listing


async def tamper_and_verify(hq: HQHandle) -> None:
    count, broken = await admin.audit_verify(hq.settings)
    assert broken is None and count > 3
    async with hq.sessions.begin() as session:
        await session.execute(text("UPDATE audit_log SET actor_name = 'mallory' WHERE seq = 2"))
    count, broken = await admin.audit_verify(hq.settings)
    assert broken is not None and broken.startswith("entry 2:")


async def test_audit_verify_catches_a_direct_edit(hq):
    """`audit verify` passes on an untouched trail and names an edited row (both databases)."""
    await make_user(hq, "auditor")
    await tamper_and_verify(hq)


async def test_audit_api_filters_pages_exports_and_verifies(sqlite_hq):
    """GET /audit filters and pages; /audit/export is JSON lines; /audit/verify reports."""
    for _ in range(3):
        await make_user(sqlite_hq, "auditor")
    auditor = await make_user(sqlite_hq, "auditor")
    async with sqlite_hq.client(auditor.token) as api:
        page = await api.ok("GET", "/api/v1/audit", params={"action": "user.*", "limit": 2})
        assert len(page["items"]) == 2 and page["next"]
        rest = await api.ok(
            "GET", "/api/v1/audit", params={"action": "user.*", "after": page["next"]}
        )
        assert all(i["seq"] > int(page["next"]) for i in rest["items"])
        status, lines = await api.get("/api/v1/audit/export", params={"action": "user.create"})
        rows = [json.loads(line) for line in lines.splitlines()]
        assert status == 200 and len(rows) == 5 and rows[0]["prev_hash"]
        result = await api.ok("GET", "/api/v1/audit/verify")
        assert result["ok"] and result["entries"] > 5
    tech = await make_user(sqlite_hq, "site_tech", "shop-a")
    async with sqlite_hq.client(tech.token) as api:
        assert (await api.get("/api/v1/audit"))[0] == 403


@pytest.mark.parametrize("role", ["admin", "auditor"])
async def test_me_lists_bindings_and_effective_permissions(sqlite_hq, role):
    """/me shows bindings and effective permissions per scope."""
    user = await make_user(sqlite_hq, role, totp=True)
    async with sqlite_hq.client(user.token) as api:
        me = await api.ok("GET", "/api/v1/me")
    assert me["bindings"][0]["role"] == role and me["bindings"][0]["scope"] == "global"
    assert "agents:read" in me["permissions"]["global"]
    assert me["mfa_recent"] is True
    await asyncio.sleep(0)
