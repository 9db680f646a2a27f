"""TOTP (RFC 6238) second factor: 30-second steps, 6 digits, one step of
clock drift either way, and no code accepted twice (the last used step is
remembered per user)."""

from __future__ import annotations

import time

import pyotp

ISSUER = "Fieldlink"
DRIFT_STEPS = 1


def new_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, username: str) -> str:
    return str(pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=ISSUER))


def matching_step(
    secret: str, code: str, last_step: int | None, now: float | None = None
) -> int | None:
    """The time step the code belongs to, if it is valid and newer than
    `last_step`; None otherwise. Pure apart from reading the clock."""
    code = code.strip().replace(" ", "")
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    t = time.time() if now is None else now
    current = int(t // totp.interval)
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if last_step is not None and step <= last_step:
            continue
        if pyotp.utils.strings_equal(totp.generate_otp(step), code):
            return step
    return None


def code_for(secret: str, now: float | None = None) -> str:
    """The current code (for tests and the CLI's own checks)."""
    return str(pyotp.TOTP(secret).at(time.time() if now is None else now))
