"""What the read models share about database rows: an `...Out` model filled
from a row's columns of the same names (the builder gives only what it
computes or renames), and a row by its key within the caller's scope."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.principal import Principal
from shared.errors import NotFound

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")


def from_row(model: type[M], row: object, **given: Any) -> M:
    """`model` with each field that names a column of `row` taken from it, and
    the fields in `given` as given (they win over a column of the same name).
    Only columns are read, never relationships (no lazy load)."""
    columns = inspect(type(row)).column_attrs.keys()
    values = {
        name: getattr(row, name)
        for name in model.model_fields
        if name not in given and name in columns
    }
    return model(**values, **given)


async def row_in_scope(
    session: AsyncSession,
    who: Principal,
    table: type[R],
    key: str,
    permission: str,
    site_of: Callable[[R], str | None],
) -> R:
    """The row of `table` with primary key `key`, if the caller holds
    `permission` on its site (`site_of(row)`); else 404, as one that does not
    exist."""
    row = await session.get(table, key)
    if row is None:
        raise NotFound("not found")
    who.require(permission, site_of(row))
    return row
