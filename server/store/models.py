"""Database tables (SQLAlchemy 2 declarative). Holds data, decides nothing.

Times are stored as UTC and always read back timezone-aware, on SQLite too.
Ids are opaque strings with a short prefix naming their kind.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite's INTEGER PRIMARY KEY is the rowid (64-bit); PostgreSQL needs BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSONType}


class Site(Base):
    __tablename__ = "sites"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("st"))
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # business calendar for SLA clocks
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    work_days: Mapped[list[int]] = mapped_column(JSONType, default=lambda: [0, 1, 2, 3, 4])
    work_start: Mapped[str] = mapped_column(String(5), default="09:00")
    work_end: Mapped[str] = mapped_column(String(5), default="18:00")
    holidays: Mapped[list[str]] = mapped_column(JSONType, default=list)
    # remote-session settings (server.itsm.consent.SitePolicy); NULL = defaults
    session_policy: Mapped[dict[str, Any] | None] = mapped_column(JSONType)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("us"))
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(254), default="")
    password_hash: Mapped[str | None] = mapped_column(String(255))
    totp_secret_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    totp_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]


class Role(Base):
    __tablename__ = "roles"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    permissions: Mapped[list[str]] = mapped_column(JSONType)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)


class Binding(Base):
    __tablename__ = "bindings"
    __table_args__ = (UniqueConstraint("user_id", "role", "site_id", name="uq_binding"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("bd"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(ForeignKey("roles.name"))
    # NULL = global scope
    site_id: Mapped[str | None] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("tk"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # NULL = all of the owner's permissions
    permissions: Mapped[list[str] | None] = mapped_column(JSONType)
    origin: Mapped[str] = mapped_column(String(20))  # api | login | break-glass
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    # when the login that made it verified a TOTP code (step-up checks)
    mfa_at: Mapped[datetime | None]


class WebSession(Base):
    __tablename__ = "web_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    mfa_at: Mapped[datetime | None]
    source: Mapped[str] = mapped_column(String(64), default="")


class LoginThrottle(Base):
    """Failed-login counters per user name and per source address."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime] = mapped_column(default=utcnow)
    locked_until: Mapped[datetime | None]


class EnrollToken(Base):
    __tablename__ = "enroll_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("et"))
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    uses_max: Mapped[int] = mapped_column(Integer)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(100))
    revoked_at: Mapped[datetime | None]


class Agent(Base):
    __tablename__ = "agents"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ag"))
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), index=True)
    hostname: Mapped[str] = mapped_column(String(255))
    public_key: Mapped[str] = mapped_column(Text)
    key_fingerprint: Mapped[str] = mapped_column(String(100), unique=True)
    tags: Mapped[list[str]] = mapped_column(JSONType, default=list)
    enrolled_at: Mapped[datetime] = mapped_column(default=utcnow)
    enroll_token_id: Mapped[str | None] = mapped_column(String(40))
    revoked_at: Mapped[datetime | None]
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    hq_node: Mapped[str | None] = mapped_column(String(100))
    connected_at: Mapped[datetime | None]
    last_seen: Mapped[datetime | None]
    version: Mapped[str | None] = mapped_column(String(40))
    facts: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    spool_dropped: Mapped[int] = mapped_column(BigInteger, default=0)
    latest_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    latest_sampled_at: Mapped[datetime | None]
    latest_health: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    catalog: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    policy: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    cpu_percent: Mapped[float | None]
    memory_percent: Mapped[float | None]
    disk_percent: Mapped[float | None]


class HealthRecord(Base):
    __tablename__ = "health_reports"
    __table_args__ = (
        UniqueConstraint("agent_id", "seq", name="uq_health_agent_seq"),
        Index("ix_health_agent_sampled", "agent_id", "sampled_at"),
        Index("ix_health_sampled", "sampled_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)
    sampled_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    report: Mapped[dict[str, Any]] = mapped_column(JSONType)


class AuditEntry(Base):
    """Append-only, hash-chained. Nothing updates or deletes rows here."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_time", "at"),
        Index("ix_audit_action", "action"),
        Index("ix_audit_site", "site_id"),
    )

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    actor_type: Mapped[str] = mapped_column(String(20))  # user | token | agent | system
    actor_id: Mapped[str | None] = mapped_column(String(100))
    actor_name: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(100))
    target_type: Mapped[str | None] = mapped_column(String(40))
    target_id: Mapped[str | None] = mapped_column(String(100))
    site_id: Mapped[str | None] = mapped_column(String(40))
    ticket_id: Mapped[str | None] = mapped_column(String(40))
    outcome: Mapped[str] = mapped_column(String(20))
    details: Mapped[dict[str, Any]] = mapped_column(JSONType)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """One row: the chain's last sequence and hash. Updating it first in the
    appending transaction serialises writers (row lock on PostgreSQL, the
    write lock on SQLite)."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


# --- runs, jobs (remote diagnostics, actions, commands) ------------------------------


class RunRecord(Base):
    """One diagnostic, action or command run on one agent, and its result."""

    __tablename__ = "run_results"
    __table_args__ = (
        Index("ix_run_agent_created", "agent_id", "created_at"),
        Index("ix_run_ticket", "ticket_id"),
        Index("ix_run_job", "job_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("rn"))
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    site_id: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(100))
    tier: Mapped[str] = mapped_column(String(20))
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(20))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    stdout: Mapped[str] = mapped_column(Text, default="")
    stderr: Mapped[str] = mapped_column(Text, default="")
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    data: Mapped[Any | None] = mapped_column(JSONType)
    reason: Mapped[str | None] = mapped_column(Text)
    requested_by: Mapped[str | None] = mapped_column(String(40))
    requested_by_name: Mapped[str | None] = mapped_column(String(200))
    ticket_id: Mapped[str | None] = mapped_column(String(40))
    job_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("jb"))
    name: Mapped[str] = mapped_column(String(100))
    tier: Mapped[str] = mapped_column(String(20))
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    target: Mapped[dict[str, Any]] = mapped_column(JSONType)
    timeout: Mapped[float] = mapped_column(default=60.0)
    ticket_id: Mapped[str | None] = mapped_column(String(40))
    created_by: Mapped[str | None] = mapped_column(String(40))
    created_by_name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class JobItem(Base):
    __tablename__ = "job_items"
    __table_args__ = (
        UniqueConstraint("job_id", "agent_id", name="uq_job_item"),
        Index("ix_job_item_agent_status", "agent_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    site_id: Mapped[str] = mapped_column(String(40))
    # queued | running | ok | failed | timeout | refused | interrupted | expired
    status: Mapped[str] = mapped_column(String(20))
    result_id: Mapped[str | None] = mapped_column(String(40))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- tickets ---------------------------------------------------------------------------


class Counter(Base):
    """Named counters (ticket numbers). Incremented under the row's lock."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class Ticket(Base):
    __tablename__ = "tickets"
    __table_args__ = (
        Index("ix_ticket_site_status", "site_id", "status"),
        Index("ix_ticket_requester", "requester_id"),
        Index("ix_ticket_assignee", "assignee_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ti"))
    number: Mapped[int] = mapped_column(BigInteger, unique=True)
    title: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    type: Mapped[str] = mapped_column(String(20))  # incident|service_request|problem|change
    impact: Mapped[int] = mapped_column(Integer, default=3)
    urgency: Mapped[int] = mapped_column(Integer, default=3)
    priority: Mapped[str] = mapped_column(String(2))  # P1..P4
    status: Mapped[str] = mapped_column(String(20))
    waiting_reason: Mapped[str | None] = mapped_column(String(20))
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    requester_id: Mapped[str | None] = mapped_column(String(40))
    requester_name: Mapped[str] = mapped_column(String(200), default="")
    assignee_id: Mapped[str | None] = mapped_column(String(40))
    tier: Mapped[str] = mapped_column(String(10))  # site | hq
    source: Mapped[str] = mapped_column(String(10))  # alert | help | console | api
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    acknowledged_at: Mapped[datetime | None]
    first_response_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    ack_due: Mapped[datetime | None]
    response_due: Mapped[datetime | None]
    resolve_due: Mapped[datetime | None]
    paused_seconds: Mapped[float] = mapped_column(default=0.0)
    paused_since: Mapped[datetime | None]
    reopen_count: Mapped[int] = mapped_column(Integer, default=0)
    escalation_count: Mapped[int] = mapped_column(Integer, default=0)
    resolution_code: Mapped[str | None] = mapped_column(String(40))
    resolution_text: Mapped[str | None] = mapped_column(Text)
    resolved_tier: Mapped[str | None] = mapped_column(String(10))
    human_touched: Mapped[bool] = mapped_column(Boolean, default=False)
    sla_warned: Mapped[list[str]] = mapped_column(JSONType, default=list)
    sla_breached: Mapped[list[str]] = mapped_column(JSONType, default=list)
    rating: Mapped[int | None] = mapped_column(Integer)
    rating_comment: Mapped[str | None] = mapped_column(Text)
    rated_at: Mapped[datetime | None]
    auto_resolved: Mapped[bool] = mapped_column(Boolean, default=False)
    # the machine-local person who asked for help (from `fieldlink-agent help`)
    requester_agent_id: Mapped[str | None] = mapped_column(String(40))


class TicketAgent(Base):
    __tablename__ = "ticket_agents"

    ticket_id: Mapped[str] = mapped_column(
        ForeignKey("tickets.id", ondelete="CASCADE"), primary_key=True
    )
    agent_id: Mapped[str] = mapped_column(
        ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class TicketEvent(Base):
    """The ticket's timeline: append-only."""

    __tablename__ = "ticket_events"
    __table_args__ = (Index("ix_ticket_event_ticket", "ticket_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    ticket_id: Mapped[str] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_type: Mapped[str] = mapped_column(String(20))
    actor_id: Mapped[str | None] = mapped_column(String(100))
    actor_name: Mapped[str | None] = mapped_column(String(200))
    # comment | state | assignment | escalation | sla_warning | sla_breach | run | alert_fired
    # | alert_recovered | session | agent_linked | priority | rating
    kind: Mapped[str] = mapped_column(String(30))
    internal: Mapped[bool] = mapped_column(Boolean, default=False)
    body: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


# --- SLA, alerts, webhooks ------------------------------------------------------------


class SlaPolicy(Base):
    """Targets per priority (seconds of calendar time); absent rows use defaults."""

    __tablename__ = "sla_policies"

    priority: Mapped[str] = mapped_column(String(2), primary_key=True)
    ack_seconds: Mapped[float]
    response_seconds: Mapped[float]
    resolve_seconds: Mapped[float]
    warn_at: Mapped[float] = mapped_column(default=0.8)
    business_hours: Mapped[bool] = mapped_column(Boolean, default=True)


class AlertRule(Base):
    __tablename__ = "alert_rules"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ar"))
    name: Mapped[str] = mapped_column(String(200))
    metric: Mapped[str] = mapped_column(String(100))
    op: Mapped[str] = mapped_column(String(2))
    threshold: Mapped[float]
    clear_threshold: Mapped[float | None]
    for_seconds: Mapped[float] = mapped_column(default=0.0)
    priority: Mapped[str] = mapped_column(String(2))
    diagnostics: Mapped[list[str]] = mapped_column(JSONType, default=list)
    site_id: Mapped[str | None] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    tags: Mapped[list[str]] = mapped_column(JSONType, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    auto_resolve: Mapped[bool] = mapped_column(Boolean, default=True)
    reopen_window_seconds: Mapped[float] = mapped_column(default=86400.0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Alert(Base):
    """One (rule, agent) pair's alert state: the dedup key."""

    __tablename__ = "alerts"
    __table_args__ = (UniqueConstraint("rule_id", "agent_id", name="uq_alert_dedup"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("al"))
    rule_id: Mapped[str] = mapped_column(ForeignKey("alert_rules.id", ondelete="CASCADE"))
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"), index=True)
    site_id: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(10), default="ok")  # ok | pending | firing
    pending_since: Mapped[datetime | None]
    first_seen: Mapped[datetime | None]
    last_seen: Mapped[datetime | None]
    fired_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    count: Mapped[int] = mapped_column(Integer, default=0)
    ticket_id: Mapped[str | None] = mapped_column(String(40))
    last_value: Mapped[float | None]


class Webhook(Base):
    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("wh"))
    url: Mapped[str] = mapped_column(String(2000))
    secret_enc: Mapped[bytes] = mapped_column(LargeBinary)
    events: Mapped[list[str]] = mapped_column(JSONType, default=list)  # empty = all
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutboxItem(Base):
    """A webhook delivery, written in the transaction of the event it reports."""

    __tablename__ = "webhook_outbox"
    __table_args__ = (Index("ix_outbox_due", "delivered_at", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(60))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AgentRequest(Base):
    """What HQ made of a spooled request from an agent (help, rating), so a
    re-sent frame gets the same answer instead of a second ticket."""

    __tablename__ = "agent_requests"

    agent_id: Mapped[str] = mapped_column(
        ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(10), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    ok: Mapped[bool] = mapped_column(Boolean)
    ticket_id: Mapped[str | None] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- remote sessions ----------------------------------------------------------------------


class RemoteSession(Base):
    __tablename__ = "remote_sessions"
    __table_args__ = (
        Index("ix_session_ticket", "ticket_id"),
        Index("ix_session_agent_state", "agent_id", "state"),
        Index("ix_session_state", "state"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("se"))
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    site_id: Mapped[str] = mapped_column(String(40))
    ticket_id: Mapped[str] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(10))  # shell | exec | files
    reason: Mapped[str] = mapped_column(Text, default="")
    max_minutes: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))
    origin: Mapped[str] = mapped_column(String(10), default="hq")  # hq | site
    requested_by: Mapped[str | None] = mapped_column(String(40))
    requested_by_name: Mapped[str] = mapped_column(String(200), default="")
    consent_required: Mapped[bool] = mapped_column(Boolean, default=True)
    consent_on_timeout: Mapped[str] = mapped_column(String(10), default="deny")
    consent_by: Mapped[str | None] = mapped_column(String(200))
    consent_via: Mapped[str | None] = mapped_column(String(20))  # machine | user | site_request
    consent_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]  # consent or offer deadline
    started_at: Mapped[datetime | None]
    ends_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    end_reason: Mapped[str | None] = mapped_column(Text)
    ended_by: Mapped[str | None] = mapped_column(String(200))
    record_input: Mapped[bool] = mapped_column(Boolean, default=False)
    recording_sha256: Mapped[str | None] = mapped_column(String(64))
    recording_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- changes (ITSM change management) ------------------------------------------------------


class Change(Base):
    """A planned change to machines: approved, then run as staged jobs
    (a pilot, a health gate, the rest) and reviewed."""

    __tablename__ = "changes"
    __table_args__ = (Index("ix_change_state", "state"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ch"))
    number: Mapped[int] = mapped_column(BigInteger, unique=True)
    title: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    risk: Mapped[str] = mapped_column(String(10))  # low | medium | high
    plan: Mapped[str] = mapped_column(Text, default="")
    backout_plan: Mapped[str] = mapped_column(Text, default="")
    # what it runs: a catalog entry or `exec`, with its parameters, and its tier
    action: Mapped[str] = mapped_column(String(100))
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    tier: Mapped[str] = mapped_column(String(20))
    backout_action: Mapped[str | None] = mapped_column(String(100))
    backout_params: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    backout_tier: Mapped[str | None] = mapped_column(String(20))
    target: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # the machines it touches, resolved when requested: [{"id", "site_id", "hostname"}]
    agents: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    site_ids: Mapped[list[str]] = mapped_column(JSONType, default=list)
    pilot_size: Mapped[int] = mapped_column(Integer, default=1)
    # named when requested, or the first `pilot_size` (connected ones first) at start
    pilot_agent_ids: Mapped[list[str]] = mapped_column(JSONType, default=list)
    gate_seconds: Mapped[float] = mapped_column(default=900.0)
    failure_threshold: Mapped[float] = mapped_column(default=0.0)  # percent of a stage
    batch_size: Mapped[int | None] = mapped_column(Integer)
    timeout: Mapped[float] = mapped_column(default=60.0)
    approvals_required: Mapped[int] = mapped_column(Integer, default=1)
    planned_start: Mapped[datetime | None]
    # requested | approved | rejected | cancelled | in_progress | review
    # | successful | failed | rolled_back
    state: Mapped[str] = mapped_column(String(20))
    stage: Mapped[str | None] = mapped_column(String(10))  # pilot | gate | rest
    requester_id: Mapped[str | None] = mapped_column(String(40))
    requester_name: Mapped[str] = mapped_column(String(200), default="")
    started_by: Mapped[str | None] = mapped_column(String(40))
    started_by_name: Mapped[str | None] = mapped_column(String(200))
    # [{"stage": "pilot"|"rest"|"backout", "job_id", "agents": n, "started_at"}]
    jobs: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    halted: Mapped[bool] = mapped_column(Boolean, default=False)
    halt_reason: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str | None] = mapped_column(String(20))
    review_comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    approved_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    pilot_started_at: Mapped[datetime | None]
    gate_started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]  # into review
    closed_at: Mapped[datetime | None]


class ChangeApproval(Base):
    """One approver's decision on a change: once per approver."""

    __tablename__ = "change_approvals"
    __table_args__ = (UniqueConstraint("change_id", "approver_id", name="uq_change_approver"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    change_id: Mapped[str] = mapped_column(ForeignKey("changes.id", ondelete="CASCADE"), index=True)
    approver_id: Mapped[str] = mapped_column(String(40))
    approver_name: Mapped[str] = mapped_column(String(200))
    decision: Mapped[str] = mapped_column(String(10))  # approve | reject
    comment: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)


class ChangeEvent(Base):
    """The change's history: append-only."""

    __tablename__ = "change_events"
    __table_args__ = (Index("ix_change_event_change", "change_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    change_id: Mapped[str] = mapped_column(ForeignKey("changes.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_name: Mapped[str | None] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(30))
    body: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


# --- problems -------------------------------------------------------------------------------


class Problem(Base):
    """A problem record (ITIL): the cause behind repeated incidents."""

    __tablename__ = "problems"
    __table_args__ = (
        Index("ix_problem_status", "status"),
        Index("ix_problem_site", "site_id"),
        Index("ix_problem_origin", "origin", "origin_ref"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("pb"))
    number: Mapped[int] = mapped_column(BigInteger, unique=True)
    title: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    # proposed | new | investigating | known_error | resolved | closed | dismissed
    status: Mapped[str] = mapped_column(String(20))
    impact: Mapped[int] = mapped_column(Integer, default=3)
    urgency: Mapped[int] = mapped_column(Integer, default=3)
    priority: Mapped[str] = mapped_column(String(2))
    # NULL = HQ-wide
    site_id: Mapped[str | None] = mapped_column(ForeignKey("sites.id", ondelete="SET NULL"))
    assignee_id: Mapped[str | None] = mapped_column(String(40))
    root_cause: Mapped[str] = mapped_column(Text, default="")
    workaround: Mapped[str] = mapped_column(Text, default="")
    resolution: Mapped[str] = mapped_column(Text, default="")
    # manual | alert_rule | reopened; origin_ref: the rule id or the reopened ticket's id
    origin: Mapped[str] = mapped_column(String(20), default="manual")
    origin_ref: Mapped[str | None] = mapped_column(String(40))
    proposed_reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str | None] = mapped_column(String(40))
    created_by_name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    accepted_at: Mapped[datetime | None]
    known_error_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    dismissed_at: Mapped[datetime | None]


class ProblemTicket(Base):
    """An incident linked to a problem (many incidents per problem)."""

    __tablename__ = "problem_tickets"

    problem_id: Mapped[str] = mapped_column(
        ForeignKey("problems.id", ondelete="CASCADE"), primary_key=True
    )
    ticket_id: Mapped[str] = mapped_column(
        ForeignKey("tickets.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    linked_at: Mapped[datetime] = mapped_column(default=utcnow)
    linked_by: Mapped[str] = mapped_column(String(200), default="")


class ProblemEvent(Base):
    """The problem's history: append-only."""

    __tablename__ = "problem_events"
    __table_args__ = (Index("ix_problem_event_problem", "problem_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    problem_id: Mapped[str] = mapped_column(ForeignKey("problems.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_type: Mapped[str] = mapped_column(String(20))
    actor_id: Mapped[str | None] = mapped_column(String(100))
    actor_name: Mapped[str | None] = mapped_column(String(200))
    # created | proposed | state | update | ticket_linked | ticket_unlinked | note
    kind: Mapped[str] = mapped_column(String(30))
    body: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


# --- knowledge base -----------------------------------------------------------------------


class KbArticle(Base):
    """A knowledge-base article: its current version. Full-text search over
    title, tags, symptom, cause and resolution is kept by the database (see
    `server.store.kb`): an FTS5 table on SQLite, a tsvector column on PostgreSQL."""

    __tablename__ = "kb_articles"
    __table_args__ = (
        Index("ix_kb_state_visibility", "state", "visibility"),
        Index("ix_kb_site", "site_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("kb"))
    number: Mapped[int] = mapped_column(BigInteger, unique=True)
    title: Mapped[str] = mapped_column(String(300))
    symptom: Mapped[str] = mapped_column(Text, default="")
    cause: Mapped[str] = mapped_column(Text, default="")
    resolution: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[str] = mapped_column(Text, default="")  # ",a,b,"
    visibility: Mapped[str] = mapped_column(String(10))  # internal | site | public
    # the site a `site` article is for; None for internal and public ones
    site_id: Mapped[str | None] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(10))  # draft | review | published | archived
    version: Mapped[int] = mapped_column(Integer, default=1)
    author_id: Mapped[str | None] = mapped_column(String(40))
    author_name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None]
    archived_at: Mapped[datetime | None]
    views: Mapped[int] = mapped_column(Integer, default=0)


class KbVersion(Base):
    """Every version of an article's content, the current one included."""

    __tablename__ = "kb_versions"

    article_id: Mapped[str] = mapped_column(
        ForeignKey("kb_articles.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(300))
    symptom: Mapped[str] = mapped_column(Text, default="")
    cause: Mapped[str] = mapped_column(Text, default="")
    resolution: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[str] = mapped_column(Text, default="")
    visibility: Mapped[str] = mapped_column(String(10))
    site_id: Mapped[str | None] = mapped_column(String(40))
    editor_id: Mapped[str | None] = mapped_column(String(40))
    editor_name: Mapped[str] = mapped_column(String(200), default="")
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class KbLink(Base):
    """An article linked to a ticket, a problem or a machine. The target is
    kept as text (a ticket or agent id, a problem reference) so kinds can be
    added without a foreign key to each table."""

    __tablename__ = "kb_links"
    __table_args__ = (
        UniqueConstraint("article_id", "kind", "target", name="uq_kb_link"),
        Index("ix_kb_link_target", "kind", "target"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    article_id: Mapped[str] = mapped_column(ForeignKey("kb_articles.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(10))  # ticket | problem | machine
    target: Mapped[str] = mapped_column(String(100))
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class KbVote(Base):
    """One vote per voter and article ("helped" or not); a later vote replaces
    it. Voters: `user:<id>`, or `agent:<agent id>:<local user>` for people
    asking for help on a machine."""

    __tablename__ = "kb_votes"

    article_id: Mapped[str] = mapped_column(
        ForeignKey("kb_articles.id", ondelete="CASCADE"), primary_key=True
    )
    voter: Mapped[str] = mapped_column(String(200), primary_key=True)
    helped: Mapped[bool] = mapped_column(Boolean)
    at: Mapped[datetime] = mapped_column(default=utcnow)
