"""Logging in and out, TOTP enrollment and verification, API tokens: the use
cases behind the API's /auth routes and the console's log-in and profile
pages, with the session cookie they set."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field, field_validator

from server.auth import rbac, totp
from server.auth.crypto import seal
from server.auth.principal import Principal
from server.base.audit import Actor, Event
from server.ops import accounts
from server.ops.login import NewWebSession, check_login, open_web_session, totp_secret
from server.store import auditlog, people
from server.store.models import ApiToken, User, WebSession, utcnow
from server.views.accounts import TokenInfo, token_info
from server.web.authn import SESSION_COOKIE
from server.web.keys import CONFIG, DB
from shared.durations import parse_duration
from shared.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized


async def log_in(
    app: web.Application,
    *,
    username: str,
    password: str,
    code: str | None,
    source: str,
    token: bool,
) -> tuple[User, accounts.NewApiToken | None, NewWebSession | None]:
    """Check a login (the API's and the console's): a short-lived bearer token
    or a console session, audited either way; raises what the attempt earned."""
    made = web_session = None
    async with app[DB].begin() as session:
        outcome = await check_login(
            session,
            username=username,
            password=password,
            code=code,
            source=source,
            master_key=app[CONFIG].master_key,
        )
        user = outcome.user
        if outcome.error is None and user is not None:
            actor = Actor("user", user.id, user.username, source)
            if token:
                made = await accounts.make_api_token(
                    session,
                    username=user.username,
                    name="login",
                    origin="login",
                    actor=actor,
                    ttl=parse_duration(app[CONFIG].settings.login_token_ttl),
                    mfa_at=outcome.mfa_at,
                )
            else:
                web_session = await open_web_session(
                    session,
                    user,
                    mfa_at=outcome.mfa_at,
                    source=source,
                    max_hours=app[CONFIG].settings.session_max_hours,
                )
            await auditlog.append(
                session,
                actor,
                Event(
                    "auth.login",
                    target_type="user",
                    target_id=user.id,
                    details={
                        "method": "token" if token else "session",
                        "mfa": bool(outcome.mfa_at),
                    },
                ),
            )
    if outcome.error is not None or user is None:
        raise outcome.error or Unauthorized("invalid username or password")
    return user, made, web_session


def set_session_cookie(
    resp: web.StreamResponse, app: web.Application, web_session: NewWebSession
) -> None:
    resp.set_cookie(
        SESSION_COOKIE,
        web_session.cookie,
        httponly=True,
        secure=True,
        samesite="Strict",
        path="/",
        max_age=int(app[CONFIG].settings.session_max_hours * 3600),
    )


async def log_out(app: web.Application, who: Principal) -> None:
    """End the caller's console session, or revoke the bearer token it used."""
    async with app[DB].begin() as session:
        if who.session_key is not None:
            await people.delete_web_session(session, who.session_key)
        elif who.token_id is not None:
            token = await session.get(ApiToken, who.token_id)
            if token is not None and token.revoked_at is None:
                token.revoked_at = utcnow()
        await auditlog.append(
            session, who.actor(), Event("auth.logout", target_type="user", target_id=who.user_id)
        )


class TotpSetup(BaseModel):
    secret: str
    uri: str = Field(description="otpauth:// URI for an authenticator app (QR code)")


async def begin_totp(app: web.Application, who: Principal) -> TotpSetup:
    """A new TOTP secret for the caller (not on until confirmed with a code)."""
    secret = totp.new_secret()
    async with app[DB].begin() as session:
        user = await session.get(User, who.user_id)
        if user is None:
            raise Unauthorized("user no longer exists")
        if user.totp_enabled:
            raise Conflict("two-factor authentication is already on; an admin can reset it")
        user.totp_secret_enc = seal(
            app[CONFIG].master_key, secret.encode(), f"totp:{user.id}".encode()
        )
        user.totp_last_step = None
        await auditlog.append(
            session, who.actor(), Event("user.totp_start", target_type="user", target_id=user.id)
        )
    return TotpSetup(secret=secret, uri=totp.provisioning_uri(secret, who.username))


async def verify_code(app: web.Application, who: Principal, code: str, *, enabling: bool) -> None:
    """Check a TOTP code for the caller and mark this session/token as
    freshly verified (step-up). Wrong codes are audited."""
    async with app[DB].begin() as session:
        user = await session.get(User, who.user_id)
        if user is None:
            raise Unauthorized("user no longer exists")
        secret = totp_secret(app[CONFIG].master_key, user)
        if secret is None or (user.totp_enabled == enabling):
            raise Conflict(
                "two-factor authentication is already on"
                if enabling
                else "two-factor authentication is not set up; POST /api/v1/me/totp first"
            )
        step = totp.matching_step(secret, code, user.totp_last_step)
        action = "user.totp_enable" if enabling else "auth.step_up"
        if step is None:
            await auditlog.append(
                session,
                who.actor(),
                Event(action, outcome="failure", target_type="user", target_id=user.id),
            )
    if step is None:
        raise Invalid("invalid TOTP code", fields={"code": "invalid or already used"})
    now = utcnow()
    async with app[DB].begin() as session:
        user = await session.get(User, who.user_id)
        assert user is not None
        user.totp_last_step = step
        if enabling:
            user.totp_enabled = True
        if who.session_key is not None:
            ws = await session.get(WebSession, who.session_key)
            if ws is not None:
                ws.mfa_at = now
        elif who.token_id is not None:
            token = await session.get(ApiToken, who.token_id)
            if token is not None:
                token.mfa_at = now
        await auditlog.append(
            session, who.actor(), Event(action, target_type="user", target_id=user.id)
        )


class TokenRequest(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    ttl: str = Field("30d", description="e.g. 1h, 30d; at most the max_token_ttl setting")
    permissions: list[str] | None = Field(
        None, description="narrow the token to these permissions (default: all of the owner's)"
    )

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: str) -> str:
        parse_duration(value)
        return value


class NewToken(TokenInfo):
    token: str = Field(description="the secret, shown only now")


async def make_token(app: web.Application, who: Principal, req: TokenRequest) -> NewToken:
    """An API token for the caller, never wider than the caller's rights."""
    ttl = parse_duration(req.ttl)
    if ttl > parse_duration(app[CONFIG].settings.max_token_ttl):
        raise Invalid(
            "ttl too long", fields={"ttl": f"at most {app[CONFIG].settings.max_token_ttl}"}
        )
    if req.permissions is not None:
        unknown = rbac.unknown_permissions(req.permissions)
        if unknown:
            raise Invalid("unknown permissions", fields={"permissions": ", ".join(unknown)})
        missing = [p for p in req.permissions if not who.holds(p)]
        if missing:
            raise Forbidden(
                "a token cannot hold permissions its owner lacks",
                fields={"permissions": ", ".join(missing)},
            )
    if who.via == "token" and not who.explicitly("users:admin"):
        raise Forbidden("a token can make tokens only if it holds users:admin explicitly")
    async with app[DB].begin() as session:
        made = await accounts.make_api_token(
            session,
            username=who.username,
            name=req.name,
            ttl=ttl,
            origin="api",
            actor=who.actor(),
            permissions=sorted(set(req.permissions)) if req.permissions is not None else None,
        )
        row = await session.get(ApiToken, made.token_id)
        assert row is not None
        info = token_info(row)
    return NewToken(**info.model_dump(), token=made.token)


async def revoke(app: web.Application, who: Principal, token_id: str) -> TokenInfo:
    """Revoke a token: the caller's own, or anyone's with users:admin."""
    async with app[DB].begin() as session:
        token = await session.get(ApiToken, token_id)
        if token is None:
            raise NotFound("not found")
        if token.user_id != who.user_id:
            who.require("users:admin", None)
        if token.revoked_at is None:
            token.revoked_at = utcnow()
            await auditlog.append(
                session,
                who.actor(),
                Event(
                    "token.revoke",
                    target_type="token",
                    target_id=token.id,
                    details={"user_id": token.user_id, "name": token.name},
                ),
            )
        return token_info(token)
