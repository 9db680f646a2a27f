"""Logging in and out, who am I, TOTP enrollment, step-up, API tokens."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web
from pydantic import BaseModel, Field

from server.store import people
from server.store.models import User
from server.views.accounts import (
    BindingInfo,
    TokenInfo,
    own_bindings,
    own_user,
    rights_by_scope,
    token_info,
)
from server.views.rows import from_row
from server.web.account import (
    NewToken,
    TokenRequest,
    TotpSetup,
    begin_totp,
    log_in,
    log_out,
    make_token,
    revoke,
    set_session_cookie,
    verify_code,
)
from server.web.act import answer, unit
from server.web.authn import SESSION_COOKIE, principal, source_of
from server.web.keys import CONFIG
from server.web.routing import SELF, ApiRouter, body, json_response, query

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
    return from_row(UserInfo, user)


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


@routes.route(
    "GET",
    "/api/v1/me",
    permission=SELF,
    response=MeResponse,
    before_2fa=True,
    summary="The caller: user, bindings and effective permissions per site",
)
async def me(request: web.Request) -> web.Response:
    async with unit(request) as (session, who):
        user = await own_user(session, who)
        out = MeResponse(
            user=user_info(user),
            via=who.via,
            bindings=await own_bindings(session, user),
            permissions=await rights_by_scope(session, who),
            csrf_token=who.csrf,
            must_enroll_2fa=who.needs_2fa,
            mfa_recent=who.mfa_within(request.app[CONFIG].settings.step_up_minutes),
        )
    return json_response(out)


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


class CodeRequest(BaseModel):
    code: str = Field(min_length=6, max_length=12)


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


class TokenList(BaseModel):
    items: list[TokenInfo]
    next: str | None = None


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
    return answer(request, made)


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
    async with unit(request) as (session, _):
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
