"""A user's role bindings and API tokens as the API answers them and the
console's profile page lists them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from server.store import people
from server.store.models import ApiToken, Binding


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
