"""argparse helpers shared by every engineer command: help text filling, the
parser that lets key=value words and options mix, argument types, and the
numbers of tickets, problems, changes and articles as typed."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from typing import Any, TypeVar

from server.client.errors import UsageError

N = TypeVar("N", int, float)


class IntermixedParser(argparse.ArgumentParser):
    """Lets key=value words and options come in any order (`run A N --json n=5`)."""

    _intermixed = False

    def parse_known_args(  # type: ignore[override]  # same signature, typeshed overloads it
        self, args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._intermixed:
            return super().parse_known_args(args, namespace)
        self._intermixed = True
        try:
            return super().parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixed = False


def duration(text: str) -> int:
    """`30m`, `1h`, `2d` -> whole seconds (at least 1)."""
    from shared.durations import parse_duration

    try:
        return max(1, round(parse_duration(text).total_seconds()))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def number(
    kind: Callable[[str], N], fits: Callable[[N], bool], what: str, bounds: str
) -> Callable[[str], N]:
    """An argument type: the text as `kind` (else "not WHAT: 'text'"), where
    `fits` holds (else `bounds`, which says where it must lie)."""

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not fits(value):
            raise argparse.ArgumentTypeError(bounds)
        return value

    return parse


seconds = number(
    float, lambda v: 0 < v <= 3600, "a number of seconds", "between 0 and 3600 seconds"
)


def priority(text: str) -> str:
    """A ticket or problem priority, P1-P4 (any case)."""
    value = text.strip().upper()
    if value not in ("P1", "P2", "P3", "P4"):
        raise argparse.ArgumentTypeError("P1, P2, P3 or P4")
    return value


def level(text: str) -> int:
    """An impact or urgency level: 1 (high), 2 or 3 (low)."""
    if text.strip() not in ("1", "2", "3"):
        raise argparse.ArgumentTypeError("1 (high), 2 or 3 (low)")
    return int(text)


# a list's --limit: 1 to 10,000
count = number(int, lambda v: 1 <= v <= 10_000, "a number", "between 1 and 10000")


def numbered(ref: str, prefix: str, needed: str) -> str:
    """`prb-7`, `7` -> `PRB-7` (for `prefix` PRB); ids pass through; a blank
    one is a usage error: `needed` ("a problem number (PRB-7)") is needed. Pure."""
    text = ref.strip()
    if text.isdigit():
        return f"{prefix}-{text}"
    if text.lower().startswith(prefix.lower() + "-"):
        return f"{prefix}-" + text[len(prefix) + 1 :]
    if not text:
        raise UsageError(f"{needed} is needed")
    return text


def wrap(text: str) -> str:
    """Fill each paragraph to 78 columns; lines indented by two spaces (examples) stay."""
    out: list[str] = []
    for para in text.split("\n\n"):
        if para.startswith("  ") or "\n  " in para:
            out.append(para)
        else:
            out.append(textwrap.fill(para, 78))
    return "\n\n".join(out)


def add_command(
    sub: Any, name: str, *, intermixed: bool = False, **kw: Any
) -> argparse.ArgumentParser:
    """A subcommand with filled description/epilog, examples kept as written."""
    for key in ("description", "epilog"):
        if key in kw:
            kw[key] = wrap(kw[key])
    # argparse builds each subparser with the action's parser class; ours
    # need the intermixed one, so swap it in for the call only.
    previous = sub._parser_class
    if intermixed:
        sub._parser_class = IntermixedParser
    try:
        parser: argparse.ArgumentParser = sub.add_parser(
            name, formatter_class=argparse.RawDescriptionHelpFormatter, **kw
        )
    finally:
        sub._parser_class = previous
    return parser
