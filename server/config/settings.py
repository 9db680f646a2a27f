"""HQ settings: one frozen object read once at start-up and passed in.

Sources, strongest first: command-line overrides, `FIELDLINK_*` environment
variables, `DATA_DIR/config.toml` (written by `fieldlink init`), defaults.
Nothing else in HQ reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def parse_hostport(value: str, default_host: str = "0.0.0.0") -> tuple[str, int]:  # noqa: S104 - HQ serves the network by default
    """`HOST:PORT`, `:PORT` or `[v6]:PORT` -> (host, port)."""
    text = value.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]") or default_host
    return host, int(port)


class Settings(BaseSettings):
    # allow_inf_nan: no setting means "never" by being infinite (see shared.numbers)
    model_config = SettingsConfigDict(
        env_prefix="FIELDLINK_", frozen=True, extra="ignore", allow_inf_nan=False
    )

    data_dir: Path
    http: str = Field("0.0.0.0:8443", description="HTTPS API and console listen address")
    ssh: str = Field("0.0.0.0:8022", description="SSH listen address agents dial into")
    db: SecretStr | None = Field(None, description="database URL; default SQLite in the data dir")
    public_url: str | None = Field(
        None, description="HTTPS URL agents and engineers use to reach HQ (goes into tokens)"
    )
    ssh_public_host: str | None = Field(
        None, description="host agents dial for SSH; default the public URL's host"
    )
    ssh_public_port: int | None = Field(
        None, description="port agents dial for SSH; default the --ssh port"
    )
    report_interval: float = Field(15.0, gt=0, description="seconds between agent health reports")
    # Longer than the report interval: a link that carries reports needs no
    # keepalive traffic at all (the timer restarts on every packet received).
    keepalive_interval: float = Field(
        20.0, gt=0, description="SSH keepalive interval; a dead link is noticed within 3 of them"
    )
    health_retention_days: float = Field(7.0, gt=0, description="raw health kept this long")
    max_pending_handshakes: int = Field(
        500, ge=1, description="unauthenticated SSH connections in progress before refusing"
    )
    http_header_timeout: float = Field(
        20.0,
        gt=0,
        description="seconds a client has for the TLS handshake, then for each request's "
        "headers (from connecting or the previous response); then the connection is closed",
    )
    http_max_unauthenticated: int = Field(
        32,
        ge=1,
        description="HTTPS connections one address may hold open before an authenticated "
        "request; more are closed at once",
    )
    help_limit_per_machine: int = Field(
        10, ge=1, description="help requests one machine may make per window"
    )
    help_limit_per_asker: int = Field(
        5,
        ge=1,
        description="help requests one person (at a machine, or a user) may make per window",
    )
    help_limit_self_served: int = Field(
        10,
        ge=1,
        description="self-served requests (an article solved it) one machine, or one site "
        "user, may record per window; they do not count against the limits above",
    )
    help_limit_window_minutes: float = Field(
        60.0, gt=0, description="the window of the help request limits, in minutes"
    )
    metrics_public: bool = Field(True, description="serve /metrics without a token")
    log_level: str = Field(
        "info", pattern="^(debug|info|warning|error)$", description="debug, info, warning or error"
    )
    node_id: str = Field("hq-1", description="this HQ replica's name (several share PostgreSQL)")
    require_2fa: bool = Field(
        True,
        description="users holding shell:open, exec:run, action:run or users:admin must use TOTP",
    )
    session_idle_minutes: float = Field(30.0, gt=0, description="console session idle expiry")
    session_max_hours: float = Field(12.0, gt=0, description="console session absolute expiry")
    login_token_ttl: str = Field("12h", description="lifetime of a token from POST /auth/login")
    max_token_ttl: str = Field("90d", description="longest lifetime of an API token")
    step_up_minutes: float = Field(
        10.0, gt=0, description="how recent a TOTP code must be for sessions on machines"
    )
    report_targets: dict[str, float] = Field(
        default_factory=dict,
        description="review report KPI targets (fractions) over the defaults, e.g. "
        '{"csat": 0.85}; keys: sla_compliance_overall, csat, tier1_resolution_rate, '
        "escalation_rate, reopen_rate, deflection_rate",
    )

    @field_validator("report_targets")
    @classmethod
    def _check_targets(cls, value: dict[str, float]) -> dict[str, float]:
        from server.itsm.review import TARGETS

        for key, target in value.items():
            if key not in TARGETS:
                raise ValueError(f"unknown KPI {key!r}; known: {', '.join(TARGETS)}")
            if not 0 <= target <= 1:
                raise ValueError(f"{key}: a fraction from 0 to 1")
        return value

    @field_validator("http", "ssh")
    @classmethod
    def _check_hostport(cls, value: str) -> str:
        parse_hostport(value)
        return value

    @property
    def http_addr(self) -> tuple[str, int]:
        return parse_hostport(self.http)

    @property
    def ssh_addr(self) -> tuple[str, int]:
        return parse_hostport(self.ssh)

    def db_url(self) -> str:
        if self.db is not None:
            return self.db.get_secret_value()
        return f"sqlite+aiosqlite:///{(self.data_dir / 'fieldlink.db').resolve()}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for HQ with this data dir; `overrides` (from the command line)
    win over the environment, which wins over `DATA_DIR/config.toml`."""
    toml = data_dir / "config.toml"

    class _FromDir(Settings):
        model_config = SettingsConfigDict(toml_file=toml if toml.exists() else None)

    given = {k: v for k, v in overrides.items() if v is not None}
    return _FromDir(data_dir=data_dir, **given)
