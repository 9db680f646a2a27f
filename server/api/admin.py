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
from server.ops import accounts
from server.store import people
from server.views.admin import UserItem, user_item, visible_user, visible_users
from server.web.act import act, answer, audit, unit
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
    async with unit(request) as (session, who):
        scope = who.sites("users:admin")
        users = await visible_users(session, scope)
        items = [await user_item(session, u, scope) for u in users]
    return json_response(UserList(items=items))


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
    req = body(request, NewUser)
    async with unit(request) as (session, who):
        if who.via == "token" and not who.explicitly("users:admin"):
            raise NotFound("not found")
        generated = None if req.password is not None else new_password()
        user = await accounts.create_user(
            session,
            username=req.username,
            password=req.password or generated,
            actor=who.actor(),
            display_name=req.display_name,
            email=req.email,
        )
        item = await user_item(session, user)
        return answer(request, CreatedUser(**item.model_dump(), password=generated))


@routes.route(
    "GET",
    "/api/v1/users/{user_id}",
    permission="users:admin",
    response=UserItem,
    summary="One user",
)
async def get_user(request: web.Request) -> web.Response:
    async with act(request, visible_user) as (session, user, who):
        return answer(request, await user_item(session, user, who.sites("users:admin")))


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
    req = body(request, UserPatch)
    async with act(request, visible_user) as (session, user, who):
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
        details = {"username": user.username, "changed": changed, "disabled": user.disabled}
        await audit(session, who, "user.update", ("user", user.id), details=details)
        return answer(request, await user_item(session, user))


@routes.route(
    "DELETE",
    "/api/v1/users/{user_id}",
    errors=(409,),
    permission="users:admin",
    response=UserItem,
    summary="Delete a user (their bindings, sessions and tokens go with them)",
)
async def delete_user(request: web.Request) -> web.Response:
    async with act(request, visible_user) as (session, user, who):
        who.require("users:admin", None)
        await guard_last_admin(session, user.id, "user_id")
        item = await user_item(session, user)
        for binding in await people.bindings_of(session, [user.id]):
            await session.delete(binding)
        await session.delete(user)
        await audit(
            session, who, "user.delete", ("user", user.id), details={"username": user.username}
        )
    return answer(request, item)
