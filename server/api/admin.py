"""Administration of users (`users:admin`); roles and bindings are in
`server.api.roles`, sites in `server.api.sites`.

Rules: nobody grants a permission on a scope they do not hold it on; the
last enabled global admin cannot be removed, disabled or unbound; built-in
roles cannot be changed. Users and roles are global objects: changing them
needs users:admin globally; a site-scoped admin manages bindings on its site
and sees only the users bound to its sites (or to none yet): any other user
answers 404, as if it did not exist.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.secrets import hash_password, new_password
from server.base.audit import Event
from server.ops import accounts
from server.store import auditlog, people
from server.store.models import User
from server.views.admin import (
    UserItem,
    user_item,
    visible_users,
)
from server.web.authn import principal
from server.web.keys import DB
from server.web.routing import ApiRouter, body, json_response
from shared.errors import Conflict, NotFound

routes = ApiRouter("administration")


# --- users ---------------------------------------------------------------------------


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


@routes.route(
    "GET",
    "/api/v1/users",
    permission="users:admin",
    response=UserList,
    summary="Users, with their bindings",
)
async def list_users(request: web.Request) -> web.Response:
    scope = principal(request).sites("users:admin")
    async with request.app[DB]() as session:
        users = await visible_users(session, scope)
        items = [await user_item(session, u, scope) for u in users]
    return json_response(UserList(items=items))


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
    app = request.app
    who = principal(request)
    req = body(request, NewUser)
    if who.via == "token" and not who.explicitly("users:admin"):
        raise NotFound("not found")
    generated = None if req.password is not None else new_password()
    async with app[DB].begin() as session:
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
    async with request.app[DB]() as session:
        item = await user_item(session, await _load_user(session, request), scope)
    return json_response(item)


async def guard_last_admin(session: AsyncSession, user_id: str, field: str) -> None:
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
    app = request.app
    who = principal(request)
    req = body(request, UserPatch)
    async with app[DB].begin() as session:
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
                await guard_last_admin(session, user.id, "disabled")
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
    app = request.app
    who = principal(request)
    async with app[DB].begin() as session:
        user = await _load_user(session, request)
        who.require("users:admin", None)
        await guard_last_admin(session, user.id, "user_id")
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
