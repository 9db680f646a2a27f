"""Checking run parameters against the JSON schema an agent advertised.

An agent's catalog is input from a machine HQ does not control, so its schemas
are treated as hostile:

- At hello, `vet_catalog()` keeps only entries whose schema HQ can check in
  bounded time: at most `MAX_SCHEMA_BYTES` of JSON nested at most
  `MAX_SCHEMA_DEPTH` deep, a valid draft 2020-12 schema, only local `$ref`s,
  none of the keywords that re-evaluate whole subtrees (`unevaluated*`,
  `$dynamicRef`), and every `pattern` / `patternProperties` key a regular
  expression RE2 compiles. RE2 matches in time linear in the input, so a
  pattern such as `^(a+)+$` cannot make HQ backtrack; patterns RE2 refuses
  (backreferences, lookaround) drop the entry. A refused entry is logged
  (`agent_catalog_entry_refused`) and is not offered: running it answers 422.
- `validate_params()` runs the check on a small thread pool with a deadline
  (`CHECK_SECONDS`) that every keyword checks as it goes, so neither a big
  input nor a schema built to explode (nested `anyOf` through `$ref`s) holds
  HQ's event loop or a thread for long. It vets the schema again first: a
  catalog stored before these rules is held to them too.

Patterns follow RE2's syntax, the JSON Schema (ECMA-262) meaning of `^` and `$`
(the ends of the text), as the agent's own validation (pydantic) does.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import re2
import structlog
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator

from shared import protocol as p
from shared.errors import Invalid

log = structlog.get_logger(__name__)

MAX_SCHEMA_BYTES = 16 * 1024
MAX_SCHEMA_DEPTH = 24
MAX_PATTERN_CHARS = 1000
MAX_CATALOG_ENTRIES = 256
CHECK_SECONDS = 2.0
REFUSED_KEYWORDS = frozenset({"unevaluatedProperties", "unevaluatedItems", "$dynamicRef"})

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False
_OPTIONS.max_mem = 8 << 20

_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="paramcheck")
_deadline: contextvars.ContextVar[float] = contextvars.ContextVar(
    "paramcheck_deadline", default=float("inf")
)


class SchemaRefused(ValueError):
    """A schema HQ will not check parameters against (the reason is the message)."""


class CheckTimeout(Exception):
    pass


@functools.lru_cache(maxsize=2048)
def regex(pattern: str) -> Any:
    """The pattern compiled by RE2 (cached); SchemaRefused if RE2 cannot."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise SchemaRefused(f"a pattern is longer than {MAX_PATTERN_CHARS} characters")
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise SchemaRefused(
            f"pattern {pattern[:80]!r} is not linear-time (RE2: {reason})"
        ) from None


def _walk(node: Any, depth: int) -> Iterator[tuple[str, Any]]:
    """Every (key, value) of every object in the schema; SchemaRefused past the depth cap."""
    if depth > MAX_SCHEMA_DEPTH:
        raise SchemaRefused(f"nested deeper than {MAX_SCHEMA_DEPTH}")
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value, depth + 1)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value, depth + 1)


def vet_schema(schema: Any) -> None:
    """Raise SchemaRefused unless HQ can check parameters against `schema` in bounded time."""
    if not isinstance(schema, dict):
        raise SchemaRefused("not a JSON object")
    pairs = list(_walk(schema, 1))  # the depth first: what follows recurses
    size = len(json.dumps(schema, separators=(",", ":")))
    if size > MAX_SCHEMA_BYTES:
        raise SchemaRefused(f"{size} bytes of schema, more than {MAX_SCHEMA_BYTES}")
    for key, value in pairs:
        if key in REFUSED_KEYWORDS:
            raise SchemaRefused(f"uses {key}, which HQ does not check")
        if key == "$ref" and not (isinstance(value, str) and value.startswith("#")):
            raise SchemaRefused(f"$ref {str(value)[:80]!r} is not local to the schema")
        if key == "pattern" and isinstance(value, str):
            regex(value)
        if key == "patternProperties" and isinstance(value, dict):
            for each in value:
                regex(each)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise SchemaRefused(f"not a valid JSON schema: {exc.message[:200]}") from None
    except RecursionError:
        raise SchemaRefused("not a valid JSON schema: it refers to itself endlessly") from None


def vet_catalog(entries: list[p.CatalogEntry]) -> tuple[list[p.CatalogEntry], dict[str, str]]:
    """The entries HQ offers, and why each other one is refused (by name)."""
    kept: list[p.CatalogEntry] = []
    refused: dict[str, str] = {}
    for i, entry in enumerate(entries):
        if i >= MAX_CATALOG_ENTRIES:
            refused[entry.name] = f"more than {MAX_CATALOG_ENTRIES} catalog entries"
            continue
        try:
            vet_schema(entry.params_schema)
        except SchemaRefused as exc:
            refused[entry.name] = str(exc)
        else:
            kept.append(entry)
    return kept, refused


# --- the validator: RE2 for patterns, a deadline on every keyword ----------------------


def _tick() -> None:
    if time.monotonic() > _deadline.get():
        raise CheckTimeout


def _pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and regex(patrn).search(instance) is None:
        shown = instance if len(instance) <= 60 else instance[:60] + "..."
        yield ValidationError(f"{shown!r} does not match {patrn!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for patrn, subschema in patterns.items():
        for key, value in instance.items():
            if regex(patrn).search(key) is not None:
                yield from validator.descend(value, subschema, path=key, schema_path=patrn)


def _additional_properties(
    validator: Any, extra: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    named = schema.get("properties", {})
    patterns = [regex(x) for x in schema.get("patternProperties", {})]
    extras = sorted(
        k for k in instance if k not in named and not any(r.search(k) for r in patterns)
    )
    if validator.is_type(extra, "object"):
        for key in extras:
            yield from validator.descend(instance[key], extra, path=key)
    elif not extra and extras:
        listed = ", ".join(repr(k[:60]) for k in extras[:10])
        yield ValidationError(f"Additional properties are not allowed ({listed} unexpected)")


def _timed(check: Callable[..., Any]) -> Callable[..., Iterator[ValidationError]]:
    def run(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
        _tick()
        for error in check(validator, value, instance, schema) or ():
            _tick()
            yield error

    return run


def _refuse(name: str) -> Callable[..., Iterator[ValidationError]]:
    def run(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
        raise SchemaRefused(f"uses {name}, which HQ does not check")

    return run


_KEYWORDS: dict[str, Callable[..., Any]] = {
    **Draft202012Validator.VALIDATORS,
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
}
for _name in REFUSED_KEYWORDS:
    _KEYWORDS[_name] = _refuse(_name)

SafeValidator: type[Validator] = jsonschema.validators.extend(
    Draft202012Validator, validators={k: _timed(v) for k, v in _KEYWORDS.items()}
)


def _errors(
    schema: dict[str, Any], params: dict[str, Any], seconds: float
) -> list[ValidationError]:
    _deadline.set(time.monotonic() + seconds)
    vet_schema(schema)
    return sorted(
        SafeValidator(schema).iter_errors(params), key=lambda e: [str(x) for x in e.absolute_path]
    )


async def validate_params(
    schema: dict[str, Any] | None, params: dict[str, Any], seconds: float = CHECK_SECONDS
) -> None:
    """Check params against the agent's advertised JSON schema, off the event
    loop and within `seconds`; 422 naming the field (or `params` when the
    schema itself cannot be used)."""
    if schema is None:
        return
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    try:
        errors = await asyncio.wait_for(
            loop.run_in_executor(_pool, ctx.run, _errors, schema, params, seconds),
            timeout=seconds + 5.0,
        )
    except (CheckTimeout, TimeoutError):
        raise Invalid(
            "the parameters could not be checked in time against the agent's schema",
            fields={"params": f"not checked within {seconds:g} s"},
        ) from None
    except (SchemaRefused, RecursionError) as exc:
        why = str(exc) if isinstance(exc, SchemaRefused) else "it refers to itself endlessly"
        raise Invalid(
            "the agent's parameter schema for this entry cannot be used",
            fields={"params": why},
        ) from None
    if not errors:
        return
    fields: dict[str, str] = {}
    for err in errors:
        path = ".".join(str(x) for x in err.absolute_path)
        if not path and err.validator == "required":
            missing = err.message.split("'")[1] if "'" in err.message else "params"
            path = missing
        if not path and err.validator == "additionalProperties":
            path = "params"
        fields.setdefault(f"params.{path}" if path != "params" else "params", err.message)
    raise Invalid("invalid parameters", fields=fields)
