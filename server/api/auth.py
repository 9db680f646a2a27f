"""Logging in and out, who am I, TOTP enrollment, step-up, API tokens."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web
from pydantic import BaseModel, Field, field_validator
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth import rbac, totp
from server.auth.crypto import seal
from server.auth.principal import Principal
from server.base.audit import Actor, Event
from server.ops import accounts
from server.ops.login import NewWebSession, check_login, open_web_session, totp_secret
from server.store import auditlog, people
from server.store.models import ApiToken, Binding, User, WebSession, utcnow
from server.web.authn import SESSION_COOKIE, principal, source_of
from server.web.keys import CONFIG, DB
from server.web.routing import SELF, ApiRouter, body, json_response, query
from shared.durations import parse_duration
from shared.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized

routes = ApiRouter("auth")


class LoginRequest(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)
    totp: str | None = Field(None, max_length=12)
    token: bool = Field(False, description="answer with a short-lived bearer token instead")


class UserInfo(BaseModel):
    id: str
    username: str
    display_name: str
    email: str
    totp_enabled: bool


class LoginResponse(BaseModel):
    user: UserInfo | None = None
    csrf_token: str | None = None
    token: str | None = None
    expires_at: datetime


def user_info(user: User) -> UserInfo:
    return UserInfo(
        id=user.id,
        username=user.username,
        display_name=user.display_name,
        email=user.email,
        totp_enabled=user.totp_enabled,
    )


@routes.route(
    "POST",
    "/api/v1/auth/login",
    errors=(401, 429),
    public=True,
    body=LoginRequest,
    response=LoginResponse,
    summary="Log in with password (and TOTP): a console session cookie, or with "
    '`"token": true` a short-lived bearer token',
)
async def login(request: web.Request) -> web.Response:
    app = request.app
    req = body(request, LoginRequest)
    user, made, web_session = await log_in(
        app,
        username=req.username,
        password=req.password,
        code=req.totp,
        source=source_of(request),
        token=req.token,
    )
    if made is not None:
        return json_response(LoginResponse(token=made.token, expires_at=made.expires_at))
    assert web_session is not None
    resp = json_response(
        LoginResponse(
            user=user_info(user), csrf_token=web_session.csrf, expires_at=web_session.expires_at
        )
    )
    set_session_cookie(resp, app, web_session)
    return resp


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


class Empty(BaseModel):
    ok: bool = True


@routes.route(
    "POST",
    "/api/v1/auth/logout",
    permission=SELF,
    response=Empty,
    before_2fa=True,
    summary="End this console session, or revoke the bearer token used",
)
async def logout(request: web.Request) -> web.Response:
    await log_out(request.app, principal(request))
    resp = json_response(Empty())
    resp.del_cookie(SESSION_COOKIE, path="/")
    return resp


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


class BindingInfo(BaseModel):
    id: str
    role: str
    scope: str = Field(description='"global" or "site:<name>"')
    site_id: str | None


class MeResponse(BaseModel):
    user: UserInfo
    via: str
    bindings: list[BindingInfo]
    permissions: dict[str, list[str]] = Field(
        description='effective permissions per scope: "global" or "site:<name>"'
    )
    csrf_token: str | None
    must_enroll_2fa: bool
    mfa_recent: bool


async def binding_infos(session: AsyncSession, bindings: list[Binding]) -> list[BindingInfo]:
    names = await people.site_names(session, {b.site_id for b in bindings if b.site_id})
    return [
        BindingInfo(
            id=b.id,
            role=b.role,
            site_id=b.site_id,
            scope=f"site:{names.get(b.site_id, b.site_id)}" if b.site_id else "global",
        )
        for b in bindings
    ]


@routes.route(
    "GET",
    "/api/v1/me",
    permission=SELF,
    response=MeResponse,
    before_2fa=True,
    summary="The caller: user, bindings and effective permissions per site",
)
async def me(request: web.Request) -> web.Response:
    app = request.app
    who = principal(request)
    async with app[DB]() as session:
        user = await session.get(User, who.user_id)
        if user is None:
            raise Unauthorized("user no longer exists")
        bindings = await binding_infos(session, await people.bindings_of(session, [user.id]))
        eff = rbac.effective(who.rights)
        names = await people.site_names(session, {s for s in eff if s != "global"})
    perms = {
        ("global" if scope == "global" else f"site:{names.get(scope, scope)}"): sorted(p)
        for scope, p in eff.items()
    }
    return json_response(
        MeResponse(
            user=user_info(user),
            via=who.via,
            bindings=bindings,
            permissions=perms,
            csrf_token=who.csrf,
            must_enroll_2fa=who.needs_2fa,
            mfa_recent=who.mfa_within(app[CONFIG].settings.step_up_minutes),
        )
    )


class TotpSetup(BaseModel):
    secret: str
    uri: str = Field(description="otpauth:// URI for an authenticator app (QR code)")


@routes.route(
    "POST",
    "/api/v1/me/totp",
    errors=(409,),
    permission=SELF,
    response=TotpSetup,
    before_2fa=True,
    summary="Start TOTP enrollment: a new secret and its otpauth URI",
)
async def totp_start(request: web.Request) -> web.Response:
    return json_response(await begin_totp(request.app, principal(request)))


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


class CodeRequest(BaseModel):
    code: str = Field(min_length=6, max_length=12)


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


@routes.route(
    "POST",
    "/api/v1/me/totp/confirm",
    errors=(409,),
    permission=SELF,
    body=CodeRequest,
    response=Empty,
    before_2fa=True,
    summary="Confirm TOTP enrollment with a current code; from then on login needs it",
)
async def totp_confirm(request: web.Request) -> web.Response:
    await verify_code(
        request.app, principal(request), body(request, CodeRequest).code, enabling=True
    )
    return json_response(Empty())


@routes.route(
    "POST",
    "/api/v1/auth/step-up",
    errors=(409,),
    permission=SELF,
    body=CodeRequest,
    response=Empty,
    summary="Verify a fresh TOTP code for this session or token (needed to open "
    "sessions on machines)",
)
async def step_up(request: web.Request) -> web.Response:
    await verify_code(
        request.app, principal(request), body(request, CodeRequest).code, enabling=False
    )
    return json_response(Empty())


# --- API tokens ------------------------------------------------------------------------


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


class TokenInfo(BaseModel):
    id: str
    name: str
    user_id: str
    permissions: list[str] | None
    origin: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class NewToken(TokenInfo):
    token: str = Field(description="the secret, shown only now")


class TokenList(BaseModel):
    items: list[TokenInfo]
    next: str | None = None


def token_info(t: ApiToken) -> TokenInfo:
    return TokenInfo(
        id=t.id,
        name=t.name,
        user_id=t.user_id,
        permissions=t.permissions,
        origin=t.origin,
        created_at=t.created_at,
        expires_at=t.expires_at,
        revoked_at=t.revoked_at,
        last_used_at=t.last_used_at,
    )


@routes.route(
    "POST",
    "/api/v1/tokens",
    permission=SELF,
    body=TokenRequest,
    response=NewToken,
    status=201,
    summary="Make an API token for yourself (the secret is shown once)",
)
async def create_token(request: web.Request) -> web.Response:
    made = await make_token(request.app, principal(request), body(request, TokenRequest))
    return json_response(made, status=201)


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


class TokenQuery(BaseModel):
    user_id: str | None = Field(None, description="another user's tokens (needs users:admin)")


@routes.route(
    "GET",
    "/api/v1/tokens",
    permission=SELF,
    query=TokenQuery,
    response=TokenList,
    summary="Your API tokens (never their secrets)",
)
async def list_tokens(request: web.Request) -> web.Response:
    who = principal(request)
    q = query(request, TokenQuery)
    user_id = who.user_id
    if q.user_id and q.user_id != who.user_id:
        who.require("users:admin", None)
        user_id = q.user_id
    async with request.app[DB]() as session:
        rows = await people.list_tokens(session, user_id)
    return json_response(TokenList(items=[token_info(t) for t in rows]))


@routes.route(
    "DELETE",
    "/api/v1/tokens/{token_id}",
    permission=SELF,
    response=TokenInfo,
    summary="Revoke an API token (yours, or anyone's with users:admin)",
)
async def revoke_token(request: web.Request) -> web.Response:
    info = await revoke(request.app, principal(request), request.match_info["token_id"])
    return json_response(info)


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
