"""The access grid: every built-in role x scope (own site, other site,
global) x every API route -> the expected status, against one real HQ.

Every route of the app must have an entry here (a test walks the router), so
the grid grows with every later feature. Kinds of route:

- public: no authentication (not in the grid)
- self: any authenticated caller, on its own account
- list: needs the permission on some scope; answers 200 (filtered)
- object: needs the permission on the object's site (site A): other site -> 404
- global: needs the permission on the global scope: site-scoped -> 404

Console pages (HTML) are in the grid too, requested as a browser does: with
the console session cookie and, for form posts, the session's CSRF token in
`csrf_token`; redirects are not followed (a form post answers 303). A page
the caller lacks the permission for answers 403, one outside its scope 404.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from server.auth.rbac import BUILTIN_ROLES
from server.hq import make_app
from server.ops import accounts
from server.web.openapi import route_specs
from shared.durations import parse_duration
from tests.support import HQHandle, make_user, start_agent, start_hq

ROLES = list(BUILTIN_ROLES)
SCOPES = ["own", "other", "global"]
SITE_A, SITE_B = "site-a", "site-b"


@dataclass
class World:
    hq: HQHandle
    agent_id: str
    site_a_id: str
    users: dict[tuple[str, str], Any] = field(default_factory=dict)
    tokens: dict[tuple[str, str], str] = field(default_factory=dict)
    tmp: Any = None
    ticket: str = ""
    # console session (cookie, csrf) per grid user
    web: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)


Build = Callable[[World, tuple[str, str]], Awaitable[tuple[str, str, Any]]]


@dataclass(frozen=True)
class Cell:
    kind: str
    permission: str | None
    build: Build
    ok: int = 200
    # for rules beyond the kinds: (role, scope) -> status
    expect: Callable[[str, str], int] | None = None
    # a console page: asked with the session cookie (and a form's csrf_token)
    console: bool = False


def ticket_rule(
    permission: str, ok: int, *, requester_only: bool = False
) -> Callable[[str, str], int]:
    """Tickets: the route's permission, and reading the ticket (tickets:read with
    agents:read on its site, or being its requester: grid users are not)."""

    def rule(role: str, scope: str) -> int:
        perms = BUILTIN_ROLES[role][1]
        if permission not in perms:
            return 403
        if "tickets:read" not in perms or "agents:read" not in perms or scope == "other":
            return 404
        return 403 if requester_only else ok

    return rule


async def _ticket(world: World) -> str:
    async with world.hq.client(world.hq.admin_token) as api:
        made = await api.ok(
            "POST", "/api/v1/tickets", json={"title": "grid", "site": SITE_A, "tier": "site"}
        )
    return str(made["number"])


def on_ticket(method: str, suffix: str, body: Any = None, fresh: bool = False) -> Build:
    async def build(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
        number = await _ticket(world) if fresh else world.ticket
        return method, f"/api/v1/tickets/{number}{suffix}", body

    return build


def fixed(method: str, path: str, body: Any = None) -> Build:
    async def build(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
        return method, path.format(agent=world.agent_id, site=world.site_a_id), body

    return build


async def _fresh_agent(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
    handle = await start_agent(
        world.hq, world.tmp / f"ag-{secrets.token_hex(4)}", site=SITE_A, run=False
    )
    return "POST", f"/api/v1/agents/{handle.agent_id}/revoke", None


async def _fresh_user(world: World, who: tuple[str, str]) -> str:
    return (await make_user(world.hq, None)).id


async def _patch_user(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
    return "PATCH", f"/api/v1/users/{await _fresh_user(world, who)}", {"display_name": "X"}


async def _delete_user(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
    return "DELETE", f"/api/v1/users/{await _fresh_user(world, who)}", None


async def _get_user(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
    """A user of site A: a site-scoped admin of another site does not see it."""
    return "GET", f"/api/v1/users/{(await make_user(world.hq, 'site_staff', SITE_A)).id}", None


async def _new_user(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
    return "POST", "/api/v1/users", {"username": f"u-{secrets.token_hex(4)}"}


async def _custom_role(world: World) -> str:
    name = f"r_{secrets.token_hex(4)}"
    async with world.hq.client(world.hq.admin_token) as api:
        await api.ok("POST", "/api/v1/roles", json={"name": name, "permissions": ["agents:read"]})
    return name


async def _new_role(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
    return (
        "POST",
        "/api/v1/roles",
        {"name": f"r_{secrets.token_hex(4)}", "permissions": ["agents:read"]},
    )


async def _patch_role(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
    return "PATCH", f"/api/v1/roles/{await _custom_role(world)}", {"description": "d"}


async def _delete_role(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
    return "DELETE", f"/api/v1/roles/{await _custom_role(world)}", None


async def _new_binding(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
    user_id = await _fresh_user(world, who)
    return (
        "POST",
        "/api/v1/bindings",
        {"user_id": user_id, "role": "site_staff", "scope": f"site:{SITE_A}"},
    )


async def _delete_binding(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
    user = await make_user(world.hq, "site_staff", SITE_A)
    async with world.hq.client(world.hq.admin_token) as api:
        info = await api.ok("GET", f"/api/v1/users/{user.id}")
    return "DELETE", f"/api/v1/bindings/{info['bindings'][0]['id']}", None


async def _new_site(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
    return "POST", "/api/v1/sites", {"name": f"s-{secrets.token_hex(4)}"}


async def _delete_site(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
    async with world.hq.client(world.hq.admin_token) as api:
        site = await api.ok("POST", "/api/v1/sites", json={"name": f"s-{secrets.token_hex(4)}"})
    return "DELETE", f"/api/v1/sites/{site['id']}", None


async def _own_token(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
    async with world.hq.sessions.begin() as session:
        made = await accounts.make_api_token(
            session,
            username=world.users[who].username,
            name="grid",
            origin="api",
            ttl=parse_duration("1h"),
            actor=accounts_actor(),
        )
    return "DELETE", f"/api/v1/tokens/{made.token_id}", None


def accounts_actor() -> Any:
    from server.control import admin

    return admin.local_actor()


async def _logout(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
    return "POST", "/api/v1/auth/logout", None


async def _article(world: World, *, publish: bool) -> str:
    """A site-A article (published, or a draft), made by the admin."""
    async with world.hq.client(world.hq.admin_token) as api:
        made = await api.ok(
            "POST", "/api/v1/kb", json={"title": "grid", "visibility": "site", "site": SITE_A}
        )
        if publish:
            await api.ok(
                "POST", f"/api/v1/kb/{made['number']}/transition", json={"action": "publish"}
            )
    return str(made["number"])


def on_article(
    method: str, suffix: str, body: Any = None, *, publish: bool = False, prefix: str = "/api/v1"
) -> Build:
    async def build(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
        number = await _article(world, publish=publish)
        if isinstance(body, dict) and body.get("target") == "{agent}":
            return method, f"{prefix}/kb/{number}{suffix}", {**body, "target": world.agent_id}
        return method, f"{prefix}/kb/{number}{suffix}", body

    return build


async def _kb_link(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
    number = await _article(world, publish=False)
    async with world.hq.client(world.hq.admin_token) as api:
        made = await api.ok(
            "POST",
            f"/api/v1/kb/{number}/links",
            json={"kind": "machine", "target": world.agent_id},
        )
    return "DELETE", f"/api/v1/kb/{number}/links/{made['links'][0]['id']}", None


async def _resolved_ticket(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
    number = await _ticket(world)
    async with world.hq.client(world.hq.admin_token) as api:
        await api.ok(
            "POST",
            f"/api/v1/tickets/{number}/transition",
            json={"action": "resolve", "resolution_text": "fixed"},
        )
    return "POST", f"/api/v1/tickets/{number}/kb", {}


RULE = {"name": "grid", "metric": "cpu.percent", "op": ">", "threshold": 99.9, "enabled": False}


def _rule(method: str, body: Any = None) -> Build:
    async def build(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
        async with world.hq.client(world.hq.admin_token) as api:
            rule = await api.ok("POST", "/api/v1/alert-rules", json={**RULE, "site": SITE_A})
        return method, f"/api/v1/alert-rules/{rule['id']}", body

    return build


async def _webhook(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
    async with world.hq.client(world.hq.admin_token) as api:
        hook = await api.ok(
            "POST", "/api/v1/webhooks", json={"url": "https://127.0.0.1:9/h", "secret": "s" * 20}
        )
    return "DELETE", f"/api/v1/webhooks/{hook['id']}", None


async def _new_session(world: World) -> tuple[str, str, Any]:
    return (
        "POST",
        "/api/v1/sessions",
        {"agent_id": world.agent_id, "ticket_id": world.ticket, "kind": "exec", "reason": "grid"},
    )


async def _session(world: World, *, state: str = "awaiting_consent", origin: str = "hq") -> str:
    """A session on site A's agent, made directly (the grid's agent is not running)."""
    from server.store import tickets as ticket_store
    from server.store.models import RemoteSession

    async with world.hq.sessions.begin() as session:
        ticket = await ticket_store.find(session, world.ticket)
        assert ticket is not None
        rs = RemoteSession(
            agent_id=world.agent_id,
            site_id=world.site_a_id,
            ticket_id=ticket.id,
            kind="shell",
            max_minutes=30,
            state=state,
            origin=origin,
            requested_by=None,
            requested_by_name="someone",
            reason="grid",
        )
        session.add(rs)
        await session.flush()
        return rs.id


def on_session(
    method: str, suffix: str, body: Any = None, prefix: str = "/api/v1", **kw: Any
) -> Build:
    async def build(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
        return method, f"{prefix}/sessions/{await _session(world, **kw)}{suffix}", body

    return build


async def _change(world: World, state: str = "requested") -> str:
    """A change on site A's agent, made directly in a given state."""
    from server.store import tickets as ticket_store
    from server.store.models import Change

    async with world.hq.sessions.begin() as session:
        change = Change(
            number=await ticket_store.next_number(session, "change"),
            title="grid",
            risk="low",
            action="exec",
            params={"argv": ["true"]},
            tier="exec",
            target={"sites": [SITE_A]},
            agents=[{"id": world.agent_id, "site_id": world.site_a_id, "hostname": "grid"}],
            site_ids=[world.site_a_id],
            gate_seconds=0,
            state=state,
            requester_name="someone",
        )
        session.add(change)
        await session.flush()
        return f"CHG-{change.number}"


def on_change(
    method: str, suffix: str, body: Any = None, state: str = "requested", prefix: str = "/api/v1"
) -> Build:
    async def build(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
        return method, f"{prefix}/changes/{await _change(world, state)}{suffix}", body

    return build


def session_end_rule(role: str, scope: str) -> int:
    """Ending someone else's session: site technicians (consent) and admins only."""
    perms = BUILTIN_ROLES[role][1]
    visible = ticket_rule("tickets:read", 200)(role, scope)
    if visible != 200:
        return visible
    return 200 if {"sessions:consent", "users:admin"} & perms else 403


async def web_session(hq: HQHandle, user_id: str) -> tuple[str, str]:
    """A console session as the login form makes one (with TOTP just verified)."""
    from server.ops.login import open_web_session
    from server.store.models import User, utcnow

    async with hq.sessions.begin() as session:
        user = await session.get(User, user_id)
        assert user is not None
        made = await open_web_session(session, user, mfa_at=utcnow(), source="grid", max_hours=1)
    return made.cookie, made.csrf


def page(
    path: str,
    kind: str = "self",
    permission: str | None = None,
    *,
    ok: int = 200,
    method: str = "GET",
    form: dict[str, str] | None = None,
    expect: Callable[[str, str], int] | None = None,
) -> Cell:
    async def build(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
        return (
            method,
            path.format(agent=world.agent_id, site=world.site_a_id, ticket=world.ticket),
            form,
        )

    return Cell(kind, permission, build, ok=ok, expect=expect, console=True)


def holds_rule(permission: str, ok: int, otherwise: int) -> Callable[[str, str], int]:
    def rule(role: str, scope: str) -> int:
        return ok if permission in BUILTIN_ROLES[role][1] else otherwise

    return rule


async def _problem(world: World, link: bool = False) -> str:
    """A problem on site A (made by the admin), optionally tied to the grid's ticket."""
    body: dict[str, Any] = {"title": "grid", "site": SITE_A}
    if link:
        body["tickets"] = [world.ticket]
    async with world.hq.client(world.hq.admin_token) as api:
        made = await api.ok("POST", "/api/v1/problems", json=body)
    return str(made["number"])


def on_problem(
    method: str, suffix: str, body: Any = None, link: bool = False, prefix: str = "/api/v1"
) -> Build:
    async def build(world: World, who: tuple[str, str]) -> tuple[str, str, Any]:
        number = await _problem(world, link=link)
        return method, f"{prefix}/problems/{number}{suffix.format(ticket=world.ticket)}", body

    return build


CONSOLE: dict[tuple[str, str], Cell] = {
    ("POST", "/logout"): page("/logout", method="POST", ok=303),
    ("GET", "/totp"): page("/totp"),
    ("POST", "/totp"): page("/totp", method="POST", ok=409),
    ("POST", "/totp/confirm"): page("/totp/confirm", method="POST", form={"code": "0"}, ok=303),
    ("GET", "/profile"): page("/profile"),
    ("POST", "/profile/language"): page(
        "/profile/language", method="POST", form={"lang": "ko"}, ok=303
    ),
    ("POST", "/profile/tokens"): page(
        "/profile/tokens", method="POST", form={"name": "t", "ttl": "1h"}
    ),
    ("POST", "/profile/tokens/{token_id}/revoke"): page(
        "/profile/tokens/nope/revoke", method="POST", ok=404
    ),
    # The dashboard, or a start page elsewhere for people without agents:read.
    ("GET", "/"): page("/", expect=holds_rule("agents:read", 200, 303)),
    ("GET", "/events/dashboard"): page("/events/dashboard", "list", "agents:read"),
    ("GET", "/machines"): page("/machines", "list", "agents:read"),
    ("GET", "/events/machines"): page("/events/machines", "list", "agents:read"),
    ("GET", "/machines/{agent_id}"): page("/machines/{agent}", "object", "agents:read"),
    ("GET", "/tickets"): page("/tickets", "list", "tickets:read"),
    ("GET", "/help"): page("/help", "list", "tickets:write"),
    ("GET", "/tickets/{ticket_id}"): page(
        "/tickets/{ticket}", expect=ticket_rule("tickets:read", 200)
    ),
    ("GET", "/problems"): page("/problems", "list", "problems:read"),
    ("GET", "/problems/{problem_id}"): Cell(
        "object", "problems:read", on_problem("GET", "", prefix=""), console=True
    ),
    ("GET", "/jobs"): page("/jobs", "list", "diag:run"),
    ("GET", "/jobs/{job_id}"): page("/jobs/jb_grid", "object", "diag:run"),
    ("GET", "/changes"): page("/changes", "list", "changes:read"),
    ("GET", "/changes/{change_id}"): Cell(
        "object", "changes:read", on_change("GET", "", prefix=""), console=True
    ),
    ("GET", "/sessions"): page("/sessions", "list", "tickets:read"),
    ("GET", "/sessions/{session_id}"): Cell(
        "ticket",
        "tickets:read",
        on_session("GET", "", prefix=""),
        expect=ticket_rule("tickets:read", 200),
        console=True,
    ),
    ("GET", "/consents"): page("/consents", "list", "sessions:consent"),
    ("GET", "/events/consents"): page("/events/consents", "list", "sessions:consent"),
    ("GET", "/alert-rules"): page("/alert-rules", "list", "alerts:manage"),
    ("GET", "/kpis"): page("/kpis", "list", "kpi:read"),
    ("GET", "/reports"): page("/reports", "list", "kpi:read"),
    ("GET", "/audit"): page("/audit", "list", "audit:read"),
    ("GET", "/admin"): page("/admin", "list", "users:admin"),
    ("GET", "/admin/sites/{site_id}"): page("/admin/sites/{site}", "object", "users:admin"),
    ("GET", "/enroll"): page("/enroll", "list", "agents:enroll"),
    ("GET", "/kb"): page("/kb?q=grid", "list", "kb:read"),
    ("GET", "/kb/new"): page("/kb/new", "list", "kb:write"),
    ("GET", "/kb/{article_id}"): Cell(
        "object", "kb:read", on_article("GET", "", publish=True, prefix=""), console=True
    ),
    ("GET", "/kb/{article_id}/edit"): Cell(
        "object", "kb:write", on_article("GET", "/edit", prefix=""), console=True
    ),
}


GRID: dict[tuple[str, str], Cell] = {
    ("POST", "/api/v1/auth/logout"): Cell("self", None, _logout),
    ("GET", "/api/v1/me"): Cell("self", None, fixed("GET", "/api/v1/me")),
    ("POST", "/api/v1/me/totp"): Cell("self", None, fixed("POST", "/api/v1/me/totp"), ok=409),
    ("POST", "/api/v1/me/totp/confirm"): Cell(
        "self", None, fixed("POST", "/api/v1/me/totp/confirm", {"code": "000000"}), ok=409
    ),
    ("POST", "/api/v1/auth/step-up"): Cell(
        "self", None, fixed("POST", "/api/v1/auth/step-up", {"code": "000000"}), ok=422
    ),
    ("POST", "/api/v1/tokens"): Cell(
        "list", "users:admin", fixed("POST", "/api/v1/tokens", {"name": "t"}), ok=201
    ),
    ("GET", "/api/v1/tokens"): Cell("self", None, fixed("GET", "/api/v1/tokens")),
    ("DELETE", "/api/v1/tokens/{token_id}"): Cell("self", None, _own_token),
    ("GET", "/api/v1/users"): Cell("list", "users:admin", fixed("GET", "/api/v1/users")),
    ("POST", "/api/v1/users"): Cell("list", "users:admin", _new_user, ok=201),
    ("GET", "/api/v1/users/{user_id}"): Cell("object", "users:admin", _get_user),
    ("PATCH", "/api/v1/users/{user_id}"): Cell("global", "users:admin", _patch_user),
    ("DELETE", "/api/v1/users/{user_id}"): Cell("global", "users:admin", _delete_user),
    ("GET", "/api/v1/permissions"): Cell(
        "list", "users:admin", fixed("GET", "/api/v1/permissions")
    ),
    ("GET", "/api/v1/roles"): Cell("list", "users:admin", fixed("GET", "/api/v1/roles")),
    ("POST", "/api/v1/roles"): Cell("global", "users:admin", _new_role, ok=201),
    ("PATCH", "/api/v1/roles/{name}"): Cell("global", "users:admin", _patch_role),
    ("DELETE", "/api/v1/roles/{name}"): Cell("global", "users:admin", _delete_role),
    ("GET", "/api/v1/bindings"): Cell("list", "users:admin", fixed("GET", "/api/v1/bindings")),
    ("POST", "/api/v1/bindings"): Cell("object", "users:admin", _new_binding, ok=201),
    ("DELETE", "/api/v1/bindings/{binding_id}"): Cell("object", "users:admin", _delete_binding),
    ("GET", "/api/v1/sites"): Cell("list", "users:admin", fixed("GET", "/api/v1/sites")),
    ("POST", "/api/v1/sites"): Cell("global", "users:admin", _new_site, ok=201),
    ("GET", "/api/v1/sites/{site_id}"): Cell(
        "object", "users:admin", fixed("GET", "/api/v1/sites/{site}")
    ),
    ("PATCH", "/api/v1/sites/{site_id}"): Cell(
        "object", "users:admin", fixed("PATCH", "/api/v1/sites/{site}", {"description": "d"})
    ),
    ("DELETE", "/api/v1/sites/{site_id}"): Cell("global", "users:admin", _delete_site),
    ("GET", "/api/v1/audit"): Cell("list", "audit:read", fixed("GET", "/api/v1/audit")),
    ("GET", "/api/v1/audit/export"): Cell(
        "list", "audit:read", fixed("GET", "/api/v1/audit/export")
    ),
    ("GET", "/api/v1/audit/verify"): Cell(
        "global", "audit:read", fixed("GET", "/api/v1/audit/verify")
    ),
    ("POST", "/api/v1/enroll-tokens"): Cell(
        "object", "agents:enroll", fixed("POST", "/api/v1/enroll-tokens", {"site": SITE_A}), ok=201
    ),
    ("GET", "/api/v1/agents"): Cell("list", "agents:read", fixed("GET", "/api/v1/agents")),
    ("GET", "/api/v1/agents/{agent_id}"): Cell(
        "object", "agents:read", fixed("GET", "/api/v1/agents/{agent}")
    ),
    ("GET", "/api/v1/agents/{agent_id}/health"): Cell(
        "object", "health:read", fixed("GET", "/api/v1/agents/{agent}/health")
    ),
    ("POST", "/api/v1/agents/{agent_id}/revoke"): Cell("object", "agents:revoke", _fresh_agent),
    ("GET", "/api/v1/agents/{agent_id}/catalog"): Cell(
        "object", "agents:read", fixed("GET", "/api/v1/agents/{agent}/catalog")
    ),
    # The grid's agent never connected, so it offers nothing: allowed callers get 422.
    ("POST", "/api/v1/agents/{agent_id}/run"): Cell(
        "object",
        "diag:run",
        fixed("POST", "/api/v1/agents/{agent}/run", {"name": "system.summary"}),
        ok=422,
    ),
    ("GET", "/api/v1/agents/{agent_id}/results"): Cell(
        "object", "diag:run", fixed("GET", "/api/v1/agents/{agent}/results")
    ),
    ("GET", "/api/v1/results/{result_id}"): Cell(
        "object", "diag:run", fixed("GET", "/api/v1/results/rn_grid")
    ),
    ("POST", "/api/v1/jobs"): Cell(
        "object",
        "diag:run",
        fixed("POST", "/api/v1/jobs", {"target": {"site": SITE_A}, "name": "system.summary"}),
        ok=422,
    ),
    ("GET", "/api/v1/jobs"): Cell("list", "diag:run", fixed("GET", "/api/v1/jobs")),
    ("GET", "/api/v1/jobs/{job_id}"): Cell(
        "object", "diag:run", fixed("GET", "/api/v1/jobs/jb_grid")
    ),
    ("GET", "/api/v1/jobs/{job_id}/events"): Cell(
        "object", "diag:run", fixed("GET", "/api/v1/jobs/jb_grid/events")
    ),
    ("GET", "/api/v1/tickets"): Cell("list", "tickets:read", fixed("GET", "/api/v1/tickets")),
    ("POST", "/api/v1/tickets"): Cell(
        "object",
        "tickets:write",
        fixed("POST", "/api/v1/tickets", {"title": "t", "site": SITE_A}),
        ok=201,
    ),
    ("GET", "/api/v1/tickets/{ticket_id}"): Cell(
        "ticket", "tickets:read", on_ticket("GET", ""), expect=ticket_rule("tickets:read", 200)
    ),
    ("PATCH", "/api/v1/tickets/{ticket_id}"): Cell(
        "ticket",
        "tickets:write",
        on_ticket("PATCH", "", {"title": "renamed"}),
        expect=ticket_rule("tickets:write", 200),
    ),
    ("POST", "/api/v1/tickets/{ticket_id}/transition"): Cell(
        "ticket",
        "tickets:write",
        on_ticket("POST", "/transition", {"action": "ack"}, fresh=True),
        expect=ticket_rule("tickets:write", 200),
    ),
    ("POST", "/api/v1/tickets/{ticket_id}/comments"): Cell(
        "ticket",
        "tickets:write",
        on_ticket("POST", "/comments", {"body": "hi"}),
        expect=ticket_rule("tickets:write", 201),
    ),
    ("POST", "/api/v1/tickets/{ticket_id}/assign"): Cell(
        "ticket",
        "tickets:assign",
        on_ticket("POST", "/assign", {"assignee": None}),
        expect=ticket_rule("tickets:assign", 200),
    ),
    ("POST", "/api/v1/tickets/{ticket_id}/escalate"): Cell(
        "ticket",
        "tickets:assign",
        on_ticket("POST", "/escalate", {"reason": "r"}, fresh=True),
        expect=ticket_rule("tickets:assign", 200),
    ),
    ("POST", "/api/v1/tickets/{ticket_id}/agents"): Cell(
        "ticket",
        "tickets:write",
        on_ticket("POST", "/agents", {"agent_id": "{agent}"}),
        expect=ticket_rule("tickets:write", 200),
    ),
    ("POST", "/api/v1/tickets/{ticket_id}/results"): Cell(
        "ticket",
        "tickets:write",
        on_ticket("POST", "/results", {"result_id": "rn_grid"}),
        expect=ticket_rule("tickets:write", 200),
    ),
    ("POST", "/api/v1/tickets/{ticket_id}/rating"): Cell(
        "ticket",
        "tickets:write",
        on_ticket("POST", "/rating", {"score": 5}),
        expect=ticket_rule("tickets:write", 200, requester_only=True),
    ),
    ("GET", "/api/v1/alert-rules"): Cell(
        "list", "alerts:manage", fixed("GET", "/api/v1/alert-rules")
    ),
    ("POST", "/api/v1/alert-rules"): Cell(
        "object",
        "alerts:manage",
        fixed("POST", "/api/v1/alert-rules", {**RULE, "site": SITE_A}),
        ok=201,
    ),
    ("GET", "/api/v1/alert-rules/{rule_id}"): Cell("object", "alerts:manage", _rule("GET")),
    ("PATCH", "/api/v1/alert-rules/{rule_id}"): Cell(
        "object", "alerts:manage", _rule("PATCH", {"threshold": 99})
    ),
    ("DELETE", "/api/v1/alert-rules/{rule_id}"): Cell("object", "alerts:manage", _rule("DELETE")),
    ("GET", "/api/v1/alerts"): Cell("list", "agents:read", fixed("GET", "/api/v1/alerts")),
    ("GET", "/api/v1/sla-policies"): Cell(
        "list", "tickets:read", fixed("GET", "/api/v1/sla-policies")
    ),
    ("PUT", "/api/v1/sla-policies/{priority}"): Cell(
        "global",
        "users:admin",
        fixed(
            "PUT",
            "/api/v1/sla-policies/P4",
            {"ack_seconds": 28800, "response_seconds": 32400, "resolve_seconds": 162000},
        ),
    ),
    ("GET", "/api/v1/kpis"): Cell("list", "kpi:read", fixed("GET", "/api/v1/kpis")),
    # a site's review report: the site must be in the caller's kpi:read scope
    ("GET", "/api/v1/reports"): Cell(
        "object", "kpi:read", fixed("GET", f"/api/v1/reports?site={SITE_A}&period=2026-11")
    ),
    ("GET", "/api/v1/reports/html"): Cell(
        "object", "kpi:read", fixed("GET", f"/api/v1/reports/html?site={SITE_A}&period=2026-W47")
    ),
    ("GET", "/api/v1/reports/pdf"): Cell(
        "object", "kpi:read", fixed("GET", f"/api/v1/reports/pdf?site={SITE_A}&period=2026-11")
    ),
    ("GET", "/api/v1/webhooks"): Cell("global", "users:admin", fixed("GET", "/api/v1/webhooks")),
    ("POST", "/api/v1/webhooks"): Cell(
        "global",
        "users:admin",
        fixed("POST", "/api/v1/webhooks", {"url": "https://127.0.0.1:9/hook", "secret": "s" * 20}),
        ok=201,
    ),
    ("DELETE", "/api/v1/webhooks/{webhook_id}"): Cell("global", "users:admin", _webhook),
    ("POST", "/api/v1/sessions"): Cell(
        "object", "sessions:request", lambda w, who: _new_session(w), ok=201
    ),
    ("GET", "/api/v1/sessions"): Cell("list", "tickets:read", fixed("GET", "/api/v1/sessions")),
    ("GET", "/api/v1/sessions/{session_id}"): Cell(
        "ticket", "tickets:read", on_session("GET", ""), expect=ticket_rule("tickets:read", 200)
    ),
    ("POST", "/api/v1/sessions/{session_id}/consent"): Cell(
        "ticket",
        "sessions:consent",
        on_session("POST", "/consent", {"approve": False}),
        expect=ticket_rule("sessions:consent", 200),
    ),
    ("POST", "/api/v1/sessions/{session_id}/accept"): Cell(
        "ticket",
        "sessions:request",
        on_session("POST", "/accept", state="requested", origin="site"),
        expect=ticket_rule("sessions:request", 200),
    ),
    ("POST", "/api/v1/sessions/{session_id}/end"): Cell(
        "ticket",
        "tickets:read",
        on_session("POST", "/end", {"reason": "grid"}),
        expect=session_end_rule,
    ),
    # Only the session's engineer types in its terminal or moves its files.
    ("GET", "/api/v1/sessions/{session_id}/terminal"): Cell(
        "ticket",
        "tickets:read",
        on_session("GET", "/terminal", state="active"),
        expect=ticket_rule("tickets:read", 403),
    ),
    ("GET", "/api/v1/sessions/{session_id}/files"): Cell(
        "ticket",
        "files:read",
        on_session("GET", "/files?path=/var/log/x", state="active"),
        expect=ticket_rule("files:read", 403),
    ),
    ("PUT", "/api/v1/sessions/{session_id}/files"): Cell(
        "ticket",
        "files:write",
        on_session("PUT", "/files?path=/var/log/x", state="active"),
        expect=ticket_rule("files:write", 403),
    ),
    # No shell ran, so there is no recording: readers with audit:read get the 404 that says so.
    ("GET", "/api/v1/sessions/{session_id}/recording"): Cell(
        "ticket",
        "audit:read",
        on_session("GET", "/recording", state="ended"),
        expect=ticket_rule("audit:read", 404),
    ),
    ("GET", "/api/v1/problems"): Cell("list", "problems:read", fixed("GET", "/api/v1/problems")),
    ("POST", "/api/v1/problems"): Cell(
        "object",
        "problems:write",
        fixed("POST", "/api/v1/problems", {"title": "grid", "site": SITE_A}),
        ok=201,
    ),
    ("GET", "/api/v1/problems/{problem_id}"): Cell(
        "object", "problems:read", on_problem("GET", "")
    ),
    ("PATCH", "/api/v1/problems/{problem_id}"): Cell(
        "object", "problems:write", on_problem("PATCH", "", {"root_cause": "grid"})
    ),
    ("POST", "/api/v1/problems/{problem_id}/transition"): Cell(
        "object", "problems:write", on_problem("POST", "/transition", {"status": "investigating"})
    ),
    ("POST", "/api/v1/problems/{problem_id}/tickets"): Cell(
        "object", "problems:write", on_problem("POST", "/tickets", {"ticket": "{ticket}"})
    ),
    ("DELETE", "/api/v1/problems/{problem_id}/tickets/{ticket_id}"): Cell(
        "object", "problems:write", on_problem("DELETE", "/tickets/{ticket}", link=True)
    ),
    ("POST", "/api/v1/problems/{problem_id}/notes"): Cell(
        "object", "problems:write", on_problem("POST", "/notes", {"body": "grid"}), ok=201
    ),
    ("PUT", "/api/v1/agents/{agent_id}/tags"): Cell(
        "object", "agents:enroll", fixed("PUT", "/api/v1/agents/{agent}/tags", {"tags": ["till"]})
    ),
    ("GET", "/api/v1/changes"): Cell("list", "changes:read", fixed("GET", "/api/v1/changes")),
    ("POST", "/api/v1/changes"): Cell(
        "object",
        "changes:request",
        fixed(
            "POST",
            "/api/v1/changes",
            {
                "title": "grid",
                "risk": "low",
                "action": {"name": "exec", "params": {"argv": ["true"]}},
                "target": {"sites": [SITE_A]},
            },
        ),
        ok=201,
    ),
    ("GET", "/api/v1/changes/{change_id}"): Cell("object", "changes:read", on_change("GET", "")),
    ("POST", "/api/v1/changes/{change_id}/approve"): Cell(
        "object", "changes:approve", on_change("POST", "/approve", {})
    ),
    ("POST", "/api/v1/changes/{change_id}/reject"): Cell(
        "object", "changes:approve", on_change("POST", "/reject", {"comment": "no"})
    ),
    ("POST", "/api/v1/changes/{change_id}/start"): Cell(
        "object", "changes:request", on_change("POST", "/start", state="approved")
    ),
    ("POST", "/api/v1/changes/{change_id}/cancel"): Cell(
        "object", "changes:request", on_change("POST", "/cancel", {})
    ),
    ("POST", "/api/v1/changes/{change_id}/review"): Cell(
        "object", "changes:request", on_change("POST", "/review", {"outcome": "failed"}, "review")
    ),
    # Knowledge base: grid articles are `site` articles of site A.
    ("GET", "/api/v1/kb"): Cell("list", "kb:read", fixed("GET", "/api/v1/kb?q=grid")),
    ("POST", "/api/v1/kb"): Cell(
        "object",
        "kb:write",
        fixed("POST", "/api/v1/kb", {"title": "g", "visibility": "site", "site": SITE_A}),
        ok=201,
    ),
    ("GET", "/api/v1/kb/{article_id}"): Cell(
        "object", "kb:read", on_article("GET", "", publish=True)
    ),
    ("PATCH", "/api/v1/kb/{article_id}"): Cell(
        "object", "kb:write", on_article("PATCH", "", {"title": "x"})
    ),
    ("POST", "/api/v1/kb/{article_id}/transition"): Cell(
        "object", "kb:write", on_article("POST", "/transition", {"action": "submit"})
    ),
    ("GET", "/api/v1/kb/{article_id}/versions"): Cell(
        "object", "kb:write", on_article("GET", "/versions")
    ),
    ("GET", "/api/v1/kb/{article_id}/versions/{version}"): Cell(
        "object", "kb:write", on_article("GET", "/versions/1")
    ),
    ("POST", "/api/v1/kb/{article_id}/links"): Cell(
        "object",
        "kb:write",
        on_article("POST", "/links", {"kind": "machine", "target": "{agent}"}),
        ok=201,
    ),
    ("DELETE", "/api/v1/kb/{article_id}/links/{link_id}"): Cell("object", "kb:write", _kb_link),
    ("POST", "/api/v1/kb/{article_id}/vote"): Cell(
        "object", "kb:read", on_article("POST", "/vote", {"helped": True}, publish=True)
    ),
    ("POST", "/api/v1/kb/{article_id}/solved"): Cell(
        "object",
        "tickets:write",
        on_article("POST", "/solved", {"site": SITE_A, "text": "grid"}, publish=True),
        ok=201,
    ),
    ("POST", "/api/v1/tickets/{ticket_id}/kb"): Cell(
        "ticket", "kb:write", _resolved_ticket, expect=ticket_rule("kb:write", 201)
    ),
}


GRID.update(CONSOLE)


def expected(cell: Cell, role: str, scope: str) -> int:
    if cell.expect is not None:
        return cell.expect(role, scope)
    perms = BUILTIN_ROLES[role][1]
    if cell.kind == "self":
        return cell.ok
    assert cell.permission is not None
    if cell.permission not in perms:
        return 403
    if cell.kind == "list" or scope == "global":
        return cell.ok
    if cell.kind == "global":
        return 404
    return cell.ok if scope == "own" else 404


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("grid")
    hq = await start_hq(tmp / "hq", f"sqlite+aiosqlite:///{tmp / 'grid.db'}")
    agent = await start_agent(hq, tmp / "agent", site=SITE_A, run=False)
    await start_agent(hq, tmp / "agent-b", site=SITE_B, run=False)
    async with hq.client(hq.admin_token) as api:
        sites = await api.ok("GET", "/api/v1/sites")
    site_a = next(s["id"] for s in sites["items"] if s["name"] == SITE_A)
    w = World(hq, agent.agent_id, site_a, tmp=tmp)
    async with hq.sessions.begin() as session:
        from server.store.models import Job, JobItem, RunRecord, utcnow

        session.add(
            RunRecord(
                id="rn_grid",
                agent_id=agent.agent_id,
                site_id=site_a,
                name="system.summary",
                tier="diagnostic",
                params={},
                status="ok",
            )
        )
        session.add(
            Job(
                id="jb_grid",
                name="system.summary",
                tier="diagnostic",
                params={},
                target={"site": SITE_A},
                expires_at=utcnow(),
                finished_at=utcnow(),
            )
        )
        await session.flush()
        session.add(
            JobItem(
                job_id="jb_grid",
                agent_id=agent.agent_id,
                site_id=site_a,
                status="ok",
                result_id="rn_grid",
            )
        )
    w.ticket = await _ticket(w)
    for role in ROLES:
        for scope in SCOPES:
            site = {"own": SITE_A, "other": SITE_B, "global": None}[scope]
            user = await make_user(hq, role, site, totp=True)
            w.users[(role, scope)] = user
            # A token that lists its role's permissions explicitly.
            async with hq.sessions.begin() as session:
                from server.store.models import utcnow

                made = await accounts.make_api_token(
                    session,
                    username=user.username,
                    name="grid",
                    origin="login",
                    ttl=parse_duration("1h"),
                    actor=accounts_actor(),
                    permissions=sorted(BUILTIN_ROLES[role][1]),
                    mfa_at=utcnow(),
                )
            w.tokens[(role, scope)] = made.token
            w.web[(role, scope)] = await web_session(hq, user.id)
    yield w
    await hq.stop()


def test_every_route_is_in_the_grid_and_declared(tmp_path):
    """Every non-public route of the app has a grid entry, and none is stale."""
    from tests.support import ADMIN_PASSWORD  # noqa: F401 - the import checks the module loads

    routes = {(s.method, s.path) for s in route_specs(_app()) if not s.public}
    assert routes == set(GRID), f"missing: {routes - set(GRID)}; stale: {set(GRID) - routes}"


def _app() -> Any:
    return make_app()


CELLS = [
    (role, scope, method, path) for (method, path) in GRID for role in ROLES for scope in SCOPES
]


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    ("role", "scope", "method", "path"), CELLS, ids=[f"{r}-{s}-{m}-{p}" for r, s, m, p in CELLS]
)
async def test_grid(world: World, role: str, scope: str, method: str, path: str) -> None:
    """Role x scope x route answers the expected status."""
    cell = GRID[(method, path)]
    who = (role, scope)
    if cell.console:
        await _page_cell(world, cell, role, scope)
        return
    token = world.tokens[who]
    if path == "/api/v1/auth/logout":  # logging out revokes the token used: use a spare
        async with world.hq.sessions.begin() as session:
            made = await accounts.make_api_token(
                session,
                username=world.users[who].username,
                name="spare",
                origin="login",
                ttl=parse_duration("1h"),
                actor=accounts_actor(),
                permissions=sorted(BUILTIN_ROLES[role][1]),
            )
        token = made.token
    m, p, body = await cell.build(world, who)
    if isinstance(body, dict) and body.get("agent_id") == "{agent}":
        body = {**body, "agent_id": world.agent_id}
    if isinstance(body, dict) and body.get("ticket") == "{ticket}":
        body = {**body, "ticket": world.ticket}
    async with world.hq.client(token) as api:
        status, answer = await api.request(m, p, json=body)
    want = expected(cell, role, scope)
    assert status == want, f"{role}@{scope} {m} {p}: {status} {answer}"
    if status >= 400:
        assert set(answer) == {"error"} and {"code", "message"} <= set(answer["error"])


async def _page_cell(world: World, cell: Cell, role: str, scope: str) -> None:
    who = (role, scope)
    cookie, csrf = world.web[who]
    m, p, form = await cell.build(world, who)
    if p == "/logout":  # logging out ends the session used: use a spare one
        cookie, csrf = await web_session(world.hq, world.users[who].id)
    data = {**(form or {}), "csrf_token": csrf} if m != "GET" else None
    connector = aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(bytes.fromhex(world.hq.fingerprint)))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.request(
            m,
            world.hq.url + p,
            data=data,
            headers={"Cookie": f"fl_session={cookie}"},
            allow_redirects=False,
        ) as resp,
    ):
        status = resp.status
        kind = resp.headers.get("Content-Type", "")
    want = expected(cell, role, scope)
    assert status == want, f"{role}@{scope} {m} {p}: {status}"
    if status >= 400:
        assert kind.startswith("text/html"), f"{m} {p}: an error page, not {kind}"


@pytest.mark.asyncio(loop_scope="module")
async def test_console_refuses_form_posts_without_csrf(world: World) -> None:
    """A console form post without the session's CSRF token is refused (403 page)."""
    cookie, _ = world.web[("admin", "global")]
    connector = aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(bytes.fromhex(world.hq.fingerprint)))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.post(
            world.hq.url + "/profile/language",
            data={"lang": "ko", "csrf_token": "wrong"},
            headers={"Cookie": f"fl_session={cookie}"},
            allow_redirects=False,
        ) as resp,
    ):
        assert resp.status == 403 and "text/html" in resp.headers["Content-Type"]


@pytest.mark.asyncio(loop_scope="module")
async def test_console_pages_redirect_to_login_without_a_session(world: World) -> None:
    """A console page asked without a login redirects to /login; the API answers 401 JSON."""
    connector = aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(bytes.fromhex(world.hq.fingerprint)))
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.get(world.hq.url + "/machines", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/login?next=/machines"
        async with http.get(world.hq.url + "/api/v1/agents", allow_redirects=False) as resp:
            assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"


@pytest.mark.asyncio(loop_scope="module")
async def test_console_pages_carry_a_strict_content_security_policy(world: World) -> None:
    """Pages forbid inline script and framing; the session cookie stays
    HttpOnly, Secure and SameSite=Strict."""
    connector = aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(bytes.fromhex(world.hq.fingerprint)))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.get(world.hq.url + "/login") as resp,
    ):
        csp = resp.headers["Content-Security-Policy"]
        html = await resp.text()
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert "<script>" not in html and " on" + "click=" not in html
    assert 'name="csrf_token"' in html


@pytest.mark.asyncio(loop_scope="module")
async def test_times_without_an_offset_are_refused_and_console_dates_work(world: World) -> None:
    """The API answers 422 (not 500) to a time without a UTC offset; the console's
    date filters (KPIs, audit) are sent with one and work."""
    async with world.hq.client(world.hq.admin_token) as api:
        for path in (
            "/api/v1/kpis?from=2026-01-01T00:00:00",
            "/api/v1/audit?since=2026-01-01",
            f"/api/v1/agents/{world.agent_id}/health?until=2026-01-01T00:00:00",
        ):
            status, body = await api.get(path)
            assert status == 422 and body["error"]["code"] == "invalid", path
        for path in ("/kpis?from=2026-01-01&to=2026-12-31", "/audit?since=2026-01-01T10:00"):
            status, _ = await api.get(path)
            assert status == 200, path
