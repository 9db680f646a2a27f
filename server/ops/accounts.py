"""Users and API tokens: creation shared by `fieldlink init`, the admin CLI
and the API."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.rbac import BUILTIN_ROLES
from server.auth.secrets import digest, hash_password, new_token
from server.base.audit import Actor, Event
from server.store import auditlog, people
from server.store.models import Role, User, utcnow
from shared.errors import Conflict, Invalid, NotFound

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def check_username(name: str) -> None:
    if not USERNAME_RE.match(name):
        raise Invalid(
            "invalid username",
            fields={"username": "1-64 of a-z 0-9 . _ -, starting with a letter or digit"},
        )


def check_password(password: str) -> None:
    if len(password) < 10:
        raise Invalid("password too short", fields={"password": "at least 10 characters"})
    if len(password) > 1024:
        raise Invalid("password too long", fields={"password": "at most 1024 characters"})


async def create_user(
    session: AsyncSession,
    *,
    username: str,
    password: str | None,
    actor: Actor,
    display_name: str = "",
    email: str = "",
) -> User:
    check_username(username)
    if password is not None:
        check_password(password)
    if await people.user_by_name(session, username) is not None:
        raise Conflict("user exists", fields={"username": "already taken"})
    user = User(
        username=username,
        display_name=display_name,
        email=email,
        password_hash=hash_password(password) if password is not None else None,
    )
    session.add(user)
    await session.flush()
    await auditlog.append(
        session,
        actor,
        Event("user.create", target_type="user", target_id=user.id, details={"username": username}),
    )
    return user


async def bind_role(
    session: AsyncSession,
    *,
    user: User,
    role: str,
    site_name: str | None,
    actor: Actor,
    create_site: bool = False,
) -> None:
    if await session.get(Role, role) is None:
        known = ", ".join(sorted(BUILTIN_ROLES))
        raise NotFound("role not found", fields={"role": f"unknown role (built-in: {known})"})
    site_id = None
    if site_name is not None:
        site = await people.site_by_name(session, site_name)
        if site is None and create_site:
            site, _ = await people.get_or_create_site(session, site_name)
        if site is None:
            raise NotFound("site not found", fields={"site": "no such site"})
        site_id = site.id
    binding = await people.add_binding(session, user.id, role, site_id)
    await auditlog.append(
        session,
        actor,
        Event(
            "binding.create",
            target_type="binding",
            target_id=binding.id,
            site_id=site_id,
            details={
                "user": user.username,
                "role": role,
                "scope": f"site:{site_name}" if site_name else "global",
            },
        ),
    )


@dataclass(frozen=True)
class NewApiToken:
    token: str
    token_id: str
    expires_at: datetime


async def make_api_token(
    session: AsyncSession,
    *,
    username: str,
    name: str,
    ttl: timedelta,
    origin: str,
    actor: Actor,
    permissions: list[str] | None = None,
    mfa_at: datetime | None = None,
) -> NewApiToken:
    user = await people.user_by_name(session, username)
    if user is None:
        raise NotFound("user not found", fields={"user": "no such user"})
    secret = new_token()
    expires = utcnow() + ttl
    row = await people.create_token(
        session,
        user_id=user.id,
        name=name,
        token_hash=digest(secret),
        expires_at=expires,
        origin=origin,
        permissions=permissions,
        mfa_at=mfa_at,
    )
    await auditlog.append(
        session,
        actor,
        Event(
            "token.create",
            target_type="token",
            target_id=row.id,
            details={
                "user": username,
                "name": name,
                "origin": origin,
                "expires_at": expires.isoformat(),
                "permissions": permissions,
            },
        ),
    )
    return NewApiToken(secret, row.id, expires)
