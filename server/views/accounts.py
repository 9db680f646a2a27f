"""A user's role bindings and API tokens as the API answers them and the
console's profile page lists them; the caller's own account and its
effective permissions per scope."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth import rbac
from server.auth.principal import Principal
from server.store import people
from server.store.models import ApiToken, Binding, User
from server.views.rows import from_row
from shared.errors import Unauthorized


class BindingInfo(BaseModel):
    id: str
    role: str
    scope: str = Field(description='"global" or "site:<name>"')
    site_id: str | None


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


def token_info(t: ApiToken) -> TokenInfo:
    return from_row(TokenInfo, t)


async def own_user(session: AsyncSession, who: Principal) -> User:
    """The caller's own account; 401 if it was deleted meanwhile."""
    user = await session.get(User, who.user_id)
    if user is None:
        raise Unauthorized("user no longer exists")
    return user


async def own_bindings(session: AsyncSession, user: User) -> list[BindingInfo]:
    return await binding_infos(session, await people.bindings_of(session, [user.id]))


async def rights_by_scope(session: AsyncSession, who: Principal) -> dict[str, list[str]]:
    """The caller's effective permissions per scope: "global" or "site:<name>"."""
    eff = rbac.effective(who.rights)
    names = await people.site_names(session, {s for s in eff if s != "global"})
    return {
        ("global" if scope == "global" else f"site:{names.get(scope, scope)}"): sorted(p)
        for scope, p in eff.items()
    }
