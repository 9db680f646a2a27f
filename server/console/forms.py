"""Form fields from a catalog entry's parameter JSON schema (pure: no I/O).

The agent advertises each entry's parameters as the JSON schema of its
pydantic model; the machine page turns that into labelled inputs. Types map
to inputs (integer/number -> number, boolean -> checkbox, enum -> select,
array of strings -> comma-separated text, anything else -> text); `anyOf`
with null makes a field optional. HQ validates the values against the same
schema again, and the agent once more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    input: str  # number | checkbox | select | text
    data_type: str  # what common.js sends: int, float, list, or "" for text
    required: bool
    default: Any = None
    options: tuple[str, ...] = ()
    description: str = ""
    attrs: dict[str, str] = field(default_factory=dict)


def _resolve(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = prop.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = defs.get(ref.removeprefix("#/$defs/"), {})
        return {**target, **{k: v for k, v in prop.items() if k != "$ref"}}
    return prop


def _unwrap(prop: dict[str, Any], defs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The non-null branch of `anyOf: [X, null]`, and whether null was allowed."""
    options = prop.get("anyOf")
    if isinstance(options, list):
        real = [_resolve(o, defs) for o in options if o.get("type") != "null"]
        nullable = len(real) < len(options)
        if len(real) == 1:
            merged = {**real[0], **{k: v for k, v in prop.items() if k != "anyOf"}}
            return merged, nullable
    return _resolve(prop, defs), False


def fields_of(schema: dict[str, Any]) -> list[Field]:
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    out: list[Field] = []
    for name, raw in (schema.get("properties") or {}).items():
        prop, nullable = _unwrap(raw, defs)
        kind = prop.get("type")
        label = str(prop.get("title") or name.replace("_", " ").capitalize())
        common: dict[str, Any] = {
            "name": name,
            "label": label,
            "required": name in required and not nullable,
            "default": prop.get("default"),
            "description": str(prop.get("description") or ""),
        }
        attrs: dict[str, str] = {}
        if "enum" in prop:
            out.append(
                Field(
                    **common,
                    input="select",
                    data_type="",
                    options=tuple(str(v) for v in prop["enum"]),
                )
            )
            continue
        if kind in ("integer", "number"):
            for key, attr in (("minimum", "min"), ("maximum", "max")):
                if key in prop:
                    attrs[attr] = str(prop[key])
            attrs["step"] = "1" if kind == "integer" else "any"
            data_type = "int" if kind == "integer" else "float"
            out.append(Field(**common, input="number", data_type=data_type, attrs=attrs))
        elif kind == "boolean":
            out.append(Field(**common, input="checkbox", data_type="bool"))
        elif kind == "array":
            out.append(Field(**common, input="text", data_type="list"))
        else:
            if "maxLength" in prop:
                attrs["maxlength"] = str(prop["maxLength"])
            out.append(Field(**common, input="text", data_type="", attrs=attrs))
    return out
