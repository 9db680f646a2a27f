"""Logging set-up shared by agent and HQ: structlog, JSON in production,
readable key-value lines on a terminal.

A redaction processor drops the values of keys that name secrets, so a
careless `log.info("x", token=...)` still cannot leak one.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_WORDS = ("password", "secret", "token", "private_key", "totp", "authorization", "cookie")


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace the value of any key that names a secret with `[redacted]`."""
    for key in list(event_dict):
        lowered = key.lower()
        if any(word in lowered for word in _SECRET_WORDS) and not lowered.endswith(
            ("_id", "_count", "_fingerprint")
        ):
            event_dict[key] = "[redacted]"
    return event_dict


def configure(*, json: bool | None = None, level: str = "info", stream: Any = None) -> None:
    """Configure structlog once per process. `json=None` picks JSON unless on a TTY."""
    out = stream if stream is not None else sys.stderr
    if json is None:
        json = not out.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(
            colors=out.isatty(),
            # Never print local variables in tracebacks: they may hold secrets.
            exception_formatter=structlog.dev.plain_traceback,
        )
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # asyncssh logs through the stdlib; keep it quiet unless something is wrong.
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
