"""The pure decisions of access control: RBAC, throttling, TOTP steps, the
audit hash chain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from server.auth import rbac, throttle, totp
from server.base.audit import GENESIS, Actor, Event, entry_fields, entry_hash, verify

SITE_A, SITE_B = "st_a", "st_b"


def rights(*grants: tuple[str, str | None], token: set[str] | None = None) -> rbac.Rights:
    return rbac.Rights(
        tuple(rbac.Grant(role, rbac.BUILTIN_ROLES[role][1], site) for role, site in grants),
        frozenset(token) if token is not None else None,
    )


def test_builtin_roles_match_the_documented_lists():
    """Built-in roles hold exactly the permissions the README documents."""
    assert rbac.BUILTIN_ROLES["admin"][1] == frozenset(rbac.PERMISSIONS)
    assert "shell:open" not in rbac.BUILTIN_ROLES["site_tech"][1]
    assert "sessions:consent" in rbac.BUILTIN_ROLES["site_tech"][1]
    assert rbac.BUILTIN_ROLES["site_staff"][1] == {
        "tickets:read",
        "tickets:write",
        "kb:read",
        "changes:read",
    }
    # changes are approved by others than the engineers who request them
    assert "changes:approve" not in rbac.BUILTIN_ROLES["hq_engineer"][1]
    assert "kb:publish" not in rbac.BUILTIN_ROLES["hq_engineer"][1]
    assert not {p for p in rbac.BUILTIN_ROLES["auditor"][1] if p.endswith((":write", ":run"))}
    assert "users:admin" not in rbac.BUILTIN_ROLES["hq_engineer"][1]


@pytest.mark.parametrize(
    ("grants", "perm", "site", "expected"),
    [
        ((("site_tech", SITE_A),), "diag:run", SITE_A, True),
        ((("site_tech", SITE_A),), "diag:run", SITE_B, False),
        ((("site_tech", SITE_A),), "exec:run", SITE_A, False),
        ((("site_tech", SITE_A),), "diag:run", None, False),
        ((("hq_engineer", None),), "shell:open", SITE_B, True),
        ((("hq_engineer", None),), "users:admin", None, False),
        ((("auditor", None), ("site_tech", SITE_B)), "diag:run", SITE_B, True),
        ((("auditor", None), ("site_tech", SITE_B)), "diag:run", SITE_A, False),
        ((), "agents:read", SITE_A, False),
    ],
)
def test_allowed_needs_permission_and_covering_scope(grants, perm, site, expected):
    """Allowed only when a binding's role holds the permission and its scope covers the site."""
    assert rbac.allowed(rights(*grants), perm, site) is expected


def test_token_narrows_and_never_widens():
    """A token's list narrows its owner's rights; listing more grants nothing."""
    r = rights(("site_tech", SITE_A), token={"agents:read", "shell:open"})
    assert rbac.allowed(r, "agents:read", SITE_A)
    assert not rbac.allowed(r, "diag:run", SITE_A)  # owner has it, token does not
    assert not rbac.allowed(r, "shell:open", SITE_A)  # token lists it, owner lacks it


def test_scope_helpers():
    """sites_with and effective report scopes; a global grant means every site."""
    r = rights(("site_tech", SITE_A), ("auditor", None))
    assert rbac.sites_with(r, "diag:run") == frozenset({SITE_A})
    assert rbac.sites_with(r, "agents:read") is None
    assert rbac.sites_with(r, "shell:open") == frozenset()
    eff = rbac.effective(r)
    assert "audit:read" in eff["global"] and "diag:run" in eff[SITE_A]


def test_nobody_grants_beyond_own_rights():
    """can_grant refuses permissions or scopes the granter does not hold."""
    tech = rights(("site_tech", SITE_A))
    assert rbac.can_grant(tech, ["diag:run"], SITE_A)
    assert not rbac.can_grant(tech, ["diag:run"], SITE_B)
    assert not rbac.can_grant(tech, rbac.BUILTIN_ROLES["admin"][1], SITE_A)
    assert rbac.can_grant(rights(("admin", None)), rbac.PERMISSIONS, None)


NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def test_throttle_grows_then_locks_then_forgets():
    """Delays grow after the free failures, a lock follows, quiet time resets."""
    limits = throttle.USER_LIMITS
    state = throttle.State(0, None, None)
    for _ in range(limits.free_failures):
        state = throttle.after_failure(state, limits, NOW)
    assert throttle.retry_after(state, limits, NOW) == 1.0
    state = throttle.after_failure(state, limits, NOW)
    assert throttle.retry_after(state, limits, NOW) == 2.0
    for _ in range(limits.lock_after):
        state = throttle.after_failure(state, limits, NOW)
    assert state.locked_until == NOW + limits.lock_for
    assert throttle.retry_after(state, limits, NOW + timedelta(minutes=1)) > 800
    later = NOW + limits.lock_for + limits.forget_after + timedelta(seconds=1)
    assert throttle.retry_after(state, limits, later) == 0.0
    assert throttle.after_failure(state, limits, later).failures == 1


def test_totp_codes_are_single_use_and_drift_tolerant():
    """A code is accepted once, within one step of drift, never an older step."""
    secret = totp.new_secret()
    t = 1_800_000_000.0
    code = totp.code_for(secret, t)
    step = totp.matching_step(secret, code, None, now=t)
    assert step is not None
    assert totp.matching_step(secret, code, step, now=t) is None  # replay
    assert totp.matching_step(secret, totp.code_for(secret, t - 30), None, now=t) == step - 1
    assert totp.matching_step(secret, totp.code_for(secret, t - 90), None, now=t) is None
    assert totp.matching_step(secret, "12345", None, now=t) is None
    assert totp.provisioning_uri(secret, "ann").startswith("otpauth://totp/Fieldlink:ann")


def _chain(n: int) -> list[tuple[dict, str]]:
    rows, prev = [], GENESIS
    for seq in range(1, n + 1):
        fields = entry_fields(
            seq,
            NOW,
            Actor("user", "u1", "ann", "1.2.3.4"),
            Event("auth.login", details={"n": seq}),
            prev,
        )
        digest = entry_hash(fields)
        rows.append((fields, digest))
        prev = digest
    return rows


def test_audit_chain_verifies_and_catches_edits_gaps_and_reordering():
    """An intact chain verifies; an edit, a deletion or a swap is named."""
    rows = _chain(5)
    assert verify(rows) is None
    edited = [(dict(f), h) for f, h in rows]
    edited[2][0]["details"] = {"n": 99}
    assert verify(edited).seq == 3
    assert verify(rows[:2] + rows[3:]).seq == 3
    assert verify(rows[1:]).seq == 1
    assert verify([rows[1], rows[0], *rows[2:]]) is not None
