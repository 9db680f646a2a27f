"""Users, roles and sites as administrators see them (`UserItem`, `RoleItem`,
`SiteItem` with its session policy and business-hours calendar); a site by
name within a permission, and a user who may be assigned work on a site."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth import rbac
from server.auth.principal import Principal
from server.itsm.consent import SitePolicy
from server.store import people
from server.store.models import Role, Site, User
from server.views.accounts import BindingInfo, binding_infos
from server.views.rows import from_row, row_in_scope
from shared.errors import Invalid, NotFound
from shared.numbers import FiniteFloat


class UserItem(BaseModel):
    id: str
    username: str
    display_name: str
    email: str
    disabled: bool
    totp_enabled: bool
    created_at: datetime
    last_login_at: datetime | None
    bindings: list[BindingInfo]


async def user_item(
    session: AsyncSession, user: User, scope: frozenset[str] | None = None
) -> UserItem:
    """The user as an admin with users:admin on `scope` sees it (None: global):
    a site-scoped admin sees only the bindings on its own sites."""
    rows = await people.bindings_of(session, [user.id])
    if scope is not None:
        rows = [b for b in rows if b.site_id in scope]
    bindings = await binding_infos(session, rows)
    return from_row(UserItem, user, bindings=bindings)


async def visible_users(session: AsyncSession, scope: frozenset[str] | None) -> list[User]:
    """The users an admin with users:admin on `scope` may see and act on: all of
    them for a global admin; for a site-scoped admin, those bound to one of its
    sites and those bound nowhere yet (so a user it just created can be bound)."""
    users = await people.list_users(session)
    if scope is None:
        return users
    sites: dict[str, set[str | None]] = {}
    for b in await people.bindings_of(session, [u.id for u in users]):
        sites.setdefault(b.user_id, set()).add(b.site_id)
    return [u for u in users if u.id not in sites or sites[u.id] & scope]


async def sees_user(session: AsyncSession, scope: frozenset[str] | None, user: User) -> bool:
    if scope is None:
        return True
    held = {b.site_id for b in await people.bindings_of(session, [user.id])}
    return not held or bool(held & scope)


async def visible_user(session: AsyncSession, who: Principal, user_id: str) -> User:
    """The user, if the caller may see it: a user bound only to sites (or the
    global scope) beyond a site-scoped admin's answers 404, as one that does
    not exist."""
    user = await session.get(User, user_id)
    if user is None or not await sees_user(session, who.sites("users:admin"), user):
        raise NotFound("not found")
    return user


class RoleItem(BaseModel):
    name: str
    description: str
    permissions: list[str]
    builtin: bool


def role_item(role: Role) -> RoleItem:
    return RoleItem(
        name=role.name,
        description=role.description,
        permissions=sorted(role.permissions),
        builtin=role.builtin,
    )


class SessionPolicyIn(BaseModel):
    """Remote-session settings of a site (see server/itsm/consent.py)."""

    model_config = ConfigDict(extra="forbid")

    consent: dict[str, bool] = Field(
        default_factory=lambda: {"shell": True, "exec": True, "files": True},
        description="consent needed per session kind: shell, exec, files (the machine's "
        "policy can only add)",
    )

    @field_validator("consent")
    @classmethod
    def _kinds(cls, value: dict[str, bool]) -> dict[str, bool]:
        unknown = set(value) - {"shell", "exec", "files"}
        if unknown:
            raise ValueError(f"unknown session kinds: {', '.join(sorted(unknown))}")
        return value

    consent_timeout_seconds: FiniteFloat = Field(300.0, ge=10, le=86400)
    on_timeout: Literal["deny", "allow"] = "deny"
    require_session_for: list[Literal["exec", "action"]] = Field(
        default_factory=list, description="run tiers that need an active session on the ticket"
    )
    record_input: bool = Field(False, description="record what the engineer types, too")
    offer_timeout_seconds: FiniteFloat = Field(1800.0, ge=10, le=7 * 86400)


class Calendar(BaseModel):
    timezone: str = Field("UTC", description="IANA time zone, e.g. Asia/Seoul")
    work_days: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4],
        min_length=1,
        description="0 = Monday ... 6 = Sunday; at least one",
    )
    work_start: str = Field("09:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    work_end: str = Field("18:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    # Fewer than the working days of ten years (one a week): SLA clocks always
    # find working time.
    holidays: list[date] = Field(default_factory=list, max_length=500)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("work_days")
    @classmethod
    def _days(cls, value: list[int]) -> list[int]:
        if any(d not in range(7) for d in value):
            raise ValueError("days are 0 (Monday) to 6 (Sunday)")
        return sorted(set(value))

    @model_validator(mode="after")
    def _hours(self) -> Calendar:
        if self.work_end <= self.work_start:
            raise ValueError("work_end must be after work_start")
        return self


class SiteItem(BaseModel):
    id: str
    name: str
    description: str
    created_at: datetime
    calendar: Calendar
    session_policy: SessionPolicyIn


def site_item(site: Site) -> SiteItem:
    return SiteItem(
        id=site.id,
        name=site.name,
        description=site.description,
        created_at=site.created_at,
        calendar=Calendar(
            timezone=site.timezone,
            work_days=site.work_days,
            work_start=site.work_start,
            work_end=site.work_end,
            holidays=[date.fromisoformat(d) for d in site.holidays or []],
        ),
        session_policy=SessionPolicyIn(**SitePolicy.from_json(site.session_policy).to_json()),
    )


async def site_named(session: AsyncSession, who: Principal, name: str, permission: str) -> Site:
    """The site called `name` where the caller holds `permission`; any other
    answers 404 naming `site`, as one that does not exist."""
    site = await people.site_by_name(session, name)
    if site is None or not who.allowed(permission, site.id):
        raise NotFound("site not found", fields={"site": "no such site"})
    return site


async def assignee(
    session: AsyncSession, name: str, permission: str, site_id: str | None, what: str, why: str
) -> User:
    """The enabled user called `name` (or with that id) who holds `permission`
    on the `what`'s site; else 422 naming `assignee` (`why` says it)."""
    user = await people.user_by_name(session, name) or await session.get(User, name)
    if user is None or user.disabled:
        raise Invalid("unknown user", fields={"assignee": "no such user"})
    if not rbac.allowed(await people.rights_for(session, user.id), permission, site_id):
        raise Invalid(why, fields={"assignee": f"no {permission} on the {what}'s site"})
    return user


async def administered_site(session: AsyncSession, who: Principal, site_id: str) -> Site:
    """The site, if the caller holds users:admin on it; else 404."""
    return await row_in_scope(session, who, Site, site_id, "users:admin", lambda s: s.id)
