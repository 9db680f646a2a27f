"""Engineer commands of `fieldlink` (login, agents, run, exec, job, ...)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the engineer subcommands to `fieldlink`'s parser."""


def run(args: argparse.Namespace) -> int:
    raise SystemExit(f"fieldlink: unknown command {args.command}")
