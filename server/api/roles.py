"""Roles and role bindings (`users:admin`): the permissions a role may bundle,
custom roles, and the bindings that give a user a role globally or on a site."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.api.admin import guard_last_admin
from server.auth import rbac
from server.auth.principal import Principal
from server.ops import accounts
from server.store import people
from server.store.models import Binding, Role, User
from server.views.accounts import BindingInfo, binding_infos
from server.views.admin import RoleItem, role_item, sees_user
from server.views.rows import row_in_scope
from server.web.act import act, answer, audit, unit
from server.web.routing import ApiRouter, body, json_response, query
from shared.errors import Conflict, Invalid, NotFound

routes = ApiRouter("administration")

ROLE_NAME = r"^[a-z][a-z0-9_]{1,63}$"


# --- roles ---------------------------------------------------------------------------------


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
    async with unit(request) as (session, _):
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
    req = body(request, NewRole)
    async with unit(request) as (session, who):
        who.require("users:admin", None)
        perms = _check_permissions(who, req.permissions)
        if await session.get(Role, req.name) is not None:
            raise Conflict("role exists", fields={"name": "already taken"})
        role = Role(name=req.name, description=req.description, permissions=perms, builtin=False)
        session.add(role)
        await audit(session, who, "role.create", ("role", req.name), details={"permissions": perms})
        return answer(request, role_item(role))


async def _custom_role(session: AsyncSession, who: Principal, name: str) -> Role:
    """A custom role an admin with users:admin on the global scope may change."""
    who.require("users:admin", None)
    role = await session.get(Role, name)
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
    req = body(request, RolePatch)
    async with act(request, _custom_role) as (session, role, who):
        if req.permissions is not None:
            role.permissions = _check_permissions(who, req.permissions)
        if req.description is not None:
            role.description = req.description
        details = {"permissions": role.permissions}
        await audit(session, who, "role.update", ("role", role.name), details=details)
        return answer(request, role_item(role))


@routes.route(
    "DELETE",
    "/api/v1/roles/{name}",
    errors=(409,),
    permission="users:admin",
    response=RoleItem,
    summary="Delete a custom role that no binding uses",
)
async def delete_role(request: web.Request) -> web.Response:
    async with act(request, _custom_role) as (session, role, who):
        used = await session.scalar(
            select(func.count()).select_from(Binding).where(Binding.role == role.name)
        )
        if used:
            raise Conflict(f"role is used by {used} binding(s); remove them first")
        item = role_item(role)
        await session.delete(role)
        await audit(session, who, "role.delete", ("role", role.name))
    return answer(request, item)


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
    q = query(request, BindingQuery)
    async with unit(request) as (session, who):
        scope = who.sites("users:admin")
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
    req = body(request, NewBinding)
    async with unit(request) as (session, who):
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
        if await _binding(session, user, role, site_id) is not None:
            raise Conflict("binding exists")
        site_name = req.scope.removeprefix("site:") if site_id else None
        await accounts.bind_role(
            session, user=user, role=role.name, site_name=site_name, actor=who.actor()
        )
        binding = await _binding(session, user, role, site_id)
        assert binding is not None
        info = (await binding_infos(session, [binding]))[0]
        return answer(request, BindingItem(**info.model_dump(), user_id=user.id))


async def _binding(
    session: AsyncSession, user: User, role: Role, site_id: str | None
) -> Binding | None:
    return await session.scalar(
        select(Binding).where(
            Binding.user_id == user.id,
            Binding.role == role.name,
            Binding.site_id.is_(None) if site_id is None else Binding.site_id == site_id,
        )
    )


async def _binding_in_scope(session: AsyncSession, who: Principal, binding_id: str) -> Binding:
    return await row_in_scope(session, who, Binding, binding_id, "users:admin", lambda b: b.site_id)


@routes.route(
    "DELETE",
    "/api/v1/bindings/{binding_id}",
    permission="users:admin",
    response=BindingItem,
    summary="Remove a binding (not the last global admin's)",
)
async def delete_binding(request: web.Request) -> web.Response:
    async with act(request, _binding_in_scope) as (session, binding, who):
        role = await session.get(Role, binding.role)
        if role is not None and not rbac.can_grant(who.rights, role.permissions, binding.site_id):
            raise Invalid(
                "you cannot remove a binding with more rights than yours",
                fields={"binding_id": "beyond your own rights"},
            )
        if binding.role == "admin" and binding.site_id is None:
            await guard_last_admin(session, binding.user_id, "binding_id")
        info = (await binding_infos(session, [binding]))[0]
        await session.delete(binding)
        details = {"user_id": binding.user_id, "role": binding.role, "scope": info.scope}
        target = ("binding", binding.id)
        await audit(
            session, who, "binding.delete", target, site_id=binding.site_id, details=details
        )
    return answer(request, BindingItem(**info.model_dump(), user_id=binding.user_id))
