"""The engineer's stored login, and the environment that may replace it.

`fieldlink login` writes `login.json` (mode 0600, in a 0700 directory) into
the user's config dir: `$FIELDLINK_CONFIG_DIR`, else
`$XDG_CONFIG_HOME/fieldlink`, else `~/.config/fieldlink`. It holds HQ's URL,
the pinned SHA-256 fingerprint of HQ's TLS certificate, the bearer token, its
expiry and the user name.

For scripts, `FIELDLINK_SERVER`, `FIELDLINK_TOKEN` and
`FIELDLINK_TLS_FINGERPRINT` replace the stored login field by field. A
`FIELDLINK_SERVER` naming another HQ than the stored one ignores the stored
token and fingerprint (they belong to that other HQ).

The environment is read once, by `commands.run`, and passed in here.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from server.client.errors import ConfigError
from shared.enrolltoken import TokenFormatError, normalize_fingerprint

FILE_NAME = "login.json"
ENV_SERVER = "FIELDLINK_SERVER"
ENV_TOKEN = "FIELDLINK_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_FINGERPRINT = "FIELDLINK_TLS_FINGERPRINT"
ENV_CONFIG_DIR = "FIELDLINK_CONFIG_DIR"


@dataclass(frozen=True)
class Login:
    """Where HQ is, how to recognise it, and who we are there."""

    url: str
    fingerprint: str
    token: str
    expires_at: str | None = None
    username: str | None = None

    def __repr__(self) -> str:  # the token never lands in a traceback or a log
        return f"Login(url={self.url!r}, username={self.username!r}, token=***)"

    def expired(self, now: datetime | None = None) -> bool:
        if not self.expires_at:
            return False
        try:
            when = datetime.fromisoformat(self.expires_at)
        except ValueError:
            return False
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when <= (now or datetime.now(UTC))


def normalize_url(value: str) -> str:
    """`hq.example:8443` -> `https://hq.example:8443`; refuses plain http."""
    text = value.strip().rstrip("/")
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    if parts.scheme != "https":
        raise ConfigError(f"{value}: HQ is reached over HTTPS only (https://HOST:PORT)")
    if not parts.hostname:
        raise ConfigError(f"{value}: not a URL (expected https://HOST:PORT)")
    return text


def fingerprint(value: str) -> str:
    """A SHA-256 fingerprint in our one spelling (64 lower-case hex digits)."""
    try:
        return normalize_fingerprint(value)
    except TokenFormatError as exc:
        raise ConfigError(f"{value!r}: {exc}") from None


def config_dir(environ: Mapping[str, str]) -> Path:
    if environ.get(ENV_CONFIG_DIR):
        return Path(environ[ENV_CONFIG_DIR])
    if environ.get("XDG_CONFIG_HOME"):
        return Path(environ["XDG_CONFIG_HOME"]) / "fieldlink"
    home = environ.get("HOME")
    return (Path(home) if home else Path.home()) / ".config" / "fieldlink"


def load(directory: Path) -> Login | None:
    """The stored login, or None when there is none."""
    path = directory / FILE_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; run `fieldlink login URL` again") from None
    try:
        return Login(
            url=str(raw["url"]),
            fingerprint=fingerprint(str(raw["fingerprint"])),
            token=str(raw["token"]),
            expires_at=raw.get("expires_at"),
            username=raw.get("username"),
        )
    except (KeyError, TypeError):
        raise ConfigError(f"{path} is incomplete; run `fieldlink login URL` again") from None


def save(directory: Path, login: Login) -> Path:
    """Write the login readable by its owner only (dir 0700, file 0600), atomically."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    path = directory / FILE_NAME
    tmp = directory / f".{FILE_NAME}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(login), out, indent=2)
            out.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path


def delete(directory: Path) -> bool:
    """Forget the stored login; True if there was one."""
    try:
        (directory / FILE_NAME).unlink()
    except FileNotFoundError:
        return False
    return True


def effective(environ: Mapping[str, str], stored: Login | None) -> Login:
    """The login to use: the stored one, with what the environment replaces."""
    env_url = environ.get(ENV_SERVER, "").strip()
    env_token = environ.get(ENV_TOKEN, "").strip()
    env_fp = environ.get(ENV_FINGERPRINT, "").strip()
    base = stored
    url = normalize_url(env_url) if env_url else None
    if base is not None and url is not None and url != base.url:
        base = None  # another HQ: the stored token and pin are not for it
    if base is None and not env_url:
        if env_token or env_fp:
            raise ConfigError(f"{ENV_TOKEN}/{ENV_FINGERPRINT} are set but {ENV_SERVER} is not")
        raise ConfigError(
            "not logged in: run `fieldlink login URL` "
            f"(or set {ENV_SERVER}, {ENV_TOKEN} and {ENV_FINGERPRINT})"
        )
    found_fp = fingerprint(env_fp) if env_fp else (base.fingerprint if base else "")
    token = env_token or (base.token if base else "")
    if not found_fp:
        raise ConfigError(
            f"no TLS fingerprint for {url}: set {ENV_FINGERPRINT} "
            "(`fieldlink admin fingerprint` on HQ prints it) or run `fieldlink login URL`"
        )
    if not token:
        raise ConfigError(f"no token for {url}: set {ENV_TOKEN} or run `fieldlink login URL`")
    return Login(
        url=url or (base.url if base else ""),
        fingerprint=found_fp,
        token=token,
        # an expiry or name known for the stored token says nothing about another one
        expires_at=base.expires_at if base and not env_token else None,
        username=base.username if base and not env_token else None,
    )
