"""Enrollment tokens: what an admin hands to a site machine to enroll its agent.

A token carries everything the agent needs for a trusted first contact, as
`kubeadm join` does: HQ's URL, the SHA-256 fingerprint of HQ's TLS certificate
and a random secret. HQ stores only a hash of the secret.

    fl1.<base64url(JSON {"u": url, "f": fingerprint})>.<secret>
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from dataclasses import dataclass

PREFIX = "fl1"
_FP_RE = re.compile(r"^[0-9a-f]{64}$")


class TokenFormatError(ValueError):
    """The string is not an enrollment token."""


def normalize_fingerprint(value: str) -> str:
    """Lower-case hex without separators; accepts `AA:BB:..` and `sha256:` forms."""
    fp = value.strip().lower()
    fp = fp.removeprefix("sha256:").replace(":", "")
    if not _FP_RE.match(fp):
        raise TokenFormatError("fingerprint must be 64 hex digits (SHA-256)")
    return fp


def cert_fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate, as `normalize_fingerprint` writes it."""
    return hashlib.sha256(der).hexdigest()


def hash_secret(secret: str) -> str:
    """Tokens are 256-bit random, so one SHA-256 is the right storage hash."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class EnrollToken:
    url: str
    fingerprint: str
    secret: str

    @classmethod
    def new(cls, url: str, fingerprint: str) -> EnrollToken:
        return cls(url.rstrip("/"), normalize_fingerprint(fingerprint), secrets.token_urlsafe(32))

    def encode(self) -> str:
        head = json.dumps({"u": self.url, "f": self.fingerprint}, separators=(",", ":"))
        b64 = base64.urlsafe_b64encode(head.encode()).decode().rstrip("=")
        return f"{PREFIX}.{b64}.{self.secret}"

    @classmethod
    def parse(cls, text: str) -> EnrollToken:
        parts = text.strip().split(".")
        if len(parts) != 3 or parts[0] != PREFIX:
            raise TokenFormatError("not a Fieldlink enrollment token (expected fl1.<...>.<...>)")
        try:
            pad = "=" * (-len(parts[1]) % 4)
            head = json.loads(base64.urlsafe_b64decode(parts[1] + pad))
            url, fp = head["u"], head["f"]
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenFormatError("enrollment token header is damaged") from exc
        if not isinstance(url, str) or not url.startswith("https://"):
            raise TokenFormatError("enrollment token does not name an https:// HQ URL")
        if not isinstance(fp, str):
            raise TokenFormatError("enrollment token header is damaged")
        if not re.fullmatch(r"[A-Za-z0-9_-]{20,200}", parts[2]):
            raise TokenFormatError("enrollment token secret is damaged")
        return cls(url, normalize_fingerprint(fp), parts[2])

    @property
    def secret_hash(self) -> str:
        return hash_secret(self.secret)
