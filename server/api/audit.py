"""The audit trail, read-only: filtered pages, a JSON-lines export, and the
hash chain's verification status (`audit:read`)."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from server.store import auditlog
from server.views.audit import AuditItem, AuditQuery, audit_item, audit_page
from server.web.act import unit
from server.web.authn import principal
from server.web.keys import DB
from server.web.routing import ApiRouter, json_response, query

routes = ApiRouter("audit")


class AuditList(BaseModel):
    items: list[AuditItem]
    next: str | None = None


class VerifyResult(BaseModel):
    ok: bool
    entries: int
    broken_at: int | None
    reason: str | None


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
    rows = await audit_page(request.app[DB], principal(request), q, q.limit)
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
        rows = await audit_page(
            request.app[DB], principal(request), q.model_copy(update={"after": after}), 1000
        )
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
    async with unit(request) as (session, who):
        who.require("audit:read", None)
        count, broken = await auditlog.verify_chain(session)
    return json_response(
        VerifyResult(
            ok=broken is None,
            entries=count,
            broken_at=broken.seq if broken else None,
            reason=broken.reason if broken else None,
        )
    )
