"""Logging in: password (argon2id), TOTP, throttling per user name and per
source address, and what a successful login creates (a console session or a
short-lived bearer token). Every attempt is audited; the answer to a failed
attempt never says whether the user exists."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from server.auth import throttle, totp
from server.auth.crypto import DecryptError, unseal
from server.auth.secrets import burn_password_time, digest, hash_password, needs_rehash
from server.auth.secrets import verify_password as check_password
from server.base.audit import Actor, Event
from server.store import auditlog, people
from server.store.models import User, WebSession, utcnow
from shared.errors import FieldlinkError, RateLimited, Unauthorized

BAD_CREDENTIALS = "invalid username or password"


def totp_secret(master_key: bytes, user: User) -> str | None:
    if user.totp_secret_enc is None:
        return None
    try:
        return unseal(master_key, user.totp_secret_enc, f"totp:{user.id}".encode()).decode()
    except DecryptError:
        return None


def _state(row: object | None) -> throttle.State:
    if row is None:
        return throttle.State(0, None, None)
    return throttle.State(
        getattr(row, "failures", 0),
        getattr(row, "last_failure_at", None),
        getattr(row, "locked_until", None),
    )


def _keys(username: str, source: str) -> list[tuple[str, throttle.Limits]]:
    return [
        (f"user:{username.lower()[:100]}", throttle.USER_LIMITS),
        (f"addr:{source[:100]}", throttle.ADDRESS_LIMITS),
    ]


async def _fail(
    session: AsyncSession, username: str, source: str, reason: str, user: User | None
) -> None:
    now = utcnow()
    for key, limits in _keys(username, source):
        state = throttle.after_failure(
            _state(await people.throttle_state(session, key)), limits, now
        )
        await people.save_throttle(
            session, key, state.failures, state.last_failure_at, state.locked_until
        )
    await auditlog.append(
        session,
        Actor("user", user.id if user else None, username[:200], source),
        Event(
            "auth.login",
            outcome="failure",
            target_type="user",
            target_id=user.id if user else None,
            details={"reason": reason},
        ),
    )


@dataclass(frozen=True)
class LoginOutcome:
    user: User | None
    mfa_at: datetime | None
    # why the attempt failed (the caller commits the failure record, then raises)
    error: FieldlinkError | None = None


async def check_login(
    session: AsyncSession,
    *,
    username: str,
    password: str,
    code: str | None,
    source: str,
    master_key: bytes,
) -> LoginOutcome:
    """Verify a login attempt. Failures are recorded (throttle + audit) in
    this transaction, which the caller commits before raising."""
    now = utcnow()
    for key, limits in _keys(username, source):
        wait = throttle.retry_after(_state(await people.throttle_state(session, key)), limits, now)
        if wait > 0:
            await auditlog.append(
                session,
                Actor("user", None, username[:200], source),
                Event("auth.login", outcome="failure", details={"reason": "throttled"}),
            )
            return LoginOutcome(
                None,
                None,
                RateLimited(
                    "too many failed logins; try again later",
                    headers={"Retry-After": str(max(1, int(wait + 0.999)))},
                ),
            )
    user = await people.user_by_name(session, username)
    if user is None:
        burn_password_time(password)
        await _fail(session, username, source, "bad_credentials", None)
        return LoginOutcome(None, None, Unauthorized(BAD_CREDENTIALS, code="bad_credentials"))
    if not check_password(user.password_hash, password) or user.disabled:
        await _fail(
            session, username, source, "disabled" if user.disabled else "bad_credentials", user
        )
        return LoginOutcome(user, None, Unauthorized(BAD_CREDENTIALS, code="bad_credentials"))
    mfa_at = None
    if user.totp_enabled:
        secret = totp_secret(master_key, user)
        if not code:
            return LoginOutcome(
                user,
                None,
                Unauthorized(
                    "a TOTP code is required", code="totp_required", fields={"totp": "required"}
                ),
            )
        step = totp.matching_step(secret, code, user.totp_last_step) if secret else None
        if step is None:
            await _fail(session, username, source, "bad_totp", user)
            return LoginOutcome(
                user,
                None,
                Unauthorized("invalid TOTP code", code="totp_invalid", fields={"totp": "invalid"}),
            )
        user.totp_last_step = step
        mfa_at = now
    for key, _ in _keys(username, source):
        await people.clear_throttle(session, key)
    user.last_login_at = now
    if user.password_hash and needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return LoginOutcome(user, mfa_at)


@dataclass(frozen=True)
class NewWebSession:
    cookie: str
    csrf: str
    expires_at: datetime


async def open_web_session(
    session: AsyncSession, user: User, *, mfa_at: datetime | None, source: str, max_hours: float
) -> NewWebSession:
    cookie = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    expires = utcnow() + timedelta(hours=max_hours)
    session.add(
        WebSession(
            id_hash=digest(cookie),
            user_id=user.id,
            csrf_token=csrf,
            expires_at=expires,
            mfa_at=mfa_at,
            source=source[:64],
        )
    )
    await people.prune_web_sessions(session, utcnow())
    return NewWebSession(cookie, csrf, expires)
