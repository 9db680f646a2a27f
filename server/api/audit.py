"""The audit trail, read-only: filtered pages, a JSON-lines export, and the
hash chain's verification status (`audit:read`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, Field

from server.store import auditlog, people, tickets
from server.store.models import AuditEntry
from server.web.authn import principal
from server.web.keys import DB
from server.web.routing import ApiRouter, json_response, query

routes = ApiRouter("audit")


class AuditQuery(BaseModel):
    actor: str | None = Field(None, description="user name or id")
    action: str | None = Field(None, description="exact, or a prefix ending in * (auth.*)")
    site: str | None = Field(None, description="site name")
    ticket: str | None = Field(None, description="ticket id or number (FL-42)")
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    after: int = Field(0, ge=0, description="cursor: entries with seq greater than this")
    limit: int = Field(100, ge=1, le=1000)


class AuditItem(BaseModel):
    seq: int
    at: datetime
    actor_type: str
    actor_id: str | None
    actor_name: str | None
    source: str | None
    action: str
    target_type: str | None
    target_id: str | None
    site_id: str | None
    ticket_id: str | None
    outcome: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


class AuditList(BaseModel):
    items: list[AuditItem]
    next: str | None = None


class VerifyResult(BaseModel):
    ok: bool
    entries: int
    broken_at: int | None
    reason: str | None


def audit_item(e: AuditEntry) -> AuditItem:
    return AuditItem(
        seq=e.seq,
        at=e.at,
        actor_type=e.actor_type,
        actor_id=e.actor_id,
        actor_name=e.actor_name,
        source=e.source,
        action=e.action,
        target_type=e.target_type,
        target_id=e.target_id,
        site_id=e.site_id,
        ticket_id=e.ticket_id,
        outcome=e.outcome,
        details=e.details,
        prev_hash=e.prev_hash,
        hash=e.hash,
    )


async def audit_page(request: web.Request, q: AuditQuery, limit: int) -> list[AuditEntry]:
    """Entries of the caller's audit:read scope, filtered, oldest first."""
    scope = principal(request).sites("audit:read")
    async with request.app[DB]() as session:
        site_id = None
        if q.site:
            site = await people.site_by_name(session, q.site)
            if site is None or (scope is not None and site.id not in scope):
                return []
            site_id = site.id
        ticket_id = q.ticket
        if q.ticket:
            ticket = await tickets.find(session, q.ticket)
            if ticket is None:
                return []
            ticket_id = ticket.id
        return await auditlog.query(
            session,
            actor=q.actor,
            action=q.action,
            site_ids=scope,
            site_id=site_id,
            ticket_id=ticket_id,
            since=q.since,
            until=q.until,
            after_seq=q.after,
            limit=limit,
        )


@routes.route(
    "GET",
    "/api/v1/audit",
    permission="audit:read",
    query=AuditQuery,
    response=AuditList,
    summary="Audit entries, oldest first, filtered and paged",
)
async def list_audit(request: web.Request) -> web.Response:
    q = query(request, AuditQuery)
    rows = await audit_page(request, q, q.limit)
    nxt = str(rows[-1].seq) if len(rows) == q.limit else None
    return json_response(AuditList(items=[audit_item(e) for e in rows], next=nxt))


@routes.route(
    "GET",
    "/api/v1/audit/export",
    permission="audit:read",
    query=AuditQuery,
    content_type="application/x-ndjson",
    summary="The filtered audit trail as JSON lines (all pages)",
)
async def export_audit(request: web.Request) -> web.StreamResponse:
    q = query(request, AuditQuery)
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    after = q.after
    while True:
        rows = await audit_page(request, q.model_copy(update={"after": after}), 1000)
        for e in rows:
            await resp.write(audit_item(e).model_dump_json().encode() + b"\n")
        if len(rows) < 1000:
            break
        after = rows[-1].seq
    await resp.write_eof()
    return resp


@routes.route(
    "GET",
    "/api/v1/audit/verify",
    permission="audit:read",
    response=VerifyResult,
    summary="Walk the whole hash chain and report the first broken entry",
)
async def verify(request: web.Request) -> web.Response:
    principal(request).require("audit:read", None)
    async with request.app[DB]() as session:
        count, broken = await auditlog.verify_chain(session)
    return json_response(
        VerifyResult(
            ok=broken is None,
            entries=count,
            broken_at=broken.seq if broken else None,
            reason=broken.reason if broken else None,
        )
    )
