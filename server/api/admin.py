"""Administration: users, roles, bindings and sites (`users:admin`).

Rules: nobody grants a permission on a scope they do not hold it on; the
last enabled global admin cannot be removed, disabled or unbound; built-in
roles cannot be changed. Users and roles are global objects: changing them
needs users:admin globally; a site-scoped admin manages bindings on its site
and sees only the users bound to its sites (or to none yet): any other user
answers 404, as if it did not exist.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.api.auth import BindingInfo, binding_infos
from server.api.authn import Principal, principal
from server.api.routing import ApiRouter, body, json_response, query
from server.audit import Event
from server.auth import rbac
from server.auth.secrets import hash_password, new_password
from server.context import services
from server.itsm.consent import SitePolicy
from server.ops import accounts
from server.store import auditlog, people
from server.store.models import Agent, Binding, Role, Site, Ticket, User
from shared.errors import Conflict, Invalid, NotFound
from shared.numbers import FiniteFloat

routes = ApiRouter("administration")

SITE_NAME = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$"
ROLE_NAME = r"^[a-z][a-z0-9_]{1,63}$"


# --- users ---------------------------------------------------------------------------


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


class UserList(BaseModel):
    items: list[UserItem]
    next: str | None = None


class NewUser(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str | None = Field(
        None,
        min_length=10,
        max_length=1024,
        description="omit to have one generated and returned once",
    )
    display_name: str = Field("", max_length=200)
    email: str = Field("", max_length=254)


class CreatedUser(UserItem):
    password: str | None = Field(None, description="the generated password, shown only now")


class UserPatch(BaseModel):
    display_name: str | None = Field(None, max_length=200)
    email: str | None = Field(None, max_length=254)
    password: str | None = Field(None, min_length=10, max_length=1024)
    disabled: bool | None = None
    reset_totp: bool = Field(False, description="turn 2FA off so the user enrolls again")


async def user_item(
    session: AsyncSession, user: User, scope: frozenset[str] | None = None
) -> UserItem:
    """The user as an admin with users:admin on `scope` sees it (None: global):
    a site-scoped admin sees only the bindings on its own sites."""
    rows = await people.bindings_of(session, [user.id])
    if scope is not None:
        rows = [b for b in rows if b.site_id in scope]
    bindings = await binding_infos(session, rows)
    return UserItem(
        id=user.id,
        username=user.username,
        display_name=user.display_name,
        email=user.email,
        disabled=user.disabled,
        totp_enabled=user.totp_enabled,
        created_at=user.created_at,
        last_login_at=user.last_login_at,
        bindings=bindings,
    )


@routes.route(
    "GET",
    "/api/v1/users",
    permission="users:admin",
    response=UserList,
    summary="Users, with their bindings",
)
async def list_users(request: web.Request) -> web.Response:
    scope = principal(request).sites("users:admin")
    async with services(request).sessions() as session:
        users = await visible_users(session, scope)
        items = [await user_item(session, u, scope) for u in users]
    return json_response(UserList(items=items))


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


@routes.route(
    "POST",
    "/api/v1/users",
    errors=(409,),
    permission="users:admin",
    body=NewUser,
    response=CreatedUser,
    status=201,
    summary="Create a user (no roles until bound)",
)
async def create_user(request: web.Request) -> web.Response:
    svc = services(request)
    who = principal(request)
    req = body(request, NewUser)
    if who.via == "token" and not who.explicitly("users:admin"):
        raise NotFound("not found")
    generated = None if req.password is not None else new_password()
    async with svc.sessions.begin() as session:
        user = await accounts.create_user(
            session,
            username=req.username,
            password=req.password or generated,
            actor=who.actor(),
            display_name=req.display_name,
            email=req.email,
        )
        item = await user_item(session, user)
    return json_response(CreatedUser(**item.model_dump(), password=generated), status=201)


async def _load_user(session: AsyncSession, request: web.Request) -> User:
    """The user in the path, if the caller may see it: a user bound only to
    sites (or the global scope) beyond a site-scoped admin's answers 404, as
    one that does not exist."""
    user = await session.get(User, request.match_info["user_id"])
    if user is None or not await sees_user(session, principal(request).sites("users:admin"), user):
        raise NotFound("not found")
    return user


@routes.route(
    "GET",
    "/api/v1/users/{user_id}",
    permission="users:admin",
    response=UserItem,
    summary="One user",
)
async def get_user(request: web.Request) -> web.Response:
    scope = principal(request).sites("users:admin")
    async with services(request).sessions() as session:
        item = await user_item(session, await _load_user(session, request), scope)
    return json_response(item)


async def _guard_last_admin(session: AsyncSession, user_id: str, field: str) -> None:
    """Refuse (409 `last_admin`, naming `field`) to disable, delete or demote the
    only enabled global admin: nobody could administer HQ afterwards."""
    admins = await people.global_admins(session)
    if admins == {user_id}:
        raise Conflict(
            "this is the last enabled global admin; make another admin first",
            code="last_admin",
            fields={field: "the only enabled global admin"},
        )


@routes.route(
    "PATCH",
    "/api/v1/users/{user_id}",
    errors=(409,),
    permission="users:admin",
    body=UserPatch,
    response=UserItem,
    summary="Change a user: names, password, disabled, reset 2FA",
)
async def patch_user(request: web.Request) -> web.Response:
    svc = services(request)
    who = principal(request)
    req = body(request, UserPatch)
    async with svc.sessions.begin() as session:
        user = await _load_user(session, request)
        who.require("users:admin", None)
        changed: list[str] = []
        if req.display_name is not None:
            user.display_name = req.display_name
            changed.append("display_name")
        if req.email is not None:
            user.email = req.email
            changed.append("email")
        if req.password is not None:
            accounts.check_password(req.password)
            user.password_hash = hash_password(req.password)
            await people.drop_user_sessions(session, user.id)
            changed.append("password")
        if req.disabled is not None and req.disabled != user.disabled:
            if req.disabled:
                await _guard_last_admin(session, user.id, "disabled")
                await people.drop_user_sessions(session, user.id)
            user.disabled = req.disabled
            changed.append("disabled")
        if req.reset_totp:
            user.totp_enabled = False
            user.totp_secret_enc = None
            user.totp_last_step = None
            changed.append("totp_reset")
        await auditlog.append(
            session,
            who.actor(),
            Event(
                "user.update",
                target_type="user",
                target_id=user.id,
                details={"username": user.username, "changed": changed, "disabled": user.disabled},
            ),
        )
        item = await user_item(session, user)
    return json_response(item)


@routes.route(
    "DELETE",
    "/api/v1/users/{user_id}",
    errors=(409,),
    permission="users:admin",
    response=UserItem,
    summary="Delete a user (their bindings, sessions and tokens go with them)",
)
async def delete_user(request: web.Request) -> web.Response:
    svc = services(request)
    who = principal(request)
    async with svc.sessions.begin() as session:
        user = await _load_user(session, request)
        who.require("users:admin", None)
        await _guard_last_admin(session, user.id, "user_id")
        item = await user_item(session, user)
        for binding in await people.bindings_of(session, [user.id]):
            await session.delete(binding)
        await session.delete(user)
        await auditlog.append(
            session,
            who.actor(),
            Event(
                "user.delete",
                target_type="user",
                target_id=user.id,
                details={"username": user.username},
            ),
        )
    return json_response(item)


# --- roles ---------------------------------------------------------------------------------


class RoleItem(BaseModel):
    name: str
    description: str
    permissions: list[str]
    builtin: bool


class RoleList(BaseModel):
    items: list[RoleItem]
    next: str | None = None


class NewRole(BaseModel):
    name: str = Field(pattern=ROLE_NAME)
    description: str = Field("", max_length=500)
    permissions: list[str]


class RolePatch(BaseModel):
    description: str | None = Field(None, max_length=500)
    permissions: list[str] | None = None


class PermissionList(BaseModel):
    items: dict[str, str]


def role_item(role: Role) -> RoleItem:
    return RoleItem(
        name=role.name,
        description=role.description,
        permissions=sorted(role.permissions),
        builtin=role.builtin,
    )


def _check_permissions(who: Principal, perms: list[str]) -> list[str]:
    unknown = rbac.unknown_permissions(perms)
    if unknown:
        raise Invalid("unknown permissions", fields={"permissions": ", ".join(unknown)})
    if not rbac.can_grant(who.rights, perms, None):
        raise Invalid(
            "you cannot hand out permissions you do not hold globally",
            fields={"permissions": "beyond your own rights"},
        )
    return sorted(set(perms))


@routes.route(
    "GET",
    "/api/v1/permissions",
    permission="users:admin",
    response=PermissionList,
    summary="The fixed list of permission names and what each allows",
)
async def list_permissions(request: web.Request) -> web.Response:
    return json_response(PermissionList(items=rbac.PERMISSIONS))


@routes.route(
    "GET",
    "/api/v1/roles",
    permission="users:admin",
    response=RoleList,
    summary="Built-in and custom roles",
)
async def list_roles(request: web.Request) -> web.Response:
    async with services(request).sessions() as session:
        roles = await people.list_roles(session)
    return json_response(RoleList(items=[role_item(r) for r in roles]))


@routes.route(
    "POST",
    "/api/v1/roles",
    errors=(409,),
    permission="users:admin",
    body=NewRole,
    response=RoleItem,
    status=201,
    summary="Create a custom role",
)
async def create_role(request: web.Request) -> web.Response:
    svc = services(request)
    who = principal(request)
    who.require("users:admin", None)
    req = body(request, NewRole)
    perms = _check_permissions(who, req.permissions)
    async with svc.sessions.begin() as session:
        if await session.get(Role, req.name) is not None:
            raise Conflict("role exists", fields={"name": "already taken"})
        role = Role(name=req.name, description=req.description, permissions=perms, builtin=False)
        session.add(role)
        await auditlog.append(
            session,
            who.actor(),
            Event(
                "role.create",
                target_type="role",
                target_id=req.name,
                details={"permissions": perms},
            ),
        )
    return json_response(role_item(role), status=201)


async def _custom_role(session: AsyncSession, request: web.Request) -> Role:
    role = await session.get(Role, request.match_info["name"])
    if role is None:
        raise NotFound("not found")
    if role.builtin:
        raise Conflict("built-in roles cannot be changed; create a custom role")
    return role


@routes.route(
    "PATCH",
    "/api/v1/roles/{name}",
    errors=(409,),
    permission="users:admin",
    body=RolePatch,
    response=RoleItem,
    summary="Change a custom role",
)
async def patch_role(request: web.Request) -> web.Response:
    svc = services(request)
    who = principal(request)
    who.require("users:admin", None)
    req = body(request, RolePatch)
    async with svc.sessions.begin() as session:
        role = await _custom_role(session, request)
        if req.permissions is not None:
            role.permissions = _check_permissions(who, req.permissions)
        if req.description is not None:
            role.description = req.description
        await auditlog.append(
            session,
            who.actor(),
            Event(
                "role.update",
                target_type="role",
                target_id=role.name,
                details={"permissions": role.permissions},
            ),
        )
    return json_response(role_item(role))


@routes.route(
    "DELETE",
    "/api/v1/roles/{name}",
    errors=(409,),
    permission="users:admin",
    response=RoleItem,
    summary="Delete a custom role that no binding uses",
)
async def delete_role(request: web.Request) -> web.Response:
    svc = services(request)
    who = principal(request)
    who.require("users:admin", None)
    async with svc.sessions.begin() as session:
        role = await _custom_role(session, request)
        used = await session.scalar(
            select(func.count()).select_from(Binding).where(Binding.role == role.name)
        )
        if used:
            raise Conflict(f"role is used by {used} binding(s); remove them first")
        item = role_item(role)
        await session.delete(role)
        await auditlog.append(
            session, who.actor(), Event("role.delete", target_type="role", target_id=role.name)
        )
    return json_response(item)


# --- bindings ---------------------------------------------------------------------------


class NewBinding(BaseModel):
    user_id: str
    role: str
    scope: str = Field(pattern=r"^(global|site:.+)$", description='"global" or "site:<name>"')


class BindingList(BaseModel):
    items: list[BindingInfo]
    next: str | None = None


class BindingQuery(BaseModel):
    user_id: str | None = None


class BindingItem(BindingInfo):
    user_id: str


@routes.route(
    "GET",
    "/api/v1/bindings",
    permission="users:admin",
    query=BindingQuery,
    response=BindingList,
    summary="Bindings on the scopes you administer",
)
async def list_bindings(request: web.Request) -> web.Response:
    who = principal(request)
    q = query(request, BindingQuery)
    scope = who.sites("users:admin")
    async with services(request).sessions() as session:
        rows = await people.bindings_of(session, [q.user_id] if q.user_id else None)
        if scope is not None:
            rows = [b for b in rows if b.site_id in scope]
        items = await binding_infos(session, rows)
    return json_response(BindingList(items=items))


async def _scope_site(session: AsyncSession, scope: str) -> str | None:
    if scope == "global":
        return None
    site = await people.site_by_name(session, scope.removeprefix("site:"))
    if site is None:
        raise Invalid("unknown site", fields={"scope": "no such site"})
    return site.id


@routes.route(
    "POST",
    "/api/v1/bindings",
    errors=(404, 409),
    permission="users:admin",
    body=NewBinding,
    response=BindingItem,
    status=201,
    summary="Give a user a role on a scope (only what you hold there yourself)",
)
async def create_binding(request: web.Request) -> web.Response:
    svc = services(request)
    who = principal(request)
    req = body(request, NewBinding)
    async with svc.sessions.begin() as session:
        site_id = await _scope_site(session, req.scope)
        who.require("users:admin", site_id)
        user = await session.get(User, req.user_id)
        if user is None or not await sees_user(session, who.sites("users:admin"), user):
            raise Invalid("unknown user", fields={"user_id": "no such user"})
        role = await session.get(Role, req.role)
        if role is None:
            raise Invalid("unknown role", fields={"role": "no such role"})
        if not rbac.can_grant(who.rights, role.permissions, site_id):
            raise Invalid(
                "you cannot grant permissions you do not hold on that scope",
                fields={"role": "beyond your own rights on this scope"},
            )
        exists = await session.scalar(
            select(Binding).where(
                Binding.user_id == user.id,
                Binding.role == role.name,
                Binding.site_id.is_(None) if site_id is None else Binding.site_id == site_id,
            )
        )
        if exists is not None:
            raise Conflict("binding exists")
        site_name = req.scope.removeprefix("site:") if site_id else None
        await accounts.bind_role(
            session, user=user, role=role.name, site_name=site_name, actor=who.actor()
        )
        binding = await session.scalar(
            select(Binding).where(
                Binding.user_id == user.id,
                Binding.role == role.name,
                Binding.site_id.is_(None) if site_id is None else Binding.site_id == site_id,
            )
        )
        assert binding is not None
        info = (await binding_infos(session, [binding]))[0]
    return json_response(BindingItem(**info.model_dump(), user_id=user.id), status=201)


@routes.route(
    "DELETE",
    "/api/v1/bindings/{binding_id}",
    permission="users:admin",
    response=BindingItem,
    summary="Remove a binding (not the last global admin's)",
)
async def delete_binding(request: web.Request) -> web.Response:
    svc = services(request)
    who = principal(request)
    async with svc.sessions.begin() as session:
        binding = await session.get(Binding, request.match_info["binding_id"])
        if binding is None:
            raise NotFound("not found")
        who.require("users:admin", binding.site_id)
        role = await session.get(Role, binding.role)
        if role is not None and not rbac.can_grant(who.rights, role.permissions, binding.site_id):
            raise Invalid(
                "you cannot remove a binding with more rights than yours",
                fields={"binding_id": "beyond your own rights"},
            )
        if binding.role == "admin" and binding.site_id is None:
            await _guard_last_admin(session, binding.user_id, "binding_id")
        info = (await binding_infos(session, [binding]))[0]
        await session.delete(binding)
        await auditlog.append(
            session,
            who.actor(),
            Event(
                "binding.delete",
                target_type="binding",
                target_id=binding.id,
                site_id=binding.site_id,
                details={"user_id": binding.user_id, "role": binding.role, "scope": info.scope},
            ),
        )
    return json_response(BindingItem(**info.model_dump(), user_id=binding.user_id))


# --- sites -----------------------------------------------------------------------------------


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


class SiteList(BaseModel):
    items: list[SiteItem]
    next: str | None = None


class NewSite(BaseModel):
    name: str = Field(pattern=SITE_NAME)
    description: str = Field("", max_length=1000)
    calendar: Calendar | None = None
    session_policy: SessionPolicyIn | None = None


class SitePatch(BaseModel):
    name: str | None = Field(None, pattern=SITE_NAME)
    description: str | None = Field(None, max_length=1000)
    calendar: Calendar | None = Field(None, description="business hours for SLA clocks")
    session_policy: SessionPolicyIn | None = None


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


def _apply(site: Site, calendar: Calendar | None, session_policy: SessionPolicyIn | None) -> None:
    if calendar is not None:
        site.timezone = calendar.timezone
        site.work_days = calendar.work_days
        site.work_start, site.work_end = calendar.work_start, calendar.work_end
        site.holidays = [d.isoformat() for d in calendar.holidays]
    if session_policy is not None:
        site.session_policy = session_policy.model_dump()


@routes.route(
    "GET",
    "/api/v1/sites",
    permission="users:admin",
    response=SiteList,
    summary="Sites you administer",
)
async def list_sites(request: web.Request) -> web.Response:
    scope = principal(request).sites("users:admin")
    async with services(request).sessions() as session:
        sites = await people.list_sites(session)
    return json_response(
        SiteList(items=[site_item(s) for s in sites if scope is None or s.id in scope])
    )


@routes.route(
    "POST",
    "/api/v1/sites",
    errors=(409,),
    permission="users:admin",
    body=NewSite,
    response=SiteItem,
    status=201,
    summary="Create a site",
)
async def create_site(request: web.Request) -> web.Response:
    svc = services(request)
    who = principal(request)
    who.require("users:admin", None)
    req = body(request, NewSite)
    async with svc.sessions.begin() as session:
        if await people.site_by_name(session, req.name) is not None:
            raise Conflict("site exists", fields={"name": "already taken"})
        site = Site(name=req.name, description=req.description)
        _apply(site, req.calendar or Calendar(), req.session_policy)
        session.add(site)
        await session.flush()
        await auditlog.append(
            session,
            who.actor(),
            Event(
                "site.create",
                target_type="site",
                target_id=site.id,
                site_id=site.id,
                details={"name": site.name},
            ),
        )
    return json_response(site_item(site), status=201)


async def _load_site(session: AsyncSession, request: web.Request, who: Principal) -> Site:
    site = await session.get(Site, request.match_info["site_id"])
    if site is None:
        raise NotFound("not found")
    who.require("users:admin", site.id)
    return site


@routes.route(
    "GET",
    "/api/v1/sites/{site_id}",
    permission="users:admin",
    response=SiteItem,
    summary="One site",
)
async def get_site(request: web.Request) -> web.Response:
    async with services(request).sessions() as session:
        site = await _load_site(session, request, principal(request))
    return json_response(site_item(site))


@routes.route(
    "PATCH",
    "/api/v1/sites/{site_id}",
    errors=(409,),
    permission="users:admin",
    body=SitePatch,
    response=SiteItem,
    summary="Rename or describe a site",
)
async def patch_site(request: web.Request) -> web.Response:
    svc = services(request)
    who = principal(request)
    req = body(request, SitePatch)
    async with svc.sessions.begin() as session:
        site = await _load_site(session, request, who)
        if req.name is not None and req.name != site.name:
            if await people.site_by_name(session, req.name) is not None:
                raise Conflict("site exists", fields={"name": "already taken"})
            site.name = req.name
        if req.description is not None:
            site.description = req.description
        _apply(site, req.calendar, req.session_policy)
        await auditlog.append(
            session,
            who.actor(),
            Event(
                "site.update",
                target_type="site",
                target_id=site.id,
                site_id=site.id,
                details={"name": site.name, **req.model_dump(mode="json", exclude_none=True)},
            ),
        )
    return json_response(site_item(site))


@routes.route(
    "DELETE",
    "/api/v1/sites/{site_id}",
    errors=(409,),
    permission="users:admin",
    response=SiteItem,
    summary="Delete a site that has no agents and no tickets",
)
async def delete_site(request: web.Request) -> web.Response:
    svc = services(request)
    who = principal(request)
    who.require("users:admin", None)
    async with svc.sessions.begin() as session:
        site = await _load_site(session, request, who)
        # Tickets are records and stay; agents must be revoked and removed first.
        held = {
            what: await session.scalar(
                select(func.count()).select_from(model).where(model.site_id == site.id)
            )
            for what, model in (("agent(s)", Agent), ("ticket(s)", Ticket))
        }
        if any(held.values()):
            holders = " and ".join(f"{n} {what}" for what, n in held.items() if n)
            raise Conflict(
                f"site {site.name} still has {holders}; a site with agents or tickets "
                "cannot be deleted (revoke and remove its agents; tickets are kept as records)",
                extra={"agents": held["agent(s)"], "tickets": held["ticket(s)"]},
            )
        item = site_item(site)
        await session.delete(site)
        await auditlog.append(
            session,
            who.actor(),
            Event(
                "site.delete",
                target_type="site",
                target_id=site.id,
                site_id=site.id,
                details={"name": site.name},
            ),
        )
    return json_response(item)
