"""Fieldlink's error tree. Errors that reach HTTP carry `status` and `code`;
one middleware renders them as `{"error": {"code", "message", "fields"?}}`.

    FieldlinkError (500 internal)
    ├── BadRequest (400 bad_request)
    ├── Unauthorized (401 unauthorized)
    ├── Forbidden (403 forbidden)
    ├── NotFound (404 not_found)
    ├── Conflict (409 conflict)
    ├── PayloadTooLarge (413 too_large)
    ├── Invalid (422 invalid)
    ├── RateLimited (429 rate_limited)
    └── Unavailable (503 unavailable)
"""

from __future__ import annotations

from typing import Any


class FieldlinkError(Exception):
    status = 500
    code = "internal"

    def __init__(
        self,
        message: str,
        *,
        fields: dict[str, str] | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields
        self.headers = headers or {}
        self.extra = extra or {}
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields:
            err["fields"] = self.fields
        err.update(self.extra)
        return {"error": err}


class BadRequest(FieldlinkError):
    status, code = 400, "bad_request"


class Unauthorized(FieldlinkError):
    status, code = 401, "unauthorized"


class Forbidden(FieldlinkError):
    status, code = 403, "forbidden"


class NotFound(FieldlinkError):
    status, code = 404, "not_found"


class Conflict(FieldlinkError):
    status, code = 409, "conflict"


class PayloadTooLarge(FieldlinkError):
    status, code = 413, "too_large"


class Invalid(FieldlinkError):
    status, code = 422, "invalid"


class RateLimited(FieldlinkError):
    status, code = 429, "rate_limited"


class Unavailable(FieldlinkError):
    status, code = 503, "unavailable"
