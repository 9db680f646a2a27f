"""Who is calling: a bearer token or a console session cookie, resolved to a
Principal with its rights.

- Bearer tokens: `Authorization: Bearer flk_...`; stored as SHA-256 hashes;
  rights are the owner's current rights narrowed to the token's list.
- Console sessions: cookie `fl_session` (HttpOnly, Secure, SameSite=Strict),
  server-side, with idle and absolute expiry. Writes made with the cookie
  must carry the session's CSRF token in `X-CSRF-Token` (or a form field
  `csrf_token`).
- 2FA: where the setting requires it, a user holding a sensitive permission
  without TOTP may only enroll TOTP (and log out) until it is on. The
  break-glass token from `fieldlink admin api-token` is exempt.
"""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from server.auth import rbac
from server.auth.principal import Principal
from server.auth.secrets import digest, same
from server.store import people
from server.store.models import User, utcnow
from server.web.keys import CONFIG, DB
from shared.errors import Forbidden, Unauthorized

SESSION_COOKIE = "fl_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def source_of(request: web.Request) -> str:
    return request.remote or "?"


def needs_2fa(request: web.Request, user: User, rights: rbac.Rights, origin: str) -> bool:
    if not request.app[CONFIG].settings.require_2fa or user.totp_enabled or origin == "break-glass":
        return False
    held = {perm for grant in rights.grants for perm in grant.permissions}
    return bool(held & rbac.SENSITIVE)


async def from_bearer(request: web.Request, token: str) -> Principal:
    app = request.app
    async with app[DB].begin() as session:
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
        origin=api_token.origin,
        mfa_at=api_token.mfa_at,
        totp_enabled=user.totp_enabled,
        needs_2fa=needs_2fa(request, user, rights, api_token.origin),
    )


async def from_cookie(request: web.Request, cookie: str) -> Principal:
    app = request.app
    key = digest(cookie)
    expired = Unauthorized("session expired; log in again", code="session_expired")
    async with app[DB].begin() as session:
        found = await people.web_session(session, key)
        if found is None:
            raise expired
        ws, user = found
        now = utcnow()
        idle = timedelta(minutes=app[CONFIG].settings.session_idle_minutes)
        over = ws.expires_at <= now or now - ws.last_seen_at > idle or user.disabled
        if over:
            await people.delete_web_session(session, key)  # committed, then refused
        else:
            if (now - ws.last_seen_at).total_seconds() > 30:
                ws.last_seen_at = now
            rights = await people.rights_for(session, user.id)
    if over:
        raise expired
    return Principal(
        user_id=user.id,
        username=user.username,
        rights=rights,
        via="session",
        token_id=None,
        source=source_of(request),
        origin="session",
        mfa_at=ws.mfa_at,
        session_key=key,
        csrf=ws.csrf_token,
        totp_enabled=user.totp_enabled,
        needs_2fa=needs_2fa(request, user, rights, "session"),
    )


def check_csrf(request: web.Request, who: Principal, form_token: str | None = None) -> None:
    if who.via != "session" or request.method in SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER) or form_token or ""
    if not who.csrf or not sent or not same(sent, who.csrf):
        raise Forbidden("missing or wrong CSRF token", code="csrf_failed")


async def authenticate(request: web.Request) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return await from_bearer(request, value.strip())
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        return await from_cookie(request, cookie)
    raise Unauthorized("authentication required: log in or send a bearer token")


PRINCIPAL_KEY = web.RequestKey("principal", Principal)


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL_KEY]
