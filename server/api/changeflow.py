"""Deciding on and running a change: approve or reject (approvers other than
the requester, holding `changes:approve` on every site it touches), start,
cancel, and the review that closes it (optionally running the backout)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.api.changes import change_answer, require_all, state_is
from server.auth.principal import Principal
from server.itsm.runs import TIER_PERMISSION
from server.ops import changes as ch
from server.store.models import Change, ChangeApproval, JobItem, utcnow
from server.views.changes import ChangeOut, locked_change
from server.web.act import act
from server.web.keys import CHANGES, JOBS, LINKS
from server.web.routing import ApiRouter, body
from shared.errors import Conflict, Forbidden, Invalid

routes = ApiRouter("changes")


class Decision(BaseModel):
    comment: str = Field("", max_length=5000)


class Refusal(BaseModel):
    comment: str = Field(min_length=1, max_length=5000, description="why it is refused")


class Cancel(BaseModel):
    reason: str = Field("", max_length=5000)


class Review(BaseModel):
    outcome: Literal["successful", "failed", "rolled_back"]
    comment: str = Field("", max_length=20000)
    run_backout: bool = Field(
        False, description="with rolled_back: run the backout action where the change ran"
    )


async def decide(
    session: AsyncSession, who: Principal, change: Change, decision: str, comment: str
) -> None:
    require_all(who, "changes:approve", change, "deciding on a change")
    state_is(change, "requested", doing=f"to {decision} it")
    if change.requester_id == who.user_id:
        raise Forbidden(
            f"you requested {ch.label(change)}: another approver must decide on it",
            fields={"approver": "the requester cannot decide on their own change"},
            code="own_change",
        )
    prior = await session.scalar(
        select(ChangeApproval).where(
            ChangeApproval.change_id == change.id, ChangeApproval.approver_id == who.user_id
        )
    )
    if prior is not None:
        raise Conflict(
            f"you already decided on {ch.label(change)} ({prior.decision})",
            fields={"approver": "one decision per approver"},
        )
    session.add(
        ChangeApproval(
            change_id=change.id,
            approver_id=who.user_id,
            approver_name=who.username,
            decision=decision,
            comment=comment,
        )
    )
    await session.flush()
    now = utcnow()
    change.updated_at = now
    if decision == "reject":
        change.state = "rejected"
        change.closed_at = now
        ch.add_event(session, change, who.username, "rejected", comment)
        await ch.audit(session, who.actor(), change, "change.reject", {"comment": comment})
        return
    approvals = len(
        (
            await session.scalars(
                select(ChangeApproval.id).where(
                    ChangeApproval.change_id == change.id, ChangeApproval.decision == "approve"
                )
            )
        ).all()
    )
    ch.add_event(
        session,
        change,
        who.username,
        "approval",
        comment,
        {"approvals": approvals, "required": change.approvals_required},
    )
    if approvals >= change.approvals_required:
        change.state = "approved"
        change.approved_at = now
        ch.add_event(session, change, None, "state", "approved")
    await ch.audit(
        session,
        who.actor(),
        change,
        "change.approve",
        {"comment": comment, "approvals": approvals, "required": change.approvals_required},
    )


@routes.route(
    "POST",
    "/api/v1/changes/{change_id}/approve",
    errors=(409,),
    permission="changes:approve",
    body=Decision,
    response=ChangeOut,
    summary="Approve a requested change (not your own; 409 if not requested or already "
    "decided); enough approvals make it approved",
)
async def approve_change(request: web.Request) -> web.Response:
    req = body(request, Decision)
    async with act(request, locked_change) as (session, change, who):
        await decide(session, who, change, "approve", req.comment)
    return await change_answer(request, change.id)


@routes.route(
    "POST",
    "/api/v1/changes/{change_id}/reject",
    errors=(409,),
    permission="changes:approve",
    body=Refusal,
    response=ChangeOut,
    summary="Reject a requested change with a reason (not your own): one refusal rejects it",
)
async def reject_change(request: web.Request) -> web.Response:
    req = body(request, Refusal)
    async with act(request, locked_change) as (session, change, who):
        await decide(session, who, change, "reject", req.comment)
    return await change_answer(request, change.id)


async def start(session: AsyncSession, app: Any, who: Principal, change: Change) -> list[int]:
    require_all(who, "changes:request", change, "starting a change")
    require_all(who, TIER_PERMISSION[change.tier], change, f"running this {change.tier}")
    state_is(change, "approved", doing="starting it")
    now = utcnow()
    change.state = "in_progress"
    change.stage = "pilot"
    change.started_by = who.user_id
    change.started_by_name = who.username
    change.started_at = change.pilot_started_at = change.updated_at = now
    connected = {a["id"] for a in change.agents if app[LINKS].get(a["id"])}
    change.pilot_agent_ids = ch.choose_pilot(change, connected)
    pilot = await ch.live_agents(session, change, change.pilot_agent_ids)
    if not pilot:
        raise Conflict(
            "every pilot machine has been revoked", fields={"pilot_agent_ids": "none left"}
        )
    ch.add_event(session, change, who.username, "state", "started")
    await ch.audit(session, who.actor(), change, "change.start", {"pilot": [a for a, _ in pilot]})
    return await ch.open_stage(session, change, "pilot", pilot)


@routes.route(
    "POST",
    "/api/v1/changes/{change_id}/start",
    errors=(409,),
    permission="changes:request",
    response=ChangeOut,
    summary="Start an approved change: the pilot job runs now, the rest after the health gate "
    "(needs the run permission of its action on every site it touches)",
)
async def start_change(request: web.Request) -> web.Response:
    app = request.app
    async with act(request, locked_change) as (session, change, who):
        item_ids = await start(session, app, who, change)
    app[JOBS].start(item_ids)
    app[CHANGES].wake()
    return await change_answer(request, change.id)


async def cancel(
    session: AsyncSession, app: Any, who: Principal, change: Change, reason: str
) -> Callable[[], None]:
    require_all(who, "changes:request", change, "cancelling a change")
    state_is(change, "requested", "approved", "in_progress", doing="cancelling it")
    announce: Callable[[], None] = lambda: None  # noqa: E731
    if change.state == "in_progress":
        if change.jobs and change.stage != "gate":
            _, announce = await app[JOBS].cancel_in(session, change.jobs[-1]["job_id"])
        await ch.halt(
            session,
            change,
            f"cancelled by {who.username}" + (f": {reason}" if reason else ""),
        )
    else:
        change.state = "cancelled"
        change.closed_at = change.updated_at = utcnow()
        ch.add_event(session, change, who.username, "cancelled", reason)
    await ch.audit(session, who.actor(), change, "change.cancel", {"reason": reason})
    return announce


@routes.route(
    "POST",
    "/api/v1/changes/{change_id}/cancel",
    errors=(409,),
    permission="changes:request",
    body=Cancel,
    response=ChangeOut,
    summary="Cancel a change: before it runs it is cancelled; while it runs it halts "
    "(queued items cancelled) and goes to review",
)
async def cancel_change(request: web.Request) -> web.Response:
    req = body(request, Cancel)
    async with act(request, locked_change) as (session, change, who):
        announce = await cancel(session, request.app, who, change, req.reason)
    announce()
    return await change_answer(request, change.id)


async def review(session: AsyncSession, who: Principal, change: Change, req: Review) -> list[int]:
    require_all(who, "changes:request", change, "reviewing a change")
    state_is(change, "review", doing="closing the review")
    if req.outcome == "successful" and change.halted:
        raise Conflict(
            f"{ch.label(change)} was halted ({change.halt_reason}); it cannot be successful",
            fields={"outcome": "failed or rolled_back"},
        )
    item_ids: list[int] = []
    if req.run_backout:
        if req.outcome != "rolled_back":
            raise Invalid(
                "the backout runs only with outcome rolled_back",
                fields={"run_backout": "only with rolled_back"},
            )
        if not change.backout_action or change.backout_tier is None:
            raise Invalid(
                f"{ch.label(change)} has no backout action",
                fields={"run_backout": "no backout action"},
            )
        require_all(who, TIER_PERMISSION[change.backout_tier], change, "running the backout")
        job_ids = [s["job_id"] for s in change.jobs]
        ran = set(
            await session.scalars(
                select(JobItem.agent_id).where(
                    JobItem.job_id.in_(job_ids),
                    JobItem.status.not_in(("queued", "cancelled", "expired")),
                )
            )
        )
        agents = await ch.live_agents(
            session, change, [a["id"] for a in change.agents if a["id"] in ran]
        )
        if agents:
            change.started_by = who.user_id
            change.started_by_name = who.username
            item_ids = await ch.open_stage(session, change, "backout", agents)
    now = utcnow()
    change.state = req.outcome
    change.outcome = req.outcome
    change.review_comment = req.comment
    change.closed_at = change.updated_at = now
    ch.add_event(session, change, who.username, "review", req.comment, {"outcome": req.outcome})
    await ch.audit(
        session,
        who.actor(),
        change,
        "change.review",
        {"outcome": req.outcome, "comment": req.comment, "backout_items": len(item_ids)},
    )
    return item_ids


@routes.route(
    "POST",
    "/api/v1/changes/{change_id}/review",
    errors=(409,),
    permission="changes:request",
    body=Review,
    response=ChangeOut,
    summary="Close a change's review as successful, failed or rolled_back (optionally "
    "running the backout action where it ran)",
)
async def review_change(request: web.Request) -> web.Response:
    req = body(request, Review)
    async with act(request, locked_change) as (session, change, who):
        item_ids = await review(session, who, change, req)
    request.app[JOBS].start(item_ids)
    return await change_answer(request, change.id)
