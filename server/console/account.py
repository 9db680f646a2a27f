"""Console pages for one's own account: log in (password and TOTP), log out,
TOTP enrollment with a QR code, and the profile (language, API tokens).

The login form is public, so its CSRF token is a double-submit pair: a
random value in a cookie scoped to /login and the same value in the form.
Everything after login uses the session's own CSRF token.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import segno
from aiohttp import web
from markupsafe import Markup
from pydantic import ValidationError

from server.auth import rbac, totp
from server.auth.secrets import same
from server.console import i18n
from server.console.render import page
from server.ops.login import totp_secret
from server.store import people
from server.views import accounts
from server.web import account as web_account
from server.web.act import unit
from server.web.authn import SESSION_COOKIE, authenticate, principal, source_of
from server.web.keys import CONFIG
from server.web.middleware import see_other
from server.web.routing import SELF, ApiRouter
from shared.errors import FieldlinkError, NotFound, Unauthorized

routes = ApiRouter("console", console=True)

LOGIN_CSRF_COOKIE = "fl_login_csrf"


_LOCAL_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9/_.~%?=&+:,;@!*'()-]*")


def safe_next(value: str | None) -> str:
    """Only our own paths: never another host (`//evil`, `/\\evil`,
    `https://...`, or one hidden behind whitespace a browser would drop)."""
    if not value or not _LOCAL_PATH.fullmatch(value):
        return "/"
    return value


async def _form(request: web.Request) -> dict[str, str]:
    data = await request.post()
    return {k: v for k, v in data.items() if isinstance(v, str)}


def _login_page(
    request: web.Request, *, error: str = "", username: str = "", status: int = 200
) -> web.Response:
    token = secrets.token_urlsafe(24)
    resp = page(
        request,
        "login.html",
        {
            "login_csrf": token,
            "error": error,
            "username": username,
            "next": safe_next(request.query.get("next")),
        },
        status=status,
        title=i18n.gettext("Log in"),
    )
    resp.set_cookie(
        LOGIN_CSRF_COOKIE, token, httponly=True, secure=True, samesite="Strict", path="/login"
    )
    return resp


@routes.route("GET", "/login", public=True, summary="Login page")
async def login_form(request: web.Request) -> web.StreamResponse:
    if request.cookies.get(SESSION_COOKIE):
        try:
            await authenticate(request)
            return see_other(safe_next(request.query.get("next")))
        except Unauthorized:
            pass
    return _login_page(request)


@routes.route("POST", "/login", public=True, summary="Log in from the login form")
async def login_submit(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    i18n.activate(i18n.language_of(request))
    sent, kept = form.get("csrf_token", ""), request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not sent or not kept or not same(sent, kept):
        return _login_page(
            request, error=i18n.gettext("The form expired; please try again."), status=403
        )
    username = form.get("username", "")[:64]
    app = request.app
    try:
        _, _, web_session = await web_account.log_in(
            app,
            username=username,
            password=form.get("password", "")[:1024],
            code=form.get("totp", "").strip()[:12] or None,
            source=source_of(request),
            token=False,
        )
    except FieldlinkError as exc:
        messages = {
            "totp_required": i18n.gettext("Enter the code from your authenticator app."),
            "totp_invalid": i18n.gettext("That code is not valid; wait for the next one."),
            "rate_limited": i18n.gettext("Too many failed logins; try again later."),
        }
        error = messages.get(exc.code, i18n.gettext("Invalid username or password."))
        return _login_page(request, error=error, username=username, status=exc.status)
    assert web_session is not None
    resp = see_other(safe_next(form.get("next")))
    web_account.set_session_cookie(resp, app, web_session)
    resp.del_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return resp


@routes.route("POST", "/logout", permission=SELF, before_2fa=True, summary="Log out")
async def logout(request: web.Request) -> web.StreamResponse:
    await web_account.log_out(request.app, principal(request))
    resp = see_other("/login")
    resp.del_cookie(SESSION_COOKIE, path="/")
    return resp


def qr_svg(uri: str) -> Markup:
    """The otpauth URI as an inline SVG QR code, drawn on HQ."""
    svg = segno.make(uri, error="m").svg_inline(scale=5, border=2, dark="#111", light="#fff")
    return Markup(svg)  # noqa: S704 - segno's own SVG markup; the URI is encoded as pixels


@routes.route(
    "GET", "/totp", permission=SELF, before_2fa=True, summary="Two-factor enrollment page"
)
async def totp_page(request: web.Request) -> web.StreamResponse:
    app = request.app
    async with unit(request) as (session, who):
        user = await accounts.own_user(session, who)
    pending = None if user.totp_enabled else totp_secret(app[CONFIG].master_key, user)
    ctx: dict[str, Any] = {
        "enabled": user.totp_enabled,
        "required": who.needs_2fa,
        "secret": pending,
        "qr": qr_svg(totp.provisioning_uri(pending, who.username)) if pending else None,
        "error": request.query.get("error", ""),
    }
    return page(request, "totp.html", ctx, title=i18n.gettext("Two-factor authentication"))


@routes.route(
    "POST", "/totp", permission=SELF, before_2fa=True, summary="Start two-factor enrollment"
)
async def totp_begin(request: web.Request) -> web.StreamResponse:
    await web_account.begin_totp(request.app, principal(request))
    return see_other("/totp")


@routes.route(
    "POST",
    "/totp/confirm",
    permission=SELF,
    before_2fa=True,
    summary="Confirm two-factor enrollment with a code",
)
async def totp_confirm(request: web.Request) -> web.StreamResponse:
    code = (await _form(request)).get("code", "").strip()
    try:
        await web_account.verify_code(request.app, principal(request), code, enabling=True)
    except FieldlinkError:
        return see_other("/totp?error=invalid")
    return see_other("/?done=totp")


async def _profile(
    request: web.Request, new_token: web_account.NewToken | None = None
) -> web.Response:
    async with unit(request) as (session, who):
        user = await accounts.own_user(session, who)
        bindings = await accounts.own_bindings(session, user)
        tokens = [accounts.token_info(t) for t in await people.list_tokens(session, user.id)]
        rights = await accounts.rights_by_scope(session, who)
    ctx = {
        "user": user,
        "bindings": bindings,
        "rights": rights,
        "tokens": tokens,
        "new_token": new_token,
        "permissions": sorted(rbac.PERMISSIONS),
        "error": request.query.get("error", ""),
    }
    return page(request, "profile.html", ctx, title=i18n.gettext("Profile"))


@routes.route("GET", "/profile", permission=SELF, before_2fa=True, summary="Your profile")
async def profile(request: web.Request) -> web.StreamResponse:
    return await _profile(request)


@routes.route(
    "POST", "/profile/language", permission=SELF, before_2fa=True, summary="Choose a language"
)
async def set_language(request: web.Request) -> web.StreamResponse:
    lang = (await _form(request)).get("lang", "")
    return _with_language(see_other("/profile?done=language"), lang)


def _with_language(resp: web.Response, lang: str) -> web.Response:
    """The language preference cookie: a known language, else none (the browser's)."""
    if lang in i18n.LANGUAGES:
        resp.set_cookie(
            i18n.LANG_COOKIE,
            lang,
            httponly=True,
            secure=True,
            samesite="Strict",
            path="/",
            max_age=365 * 86400,
        )
    else:
        resp.del_cookie(i18n.LANG_COOKIE, path="/")
    return resp


@routes.route(
    "GET",
    "/language/{lang}",
    public=True,
    summary="Switch the console's language (the header's switch), back to the same page",
)
async def switch_language(request: web.Request) -> web.StreamResponse:
    """A preference only (a cookie, as the profile's choice sets): no account
    changes, so a plain link works on every page, the login page included."""
    lang = request.match_info["lang"]
    if lang not in i18n.LANGUAGES:
        raise NotFound("no such language")
    return _with_language(see_other(safe_next(request.query.get("next"))), lang)


@routes.route("POST", "/profile/tokens", permission=SELF, summary="Make an API token")
async def new_token(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    wanted = [p for p in rbac.PERMISSIONS if form.get(f"perm:{p}") == "on"]
    try:
        req = web_account.TokenRequest(
            name=form.get("name", ""),
            ttl=form.get("ttl", "30d") or "30d",
            permissions=wanted or None,
        )
        made = await web_account.make_token(request.app, principal(request), req)
    except (ValidationError, FieldlinkError):
        return see_other("/profile?error=token")
    # Shown once, in this answer only (never in a URL).
    return await _profile(request, new_token=made)


@routes.route(
    "POST", "/profile/tokens/{token_id}/revoke", permission=SELF, summary="Revoke an API token"
)
async def revoke_token(request: web.Request) -> web.StreamResponse:
    await web_account.revoke(request.app, principal(request), request.match_info["token_id"])
    return see_other("/profile?done=revoked")
