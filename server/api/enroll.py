"""Enrollment: agents trade a token for an identity; admins make tokens."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlsplit

import structlog
from aiohttp import web
from pydantic import BaseModel, Field, field_validator

from server.base.audit import Actor, Event
from server.ops import enrollment
from server.store import auditlog, people
from server.web.act import answer, unit
from server.web.authn import source_of
from server.web.keys import CONFIG, DB, KEYS
from server.web.routing import ApiRouter, body
from shared.durations import parse_duration
from shared.errors import FieldlinkError, Invalid, NotFound

routes = ApiRouter("enrollment")
log = structlog.get_logger(__name__)


class EnrollRequest(BaseModel):
    token: str = Field(min_length=10, max_length=2000)
    public_key: str = Field(min_length=20, max_length=2000)
    hostname: str = Field(min_length=1, max_length=255)


class EnrollResponse(BaseModel):
    agent_id: str
    site: str
    ssh_host: str | None
    ssh_port: int
    hq_public_key: str
    interval: float


@routes.route(
    "POST",
    "/api/v1/enroll",
    errors=(401, 409),
    public=True,
    body=EnrollRequest,
    response=EnrollResponse,
    status=201,
    summary="Enroll an agent with an enrollment token (what "
    "`fieldlink-agent enroll` calls); the token authenticates",
)
async def enroll(request: web.Request) -> web.Response:
    app = request.app
    req = body(request, EnrollRequest)
    source = source_of(request)
    try:
        async with app[DB].begin() as session:
            agent = await enrollment.enroll_agent(
                session,
                token_text=req.token,
                public_key=req.public_key,
                hostname=req.hostname,
                source=source,
            )
            names = await people.site_names(session, {agent.site_id})
    except FieldlinkError as exc:
        async with app[DB].begin() as session:
            await auditlog.append(
                session,
                Actor("agent", None, req.hostname[:200], source),
                Event("agent.enroll", outcome="denied", details={"reason": exc.code}),
            )
        log.warning("enroll_refused", source=source, hostname=req.hostname, reason=exc.code)
        raise
    app[KEYS].enrolled(agent.key_fingerprint, agent.id)
    log.info("agent_enrolled", agent_id=agent.id, site=names[agent.site_id], source=source)
    ssh_host, ssh_port = app[CONFIG].public_ssh()
    out = EnrollResponse(
        agent_id=agent.id,
        site=names[agent.site_id],
        ssh_host=ssh_host,
        ssh_port=ssh_port,
        hq_public_key=app[CONFIG].hq_public_key,
        interval=app[CONFIG].settings.report_interval,
    )
    return answer(request, out)


class EnrollTokenRequest(BaseModel):
    site: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")
    uses: int = Field(1, ge=1, le=enrollment.MAX_USES)
    ttl: str = "1h"

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: str) -> str:
        parse_duration(value)
        return value


class EnrollTokenResponse(BaseModel):
    token: str
    id: str
    site: str
    uses: int
    expires_at: datetime


def public_url(request: web.Request) -> str:
    """The URL that goes into tokens: the setting, else how the caller reached us."""
    configured = request.app[CONFIG].settings.public_url
    if configured:
        return configured.rstrip("/")
    if request.host:
        host = urlsplit(f"//{request.host}")
        return f"https://{host.netloc}"
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return f"https://127.0.0.1:{sockname[1] if sockname else 0}"


@routes.route(
    "POST",
    "/api/v1/enroll-tokens",
    errors=(404,),
    permission="agents:enroll",
    body=EnrollTokenRequest,
    response=EnrollTokenResponse,
    status=201,
    summary="Make an enrollment token for a site (the secret is shown once)",
)
async def create_enroll_token(request: web.Request) -> web.Response:
    app = request.app
    req = body(request, EnrollTokenRequest)
    async with unit(request) as (session, who):
        site = await people.site_by_name(session, req.site)
        if site is not None:
            if not who.allowed("agents:enroll", site.id):
                raise NotFound("site not found", fields={"site": "no such site"})
        elif not who.allowed("agents:enroll", None):
            raise NotFound("site not found", fields={"site": "no such site"})
        elif not who.allowed("users:admin", None):
            raise Invalid("unknown site", fields={"site": "no such site; an admin creates sites"})
        made = await enrollment.make_enroll_token(
            session,
            site_name=req.site,
            uses=req.uses,
            ttl=parse_duration(req.ttl),
            url=public_url(request),
            fingerprint=app[CONFIG].fingerprint,
            actor=who.actor(),
        )
    out = EnrollTokenResponse(
        token=made.token,
        id=made.token_id,
        site=made.site,
        uses=made.uses,
        expires_at=datetime.fromisoformat(made.expires_at),
    )
    return answer(request, out)
