"""Sites, users, roles, bindings and API tokens in the database."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.rbac import BUILTIN_ROLES, Grant, Rights
from server.store.models import (
    ApiToken,
    Binding,
    LoginThrottle,
    Role,
    Site,
    User,
    WebSession,
    utcnow,
)


async def ensure_builtin_roles(session: AsyncSession) -> None:
    """Insert or refresh the built-in roles (their permissions are code)."""
    existing = {r.name: r for r in (await session.scalars(select(Role))).all()}
    for name, (description, perms) in BUILTIN_ROLES.items():
        role = existing.get(name)
        if role is None:
            session.add(
                Role(name=name, description=description, permissions=sorted(perms), builtin=True)
            )
        else:
            role.permissions = sorted(perms)
            role.description = description
            role.builtin = True


async def site_by_name(session: AsyncSession, name: str) -> Site | None:
    return await session.scalar(select(Site).where(Site.name == name))


async def get_or_create_site(session: AsyncSession, name: str) -> tuple[Site, bool]:
    site = await site_by_name(session, name)
    if site is not None:
        return site, False
    site = Site(name=name)
    session.add(site)
    await session.flush()
    return site, True


async def site_names(session: AsyncSession, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    rows = await session.execute(select(Site.id, Site.name).where(Site.id.in_(ids)))
    return {r[0]: r[1] for r in rows}


async def user_by_name(session: AsyncSession, username: str) -> User | None:
    return await session.scalar(select(User).where(User.username == username))


async def rights_for(
    session: AsyncSession, user_id: str, token_permissions: list[str] | None = None
) -> Rights:
    rows = await session.execute(
        select(Binding.role, Binding.site_id, Role.permissions)
        .join(Role, Role.name == Binding.role)
        .where(Binding.user_id == user_id)
    )
    grants = tuple(Grant(role, frozenset(perms), site_id) for role, site_id, perms in rows)
    return Rights(grants, frozenset(token_permissions) if token_permissions is not None else None)


async def add_binding(
    session: AsyncSession, user_id: str, role: str, site_id: str | None
) -> Binding:
    binding = Binding(user_id=user_id, role=role, site_id=site_id)
    session.add(binding)
    await session.flush()
    return binding


async def create_token(
    session: AsyncSession,
    *,
    user_id: str,
    name: str,
    token_hash: str,
    expires_at: datetime,
    origin: str,
    permissions: list[str] | None = None,
    mfa_at: datetime | None = None,
) -> ApiToken:
    token = ApiToken(
        user_id=user_id,
        name=name,
        token_hash=token_hash,
        expires_at=expires_at,
        origin=origin,
        permissions=permissions,
        mfa_at=mfa_at,
    )
    session.add(token)
    await session.flush()
    return token


async def token_by_hash(session: AsyncSession, token_hash: str) -> tuple[ApiToken, User] | None:
    row = (
        await session.execute(
            select(ApiToken, User)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.token_hash == token_hash)
        )
    ).one_or_none()
    return (row[0], row[1]) if row else None


async def touch_token(session: AsyncSession, token_id: str) -> None:
    await session.execute(
        update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=utcnow())
    )


# --- console sessions ---------------------------------------------------------------


async def web_session(session: AsyncSession, id_hash: str) -> tuple[WebSession, User] | None:
    row = (
        await session.execute(
            select(WebSession, User)
            .join(User, User.id == WebSession.user_id)
            .where(WebSession.id_hash == id_hash)
        )
    ).one_or_none()
    return (row[0], row[1]) if row else None


async def delete_web_session(session: AsyncSession, id_hash: str) -> None:
    await session.execute(delete(WebSession).where(WebSession.id_hash == id_hash))


async def drop_user_sessions(session: AsyncSession, user_id: str) -> None:
    await session.execute(delete(WebSession).where(WebSession.user_id == user_id))


async def prune_web_sessions(session: AsyncSession, now: datetime) -> None:
    await session.execute(delete(WebSession).where(WebSession.expires_at < now))


# --- login throttling -----------------------------------------------------------------


async def throttle_state(session: AsyncSession, key: str) -> LoginThrottle | None:
    return await session.get(LoginThrottle, key)


async def save_throttle(
    session: AsyncSession, key: str, failures: int, last: datetime | None, locked: datetime | None
) -> None:
    row = await session.get(LoginThrottle, key)
    if row is None:
        session.add(
            LoginThrottle(
                key=key, failures=failures, last_failure_at=last or utcnow(), locked_until=locked
            )
        )
    else:
        row.failures = failures
        row.last_failure_at = last or row.last_failure_at
        row.locked_until = locked


async def clear_throttle(session: AsyncSession, key: str) -> None:
    await session.execute(delete(LoginThrottle).where(LoginThrottle.key == key))


# --- administration ---------------------------------------------------------------------


async def list_users(session: AsyncSession) -> list[User]:
    return list((await session.scalars(select(User).order_by(User.username))).all())


async def bindings_of(session: AsyncSession, user_ids: list[str] | None = None) -> list[Binding]:
    stmt = select(Binding).order_by(Binding.created_at)
    if user_ids is not None:
        stmt = stmt.where(Binding.user_id.in_(user_ids))
    return list((await session.scalars(stmt)).all())


async def list_roles(session: AsyncSession) -> list[Role]:
    return list((await session.scalars(select(Role).order_by(Role.name))).all())


async def list_sites(session: AsyncSession) -> list[Site]:
    return list((await session.scalars(select(Site).order_by(Site.name))).all())


async def global_admins(session: AsyncSession) -> set[str]:
    """Ids of enabled users holding the admin role globally."""
    rows = await session.execute(
        select(Binding.user_id)
        .join(User, User.id == Binding.user_id)
        .where(Binding.role == "admin", Binding.site_id.is_(None), User.disabled.is_(False))
    )
    return {r[0] for r in rows}


async def list_tokens(session: AsyncSession, user_id: str | None) -> list[ApiToken]:
    stmt = select(ApiToken).order_by(ApiToken.created_at.desc())
    if user_id is not None:
        stmt = stmt.where(ApiToken.user_id == user_id)
    return list((await session.scalars(stmt)).all())
