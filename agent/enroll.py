"""`fieldlink-agent enroll TOKEN`: first contact with HQ.

The token names HQ's URL and the SHA-256 fingerprint of HQ's TLS certificate.
We connect, compare the certificate HQ presents with that fingerprint *before
sending anything*, then send the token and this machine's new public key.
HQ answers with the agent id and the SSH endpoint and key to pin.

The agent's ed25519 key is made here and never leaves the machine. The
default local policy (policy.toml) is written too, unless one exists.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

import asyncssh

from agent.config import AgentConfig, ConfigDir, write_private
from agent.policy import ensure_policy
from shared.enrolltoken import EnrollToken, cert_fingerprint
from shared.version import __version__


class EnrollError(Exception):
    """Enrollment failed; the message says why, for a person."""


def _post_pinned(token: EnrollToken, path: str, body: dict[str, Any], timeout: float) -> Any:
    parts = urlsplit(token.url)
    host = parts.hostname or ""
    port = parts.port or 443
    ctx = ssl.create_default_context()
    # We verify by pinning the exact certificate below instead of by a CA.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    try:
        try:
            conn.connect()
        except (OSError, ssl.SSLError) as exc:
            raise EnrollError(f"cannot reach HQ at {token.url}: {exc}") from None
        assert isinstance(conn.sock, ssl.SSLSocket)
        der = conn.sock.getpeercert(binary_form=True) or b""
        seen = cert_fingerprint(der)
        if seen != token.fingerprint:
            raise EnrollError(
                f"HQ at {token.url} presented a TLS certificate with fingerprint {seen}, "
                f"but the token pins {token.fingerprint}: refusing to enroll"
            )
        payload = json.dumps(body).encode()
        conn.request(
            "POST",
            (parts.path.rstrip("/") + path),
            body=payload,
            headers={
                "Content-Type": "application/json",
                "User-Agent": f"fieldlink-agent/{__version__}",
            },
        )
        resp = conn.getresponse()
        raw = resp.read(1024 * 1024)
    except (OSError, http.client.HTTPException) as exc:
        raise EnrollError(f"enrollment request to {token.url} failed: {exc}") from None
    finally:
        conn.close()
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise EnrollError(f"HQ answered {resp.status} with a body that is not JSON") from None
    if resp.status >= 400:
        err = data.get("error", {}) if isinstance(data, dict) else {}
        raise EnrollError(
            f"HQ refused enrollment ({resp.status}): {err.get('message', 'no reason given')}"
        )
    return data


def enroll(
    token_text: str, config_dir: ConfigDir, *, force: bool = False, timeout: float = 30.0
) -> AgentConfig:
    try:
        token = EnrollToken.parse(token_text)
    except ValueError as exc:
        raise EnrollError(str(exc)) from None
    if config_dir.exists() and not force:
        raise EnrollError(
            f"{config_dir.path} already holds an enrolled agent; use --force to enroll again"
        )
    key = asyncssh.generate_private_key("ssh-ed25519")
    public = key.export_public_key("openssh").decode().strip()
    data = _post_pinned(
        token,
        "/api/v1/enroll",
        {"token": token_text.strip(), "public_key": public, "hostname": socket.gethostname()},
        timeout,
    )
    try:
        ssh_host = data.get("ssh_host") or urlsplit(token.url).hostname
        config = AgentConfig(
            agent_id=data["agent_id"],
            site=data["site"],
            hq_url=token.url,
            hq_fingerprint=token.fingerprint,
            ssh_host=ssh_host,
            ssh_port=int(data["ssh_port"]),
            hq_public_key=data["hq_public_key"],
            interval=float(data.get("interval", 15.0)),
        )
        asyncssh.import_public_key(config.hq_public_key)
    except (KeyError, TypeError, ValueError, asyncssh.KeyImportError) as exc:
        raise EnrollError(f"HQ's enrollment answer is incomplete: {exc}") from None
    config_dir.path.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(config_dir.key_file, key.export_private_key("openssh"))
    config_dir.save(config)
    ensure_policy(config_dir.policy_file)  # an existing policy (re-enroll) is kept
    if config_dir.spool_file.exists() and force:
        config_dir.spool_file.unlink()
    return config
