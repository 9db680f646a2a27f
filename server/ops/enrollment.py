"""Enrollment tokens, enrolling agents, revoking them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import asyncssh
from sqlalchemy.ext.asyncio import AsyncSession

from server.base.audit import Actor, Event
from server.store import auditlog, fleet, people
from server.store.models import Agent, utcnow
from shared.enrolltoken import EnrollToken, TokenFormatError, hash_secret
from shared.errors import Conflict, Invalid, NotFound, Unauthorized

MAX_USES = 10_000
MAX_TTL = timedelta(days=30)


@dataclass(frozen=True)
class NewEnrollToken:
    token: str
    token_id: str
    site_id: str
    site: str
    uses: int
    expires_at: str


async def make_enroll_token(
    session: AsyncSession,
    *,
    site_name: str,
    uses: int,
    ttl: timedelta,
    url: str,
    fingerprint: str,
    actor: Actor,
    create_site: bool = True,
) -> NewEnrollToken:
    if not 1 <= uses <= MAX_USES:
        raise Invalid("uses out of range", fields={"uses": f"must be between 1 and {MAX_USES}"})
    if ttl > MAX_TTL:
        raise Invalid("ttl too long", fields={"ttl": "must be at most 30d"})
    if create_site:
        site, created = await people.get_or_create_site(session, site_name)
        if created:
            await auditlog.append(
                session,
                actor,
                Event(
                    "site.create",
                    target_type="site",
                    target_id=site.id,
                    site_id=site.id,
                    details={"name": site_name},
                ),
            )
    else:
        found = await people.site_by_name(session, site_name)
        if found is None:
            raise NotFound("site not found", fields={"site": "no such site"})
        site = found
    token = EnrollToken.new(url, fingerprint)
    expires = utcnow() + ttl
    row = await fleet.create_enroll_token(
        session,
        site_id=site.id,
        secret_hash=token.secret_hash,
        uses=uses,
        expires_at=expires,
        created_by=actor.name or actor.type,
    )
    await auditlog.append(
        session,
        actor,
        Event(
            "enroll_token.create",
            target_type="enroll_token",
            target_id=row.id,
            site_id=site.id,
            details={"uses": uses, "expires_at": expires.isoformat()},
        ),
    )
    return NewEnrollToken(token.encode(), row.id, site.id, site.name, uses, expires.isoformat())


_REASONS = {
    "unknown": "unknown enrollment token",
    "expired": "enrollment token has expired",
    "used_up": "enrollment token has no uses left",
    "revoked": "enrollment token was revoked",
}


def parse_agent_key(public_key: str) -> tuple[asyncssh.SSHKey, str]:
    try:
        key = asyncssh.import_public_key(public_key)
    except (asyncssh.KeyImportError, ValueError):
        raise Invalid(
            "invalid public key", fields={"public_key": "not an OpenSSH public key"}
        ) from None
    if key.algorithm != b"ssh-ed25519":
        raise Invalid("invalid public key", fields={"public_key": "must be an ssh-ed25519 key"})
    return key, key.get_fingerprint("sha256")


async def enroll_agent(
    session: AsyncSession, *, token_text: str, public_key: str, hostname: str, source: str
) -> Agent:
    """Consume one use of the token and create the agent. Raises (and the
    caller's transaction rolls back) on any refusal."""
    try:
        token = EnrollToken.parse(token_text)
    except TokenFormatError as exc:
        raise Unauthorized(str(exc), code="enroll_token_invalid") from None
    key, fingerprint = parse_agent_key(public_key)
    if await fleet.agent_by_fingerprint(session, fingerprint) is not None:
        raise Conflict("this key is already enrolled", fields={"public_key": "already enrolled"})
    used = await fleet.consume_enroll_token(session, hash_secret(token.secret))
    if isinstance(used, str):
        raise Unauthorized(_REASONS[used], code=f"enroll_token_{used}")
    agent = Agent(
        site_id=used.site_id,
        hostname=hostname[:255],
        public_key=key.export_public_key("openssh").decode().strip(),
        key_fingerprint=fingerprint,
        enroll_token_id=used.id,
    )
    session.add(agent)
    await session.flush()
    await auditlog.append(
        session,
        Actor("agent", agent.id, hostname[:200], source),
        Event(
            "agent.enroll",
            target_type="agent",
            target_id=agent.id,
            site_id=agent.site_id,
            details={
                "hostname": hostname[:255],
                "key_fingerprint": fingerprint,
                "enroll_token_id": used.id,
            },
        ),
    )
    return agent


async def revoke_agent(session: AsyncSession, agent_id: str, actor: Actor) -> Agent:
    found = await fleet.get_agent(session, agent_id)
    if found is None:
        raise NotFound("agent not found")
    agent = found[0]
    if agent.revoked_at is None:
        agent.revoked_at = utcnow()
        agent.online = False
        await auditlog.append(
            session,
            actor,
            Event("agent.revoke", target_type="agent", target_id=agent.id, site_id=agent.site_id),
        )
    return agent
