"""Who is calling and what they may do: a user (through a token or a console
session) with its rights. Pure: the web layer builds one per request, the
engine and operations take one to decide and to name the actor."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from server.auth import rbac
from server.base.audit import Actor
from shared.errors import NotFound


@dataclass(frozen=True)
class Principal:
    user_id: str
    username: str
    rights: rbac.Rights
    via: str  # token | session
    token_id: str | None
    source: str
    origin: str = "session"  # token origin: api | login | break-glass; or "session"
    mfa_at: datetime | None = None
    session_key: str | None = None
    csrf: str | None = None
    totp_enabled: bool = False
    needs_2fa: bool = False

    def actor(self) -> Actor:
        if self.via == "token":
            return Actor("token", self.token_id, self.username, self.source)
        return Actor("user", self.user_id, self.username, self.source)

    def allowed(self, permission: str, site_id: str | None) -> bool:
        return rbac.allowed(self.rights, permission, site_id)

    def require(self, permission: str, site_id: str | None) -> None:
        """Objects out of scope look exactly like objects that do not exist."""
        if not rbac.allowed(self.rights, permission, site_id):
            raise NotFound("not found")

    def sites(self, permission: str) -> frozenset[str] | None:
        return rbac.sites_with(self.rights, permission)

    def holds(self, permission: str) -> bool:
        return rbac.holds_anywhere(self.rights, permission)

    def explicitly(self, permission: str) -> bool:
        """For tokens: the permission is listed on the token itself (or it is
        the break-glass token). Sessions hold what they hold."""
        if self.via != "token" or self.origin == "break-glass":
            return self.holds(permission)
        tp = self.rights.token_permissions
        return tp is not None and permission in tp and self.holds(permission)

    def sees_all_tickets(self, site_id: str) -> bool:
        """Every ticket of a site needs tickets:read with agents:read there; with
        tickets:read alone (site staff) a user sees only the requests it opened."""
        return self.allowed("tickets:read", site_id) and self.allowed("agents:read", site_id)

    def can_read_ticket(self, site_id: str, requester_id: str | None) -> bool:
        if self.sees_all_tickets(site_id):
            return True
        return self.allowed("tickets:read", site_id) and requester_id == self.user_id

    def works_tickets(self, site_id: str) -> bool:
        """Changing a ticket's state, assignment or links (not just commenting)."""
        return self.allowed("tickets:write", site_id) and self.sees_all_tickets(site_id)

    def mfa_within(self, minutes: float) -> bool:
        return self.mfa_at is not None and datetime.now(UTC) - self.mfa_at <= timedelta(
            minutes=minutes
        )
