"""Role-based access control: the fixed permission list, the built-in roles
and the one pure function that decides.

A binding gives a user a role on a scope: global (site None) or one site.
A request is allowed only when some binding's role holds the permission and
its scope covers the target's site. Deny by default. An API token narrows its
owner's rights to the permissions it lists; it never widens them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

PERMISSIONS: dict[str, str] = {
    "agents:read": "see agents, their facts and status",
    "agents:enroll": "make enrollment tokens for a site",
    "agents:revoke": "revoke an agent",
    "health:read": "read health reports",
    "diag:run": "run read-only diagnostics",
    "action:run": "run state-changing actions",
    "exec:run": "run plain commands",
    "shell:open": "open interactive shells",
    "files:read": "download files from a machine",
    "files:write": "upload files to a machine",
    "tickets:read": "read tickets",
    "tickets:write": "open, comment on and work tickets",
    "tickets:assign": "assign and escalate tickets",
    "sessions:request": "request remote sessions",
    "sessions:consent": "approve or deny remote sessions for a site",
    "alerts:manage": "edit alert rules",
    "kb:read": "read and search knowledge-base articles visible to a scope, and vote on them",
    "kb:write": "write knowledge-base articles and submit them for review",
    "kb:publish": "publish, return, archive and restore knowledge-base articles",
    "changes:read": "see changes (planned work on machines) touching a site",
    "changes:request": "request changes and run approved ones",
    "changes:approve": "approve or reject changes (not one's own)",
    "problems:read": "read problem records and proposals",
    "problems:write": "open, work, link and accept or dismiss problem records",
    "users:admin": "manage users, roles, bindings and sites",
    "audit:read": "read and export the audit trail",
    "kpi:read": "read KPI reports",
}

# Permissions that touch a machine or the people: holding one requires 2FA.
SENSITIVE = frozenset({"shell:open", "exec:run", "action:run", "users:admin"})

BUILTIN_ROLES: dict[str, tuple[str, frozenset[str]]] = {
    "admin": ("every permission", frozenset(PERMISSIONS)),
    "hq_engineer": (
        "HQ IT engineer: works tickets, diagnoses and acts on machines remotely",
        frozenset(
            {
                "agents:read",
                "agents:enroll",
                "health:read",
                "diag:run",
                "action:run",
                "exec:run",
                "shell:open",
                "files:read",
                "files:write",
                "tickets:read",
                "tickets:write",
                "tickets:assign",
                "sessions:request",
                "alerts:manage",
                "kb:read",
                "kb:write",
                "problems:read",
                "problems:write",
                "kpi:read",
                "changes:read",
                "changes:request",
            }
        ),
    ),
    "site_tech": (
        "site IT technician: tier 1 for its site, safe diagnostics, consents to sessions",
        frozenset(
            {
                "agents:read",
                "agents:enroll",
                "health:read",
                "diag:run",
                "tickets:read",
                "tickets:write",
                "tickets:assign",
                "sessions:consent",
                "problems:read",
                "problems:write",
                "kb:read",
                "kb:write",
                "kpi:read",
                "changes:read",
            }
        ),
    ),
    "site_staff": (
        "site staff: opens, comments on and rates its own requests",
        frozenset({"tickets:read", "tickets:write", "kb:read", "changes:read"}),
    ),
    "auditor": (
        "auditor: reads the audit trail, KPIs, agents, health, tickets, the knowledge "
        "base, problems and changes; changes nothing",
        frozenset(
            {
                "audit:read",
                "kpi:read",
                "agents:read",
                "health:read",
                "tickets:read",
                "kb:read",
                "changes:read",
                "problems:read",
            }
        ),
    ),
}


@dataclass(frozen=True)
class Grant:
    """One binding, resolved: the role's permissions on a scope (None = global)."""

    role: str
    permissions: frozenset[str]
    site_id: str | None


@dataclass(frozen=True)
class Rights:
    """Everything one caller may do: the owner's grants, narrowed by a token."""

    grants: tuple[Grant, ...]
    token_permissions: frozenset[str] | None = None

    def _usable(self, permission: str) -> bool:
        return self.token_permissions is None or permission in self.token_permissions


def allowed(rights: Rights, permission: str, site_id: str | None) -> bool:
    """The decision. `site_id=None` asks for the permission globally
    (objects that belong to no site): only a global grant covers that."""
    if not rights._usable(permission):
        return False
    for grant in rights.grants:
        if permission not in grant.permissions:
            continue
        if grant.site_id is None or grant.site_id == site_id:
            return True
    return False


def holds_anywhere(rights: Rights, permission: str) -> bool:
    """True if the permission is held on at least one scope."""
    return rights._usable(permission) and any(permission in g.permissions for g in rights.grants)


def sites_with(rights: Rights, permission: str) -> frozenset[str] | None:
    """The sites where `permission` holds; None means every site (a global grant)."""
    if not rights._usable(permission):
        return frozenset()
    sites: set[str] = set()
    for grant in rights.grants:
        if permission in grant.permissions:
            if grant.site_id is None:
                return None
            sites.add(grant.site_id)
    return frozenset(sites)


def effective(rights: Rights) -> dict[str, frozenset[str]]:
    """Permissions per scope (`"global"` or a site id), after token narrowing."""
    out: dict[str, set[str]] = {}
    for grant in rights.grants:
        perms = grant.permissions
        if rights.token_permissions is not None:
            perms = perms & rights.token_permissions
        out.setdefault(grant.site_id or "global", set()).update(perms)
    return {scope: frozenset(perms) for scope, perms in out.items()}


def can_grant(rights: Rights, permissions: Iterable[str], site_id: str | None) -> bool:
    """Nobody can hand out a permission on a scope they do not hold it on."""
    return all(allowed(rights, perm, site_id) for perm in permissions)


def unknown_permissions(names: Iterable[str]) -> list[str]:
    return sorted(set(names) - PERMISSIONS.keys())
