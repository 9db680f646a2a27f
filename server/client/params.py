"""`key=value` words from the command line -> a catalog entry's JSON params.

Each value is typed by the parameter schema the agent advertises
(`GET /api/v1/agents/{id}/catalog`):

- `integer`, `number`: `n=5`, `timeout=2.5`
- `boolean`: `true/false`, `yes/no`, `on/off`, `1/0`
- `array`: repeat the key (`argv=ls argv=-l`) or separate items with commas
  (`tags=a,b`); a value starting with `[` is read as a JSON list, for items
  that contain commas (`argv=["echo","a,b"]`)
- `object`: a JSON object
- a parameter that may be null: an empty value (`path=`) sends null
- anything else, and any value that does not fit its type, is sent as the
  string it is, so HQ rejects it with 422 naming the field; unknown keys too.

Pure functions, no I/O.
"""

from __future__ import annotations

import json
from typing import Any

from server.client.errors import UsageError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def split_pairs(words: list[str]) -> list[tuple[str, str]]:
    """`["n=5", "sort=cpu"]` -> `[("n", "5"), ("sort", "cpu")]`."""
    pairs: list[tuple[str, str]] = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"{word!r} is not key=value (parameters are written key=value)")
        pairs.append((key.strip(), value))
    return pairs


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        found = (root.get("$defs") or {}).get(ref.removeprefix("#/$defs/"))
        if isinstance(found, dict):
            return found
    return schema


def types_of(schema: dict[str, Any], root: dict[str, Any] | None = None) -> list[str]:
    """The JSON types a property accepts, following anyOf/oneOf and local $refs."""
    root = root if root is not None else schema
    schema = _resolve(schema, root)
    found: list[str] = []
    kind = schema.get("type")
    if isinstance(kind, str):
        found.append(kind)
    elif isinstance(kind, list):
        found.extend(str(k) for k in kind)
    for key in ("anyOf", "oneOf"):
        for member in schema.get(key) or []:
            if isinstance(member, dict):
                found.extend(t for t in types_of(member, root) if t not in found)
    if not found and "enum" in schema:
        found.append("string")
    return found


def _items_schema(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    schema = _resolve(schema, root)
    if isinstance(schema.get("items"), dict):
        return _resolve(schema["items"], root)
    for key in ("anyOf", "oneOf"):
        for member in schema.get(key) or []:
            if isinstance(member, dict):
                member = _resolve(member, root)
                if member.get("type") == "array" and isinstance(member.get("items"), dict):
                    return _resolve(member["items"], root)
    return {}


def scalar(value: str, types: list[str]) -> Any:
    """One value typed by the first of `types` it fits; the string if none."""
    if "null" in types and (value == "" or (value == "null" and "string" not in types)):
        return None
    low = value.strip().lower()
    for kind in types:
        if kind == "boolean" and low in _TRUE | _FALSE:
            return low in _TRUE
        if kind == "integer":
            try:
                return int(value.strip(), 10)
            except ValueError:
                continue
        if kind == "number":
            try:
                as_int = int(value.strip(), 10)
            except ValueError:
                pass
            else:
                return as_int
            try:
                number = float(value)
            except ValueError:
                continue
            if number == number and abs(number) != float("inf"):  # no NaN or inf in JSON
                return number
        if kind == "object" and value.lstrip().startswith("{"):
            try:
                return json.loads(value)
            except ValueError:
                continue
    return value


def coerce(pairs: list[tuple[str, str]], schema: dict[str, Any] | None) -> dict[str, Any]:
    """Params for the API from key=value pairs, typed by the entry's schema."""
    schema = schema or {}
    props = schema.get("properties") or {}
    out: dict[str, Any] = {}
    for key, value in pairs:
        prop = props.get(key)
        if not isinstance(prop, dict):
            if key in out:
                raise UsageError(f"parameter {key!r} is given twice")
            out[key] = value  # unknown here: HQ names it in its 422
            continue
        types = types_of(prop, schema)
        if "array" in types:
            if value.lstrip().startswith("["):
                try:
                    items: list[Any] = list(json.loads(value))
                except (ValueError, TypeError):
                    raise UsageError(f"{key}: {value!r} is not a JSON list") from None
            else:
                item_types = types_of(_items_schema(prop, schema), schema) or ["string"]
                items = [scalar(part, item_types) for part in value.split(",")] if value else []
            previous = out.get(key)
            out[key] = [*(previous if isinstance(previous, list) else []), *items]
            continue
        if key in out:
            raise UsageError(f"parameter {key!r} is given twice (only lists take several values)")
        out[key] = scalar(value, [t for t in types if t != "string"] + ["string"])
    return out
