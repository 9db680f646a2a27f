"""HQ's data directory: keys, certificate, config and (by default) the database.

DIR/config.toml        settings written by `fieldlink init`
DIR/tls/cert.pem       HQ's self-signed TLS certificate
DIR/tls/key.pem        its private key (0600)
DIR/keys/hq_ssh_key    HQ's SSH client key, pinned by every agent (0600)
DIR/keys/master.key    32 random bytes that encrypt secrets at rest (0600)
DIR/fieldlink.db       the SQLite database, unless --db names another
DIR/run/               the running server's control socket and address
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
import socket
import ssl
from pathlib import Path
from typing import Any

import asyncssh
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.enrolltoken import cert_fingerprint


class DataDirError(Exception):
    """The data directory is missing or incomplete."""


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def make_self_signed(hostnames: list[str]) -> tuple[bytes, bytes]:
    """A P-256 key and a 10-year self-signed certificate for these names/IPs."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for name in dict.fromkeys(hostnames):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


class DataDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).resolve()

    config_file = property(lambda self: self.path / "config.toml")
    cert_file = property(lambda self: self.path / "tls" / "cert.pem")
    tls_key_file = property(lambda self: self.path / "tls" / "key.pem")
    ssh_key_file = property(lambda self: self.path / "keys" / "hq_ssh_key")
    master_key_file = property(lambda self: self.path / "keys" / "master.key")
    run_dir = property(lambda self: self.path / "run")
    control_socket = property(lambda self: self.path / "run" / "control.sock")
    serve_file = property(lambda self: self.path / "run" / "serve.json")

    def is_initialized(self) -> bool:
        return all(
            f.exists()
            for f in (self.cert_file, self.tls_key_file, self.ssh_key_file, self.master_key_file)
        )

    def require(self) -> None:
        if not self.is_initialized():
            raise DataDirError(
                f"{self.path} is not an initialised HQ data directory: "
                f"run `fieldlink init --data-dir {self.path}` first"
            )

    def create_keys(self, extra_names: list[str] | None = None) -> None:
        """Make the TLS certificate, the SSH client key and the master key."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path, 0o700)
        self.run_dir.mkdir(exist_ok=True, mode=0o700)
        host = socket.gethostname()
        names = [host, socket.getfqdn(), "localhost", "127.0.0.1", "::1", *(extra_names or [])]
        key_pem, cert_pem = make_self_signed([n for n in names if n])
        _write_private(self.tls_key_file, key_pem)
        self.cert_file.write_bytes(cert_pem)
        ssh_key = asyncssh.generate_private_key("ssh-ed25519", comment="fieldlink-hq")
        _write_private(self.ssh_key_file, ssh_key.export_private_key("openssh"))
        _write_private(self.master_key_file, secrets.token_bytes(32))

    def write_config(self, values: dict[str, Any]) -> None:
        import tomli_w

        current: dict[str, Any] = {}
        if self.config_file.exists():
            import tomllib

            current = tomllib.loads(self.config_file.read_text())
        current.update({k: v for k, v in values.items() if v is not None})
        _write_private(self.config_file, tomli_w.dumps(current).encode())

    # --- reading -------------------------------------------------------------

    def fingerprint(self) -> str:
        pem = self.cert_file.read_bytes()
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
        return cert_fingerprint(der)

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.tls_key_file)
        return ctx

    def ssh_key(self) -> asyncssh.SSHKey:
        return asyncssh.read_private_key(self.ssh_key_file)

    def ssh_public_key(self) -> str:
        key = self.ssh_key()
        return str(key.export_public_key("openssh").decode().strip())

    def master_key(self) -> bytes:
        data = bytes(self.master_key_file.read_bytes())
        if len(data) != 32:
            raise DataDirError(f"{self.master_key_file} is damaged (expected 32 bytes)")
        return data

    # --- the running server ----------------------------------------------------

    def write_serve_info(self, info: dict[str, Any]) -> None:
        self.run_dir.mkdir(exist_ok=True, mode=0o700)
        _write_private(self.serve_file, json.dumps(info).encode())

    def read_serve_info(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.serve_file.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def clear_serve_info(self) -> None:
        self.serve_file.unlink(missing_ok=True)
