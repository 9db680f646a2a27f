"""The agent's config directory: what enrollment writes and the daemon reads.

DIR/config.toml   identity, HQ endpoints, pinned HQ key, tuning (0600)
DIR/agent_key     the agent's ed25519 host key, made on this machine (0600)
DIR/spool.db      unacknowledged frames (see agent.spool)
DIR/policy.toml   the site's local policy (see agent.policy)
DIR/runs/         the process groups (and cgroups) of runs in progress (see agent.groups)
DIR/agent.sock    the running daemon's local socket for people at the machine
                  (see agent.local; `local_socket` may put it elsewhere)
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(Exception):
    """The config directory is missing, unreadable or invalid."""


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    agent_id: str
    site: str
    hq_url: str
    hq_fingerprint: str
    ssh_host: str
    ssh_port: int = Field(ge=1, le=65535)
    hq_public_key: str
    interval: float = Field(default=15.0, gt=0)
    backoff_cap: float = Field(default=60.0, gt=0)
    # Longer than the report interval, so acks keep the link alive on their own.
    keepalive_interval: float = Field(default=20.0, gt=0)
    spool_max_frames: int = Field(default=20_000, ge=10)
    spool_max_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    # The local socket for `fieldlink-agent help|tickets|rate` (agent.local):
    # its path (default DIR/agent.sock; relative paths are inside DIR) and the
    # group whose members may use it (a name or a number; default the agent's
    # own primary group).
    local_socket: str | None = Field(default=None, min_length=1)
    local_group: str | None = Field(default=None, min_length=1)
    # How runs' processes are contained (agent.containment): "auto" uses a
    # cgroup v2 per run where it can, "process_group" only the process-group rule.
    run_containment: Literal["auto", "process_group"] = "auto"


class ConfigDir:
    """Paths inside one agent config directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @property
    def config_file(self) -> Path:
        return self.path / "config.toml"

    @property
    def key_file(self) -> Path:
        return self.path / "agent_key"

    @property
    def spool_file(self) -> Path:
        return self.path / "spool.db"

    @property
    def policy_file(self) -> Path:
        return self.path / "policy.toml"

    @property
    def runs_dir(self) -> Path:
        return self.path / "runs"

    @property
    def socket_file(self) -> Path:
        """The default path of the daemon's local socket."""
        return self.path / "agent.sock"

    def socket_path(self, config: AgentConfig) -> Path:
        """Where the daemon configured by `config` listens for local requests."""
        if config.local_socket is None:
            return self.socket_file
        return self.path / Path(config.local_socket).expanduser()

    def exists(self) -> bool:
        return self.config_file.exists()

    def load(self) -> AgentConfig:
        try:
            data = tomllib.loads(self.config_file.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"{self.config_file} not found: enroll first (fieldlink-agent enroll TOKEN "
                f"--config-dir {self.path})"
            ) from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {self.config_file}: {exc}") from None
        try:
            return AgentConfig.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"invalid {self.config_file}: {exc}") from None

    def save(self, config: AgentConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        # TOML has no null: an unset optional key is left out, which reads back as unset.
        data = config.model_dump(exclude_none=True)
        write_private(self.config_file, tomli_w.dumps(data).encode())


def write_private(path: Path, data: bytes) -> None:
    """Write a file readable by its owner only, replacing any old one atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
