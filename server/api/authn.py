"""Who is calling: resolve a bearer token (or, from the access-control
issue on, a console session cookie) to a Principal with its rights."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from aiohttp import web

from server.audit import Actor
from server.auth import rbac
from server.auth.secrets import digest
from server.context import services
from server.store import people
from server.store.models import utcnow
from shared.errors import NotFound, Unauthorized


@dataclass(frozen=True)
class Principal:
    user_id: str
    username: str
    rights: rbac.Rights
    via: str  # token | session
    token_id: str | None
    source: str
    mfa_at: datetime | None = None
    session_key: str | None = None
    csrf: str | None = None

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


def source_of(request: web.Request) -> str:
    return request.remote or "?"


async def from_bearer(request: web.Request, token: str) -> Principal:
    svc = services(request)
    async with svc.sessions.begin() as session:
        found = await people.token_by_hash(session, digest(token))
        if found is None:
            raise Unauthorized("invalid or expired token")
        api_token, user = found
        now = utcnow()
        if api_token.revoked_at is not None or api_token.expires_at <= now or user.disabled:
            raise Unauthorized("invalid or expired token")
        rights = await people.rights_for(session, user.id, api_token.permissions)
        if api_token.last_used_at is None or (now - api_token.last_used_at).total_seconds() > 60:
            await people.touch_token(session, api_token.id)
    return Principal(
        user_id=user.id,
        username=user.username,
        rights=rights,
        via="token",
        token_id=api_token.id,
        source=source_of(request),
        mfa_at=api_token.mfa_at,
    )


async def authenticate(request: web.Request) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return await from_bearer(request, value.strip())
    raise Unauthorized("authentication required: send a bearer token")


PRINCIPAL_KEY = web.RequestKey("principal", Principal)


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL_KEY]
