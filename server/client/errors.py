"""What can go wrong in the engineer CLI, each with the exit status it ends in.

    ClientError (exit 1)
    ├── ConfigError      no usable login (config.py)
    ├── UsageError       the command line asks for something impossible (exit 2)
    ├── ApiError         HQ answered with its error shape (status, code, fields)
    └── Unreachable      connection, TLS, pin mismatch, timeouts (http.py maps aiohttp's)
        └── IdleTimeout  a stream went quiet for too long

Foreign exceptions (aiohttp, ssl, OSError) are mapped to these at the edge in
`http.py`; commands only ever see this tree.
"""

from __future__ import annotations


class ClientError(Exception):
    """Root: the command failed; `message` says why, for a person."""

    exit_status = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(ClientError):
    """The login is missing, unreadable or incomplete."""


class UsageError(ClientError):
    """The arguments cannot be turned into a request."""

    exit_status = 2


class ApiError(ClientError):
    """HQ refused the request: `{"error": {"code", "message", "fields", "allowed"?}}`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: dict[str, str] | None = None,
        retry_after: str | None = None,
        allowed: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.fields = fields or {}
        self.retry_after = retry_after
        self.allowed = allowed  # a 409 on a ticket: the actions allowed from its status


class Unreachable(ClientError):
    """HQ could not be reached or could not be trusted."""


class IdleTimeout(Unreachable):
    """Nothing arrived on a stream for the allowed time."""
