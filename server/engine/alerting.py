"""The alert engine: evaluates rules on every ingested health report (and on
a timer for `agent.offline`), and turns firing and recovery into tickets.

- One alert record per (rule, agent): the dedup key, kept in the database, so
  repeated frames and HQ restarts never make a second ticket.
- Firing: the alert's ticket gets a timeline event while it is open; a ticket
  resolved within the rule's reopen window is reopened; otherwise a new
  incident is opened with the health snapshot, and the rule's diagnostics run
  on the agent at once and attach to it (auto-triage).
- Recovery: noted on the ticket; the ticket resolves itself only if no human
  touched it and the rule says so.
- Problems: after a firing is stored, its incident joins the rule's active
  problem, or the rule's open incidents on 3+ machines become a proposed one
  (`server.ops.problems`).

Evaluation is pure (`server.itsm.alerts`); this module is the I/O around it.
One task processes everything in order, so an agent's reports are never
evaluated concurrently.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.base.audit import Actor, Event
from server.engine.runs import Prepared, Runs
from server.itsm import alerts as pure
from server.itsm.tickets import OPEN, number_text
from server.ops import problems as problem_ops
from server.ops import ticketing
from server.store import auditlog
from server.store.fleet import Ingest
from server.store.models import Agent, Alert, AlertRule, Ticket, utcnow

log = structlog.get_logger(__name__)

SYSTEM = Actor("system", None, "alerts", "hq")
OFFLINE_CHECK_SECONDS = 15.0
RULES_RELOAD_SECONDS = 30.0


@dataclass(frozen=True)
class _Report:
    agent_id: str
    site_id: str
    tags: tuple[str, ...]
    report: dict[str, Any]
    at: datetime


class AlertEngine:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], runs: Runs) -> None:
        self._sessions = sessions
        self._runs = runs
        self._queue: asyncio.Queue[_Report | None] = asyncio.Queue(10000)
        self._rules: list[AlertRule] = []
        self._states: dict[tuple[str, str], pure.State] = {}
        self._agents: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loaded_at = 0.0

    # --- inputs ----------------------------------------------------------------------

    def on_ingest(self, batch: list[Ingest]) -> None:
        """Ingest listener: the newest report per agent in a committed batch."""
        newest: dict[str, Ingest] = {}
        for item in batch:
            if item.agent_id not in newest or item.frame.seq > newest[item.agent_id].frame.seq:
                newest[item.agent_id] = item
        for agent_id, item in newest.items():
            site, tags = self._agents.get(agent_id, ("", ()))
            report = item.report_json
            try:
                self._queue.put_nowait(_Report(agent_id, site, tags, report, utcnow()))
            except asyncio.QueueFull:
                log.warning("alert_queue_full", agent_id=agent_id)

    async def reload_rules(self) -> None:
        async with self._sessions() as session:
            self._rules = list(
                (await session.scalars(select(AlertRule).where(AlertRule.enabled.is_(True)))).all()
            )
            rows = await session.execute(select(Agent.id, Agent.site_id, Agent.tags))
            self._agents = {r[0]: (r[1], tuple(r[2] or ())) for r in rows}
        self._loaded_at = asyncio.get_running_loop().time()

    # --- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        await self.reload_rules()
        while True:
            item = await self._queue.get()
            if item is None:
                continue
            if asyncio.get_running_loop().time() - self._loaded_at > RULES_RELOAD_SECONDS:
                await self.reload_rules()
            site, tags = self._agents.get(item.agent_id, (item.site_id, item.tags))
            if not site:
                await self.reload_rules()
                site, tags = self._agents.get(item.agent_id, ("", ()))
            try:
                for rule in self._applicable(site, tags):
                    if rule.metric == pure.OFFLINE:
                        continue
                    value = pure.metric(item.report, rule.metric)
                    await self._evaluate(rule, item.agent_id, site, value, item.report, item.at)
            except Exception:
                log.exception("alert_evaluation_failed", agent_id=item.agent_id)

    async def offline_loop(self) -> None:
        while True:
            await asyncio.sleep(OFFLINE_CHECK_SECONDS)
            try:
                await self.check_offline()
            except Exception:
                log.exception("offline_check_failed")

    async def check_offline(self, now: datetime | None = None) -> None:
        rules = [r for r in self._rules if r.metric == pure.OFFLINE]
        if not rules:
            return
        now = now or utcnow()
        # Only the columns needed: decoding every agent's JSON here would stall HQ.
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(
                        Agent.id,
                        Agent.site_id,
                        Agent.tags,
                        Agent.online,
                        Agent.last_seen,
                        Agent.enrolled_at,
                    ).where(Agent.revoked_at.is_(None))
                )
            ).all()
        for agent_id, site_id, tags, online, last_seen, enrolled_at in rows:
            offline = 0.0 if online else (now - (last_seen or enrolled_at)).total_seconds()
            for rule in rules:
                if self._matches(rule, site_id, tuple(tags or ())):
                    await self._evaluate(rule, agent_id, site_id, offline, {}, now)

    def _matches(self, rule: AlertRule, site: str, tags: tuple[str, ...]) -> bool:
        if rule.site_id is not None and rule.site_id != site:
            return False
        return set(rule.tags or []) <= set(tags)

    def _applicable(self, site: str, tags: tuple[str, ...]) -> list[AlertRule]:
        return [r for r in self._rules if self._matches(r, site, tags)]

    async def _state(self, rule_id: str, agent_id: str) -> pure.State:
        key = (rule_id, agent_id)
        if key not in self._states:
            async with self._sessions() as session:
                row = await session.scalar(
                    select(Alert).where(Alert.rule_id == rule_id, Alert.agent_id == agent_id)
                )
            self._states[key] = pure.State(
                firing=row is not None and row.status == "firing",
                pending_since=row.pending_since if row is not None else None,
            )
        return self._states[key]

    async def _evaluate(
        self,
        rule: AlertRule,
        agent_id: str,
        site_id: str,
        value: float | None,
        report: dict[str, Any],
        now: datetime,
    ) -> None:
        spec = pure.Rule(
            rule.id, rule.metric, rule.op, rule.threshold, rule.for_seconds, rule.clear_threshold
        )
        before = await self._state(rule.id, agent_id)
        outcome = pure.evaluate(spec, before, value, now)
        if outcome.state == before and outcome.event is None:
            return
        self._states[(rule.id, agent_id)] = outcome.state
        triage: Prepared | None = None
        async with self._sessions.begin() as session:
            alert = await session.scalar(
                select(Alert).where(Alert.rule_id == rule.id, Alert.agent_id == agent_id)
            )
            if alert is None:
                alert = Alert(rule_id=rule.id, agent_id=agent_id, site_id=site_id, count=0)
                session.add(alert)
            alert.pending_since = outcome.state.pending_since
            alert.last_value = value
            alert.last_seen = now
            if outcome.event is None:
                alert.status = "pending" if outcome.state.pending_since else "ok"
            elif outcome.event == "fire":
                triage = await self._fire(session, rule, alert, value, report, now)
            else:
                await self._recover(session, rule, alert, value, now)
        if outcome.event == "fire" and alert.ticket_id:
            await self._consider_problem(rule, alert.ticket_id)
        if triage is not None:
            self._spawn(self._triage(rule, triage))

    async def _consider_problem(self, rule: AlertRule, ticket_id: str) -> None:
        """After the incident is stored: join the rule's active problem, or propose
        one when the rule fires on enough machines. In its own transaction, so a
        failure here never costs the incident."""
        try:
            async with self._sessions.begin() as session:
                ticket = await session.get(Ticket, ticket_id)
                if ticket is not None:
                    await problem_ops.after_alert_fired(session, rule, ticket)
        except Exception:
            log.exception("problem_proposal_failed", rule=rule.name, ticket_id=ticket_id)

    async def _fire(
        self,
        session: Any,
        rule: AlertRule,
        alert: Alert,
        value: float | None,
        report: dict[str, Any],
        now: datetime,
    ) -> Prepared | None:
        alert.status = "firing"
        alert.fired_at = now
        alert.first_seen = alert.first_seen or now
        alert.resolved_at = None
        alert.count += 1
        what = (
            f"{rule.name}: {rule.metric} {rule.op} {rule.threshold:g} (now {value:g})"
            if value is not None
            else rule.name
        )
        ticket = await session.get(Ticket, alert.ticket_id) if alert.ticket_id else None
        new_ticket = False
        # a resolved ticket is reopened within the rule's window (resolved is not OPEN)
        reopen = bool(
            ticket is not None
            and ticket.status == "resolved"
            and ticket.resolved_at
            and now - ticket.resolved_at <= timedelta(seconds=rule.reopen_window_seconds)
        )
        if ticket is not None and (ticket.status in OPEN or reopen):
            if reopen:
                await ticketing.act(
                    session,
                    ticket,
                    "reopen",
                    SYSTEM,
                    note=f"alert fired again: {what}",
                    human=False,
                    reopen_window_seconds=rule.reopen_window_seconds,
                )
            await ticketing.record_event(
                session,
                ticket,
                SYSTEM,
                "alert_fired",
                "alert_fired",
                what,
                data={"rule_id": rule.id, "value": value, "count": alert.count},
            )
        else:
            agent = await session.get(Agent, alert.agent_id)
            host = agent.hostname if agent else alert.agent_id
            if not report and agent is not None:
                report = agent.latest_health or {}  # timer-evaluated rules: the last known health
            ticket = await ticketing.create(
                session,
                site_id=alert.site_id,
                title=f"{rule.name} on {host}",
                description=f"Alert {what}.\n\nHealth at firing time is attached.",
                type="incident",
                priority=rule.priority,
                source="alert",
                tier="hq",
                requester_name="alerts",
                agent_ids=[alert.agent_id],
                actor=SYSTEM,
            )
            alert.ticket_id = ticket.id
            new_ticket = True
            await ticketing.record_event(
                session,
                ticket,
                SYSTEM,
                "alert_fired",
                "alert_fired",
                what,
                data={"rule_id": rule.id, "value": value, "count": alert.count, "snapshot": report},
            )
        await auditlog.append(
            session,
            SYSTEM,
            Event(
                "alert.fire",
                target_type="agent",
                target_id=alert.agent_id,
                site_id=alert.site_id,
                ticket_id=ticket.id,
                details={
                    "rule": rule.name,
                    "rule_id": rule.id,
                    "value": value,
                    "ticket": number_text(ticket.number),
                    "new_ticket": new_ticket,
                },
            ),
        )
        log.info(
            "alert_fired",
            rule=rule.name,
            agent_id=alert.agent_id,
            ticket=number_text(ticket.number),
            new_ticket=new_ticket,
        )
        if not rule.diagnostics or not new_ticket:
            return None
        from server.itsm.runs import TicketView

        return Prepared(
            agent_id=alert.agent_id,
            site_id=alert.site_id,
            name="",
            tier="diagnostic",
            params={},
            ticket=TicketView(ticket.id, ticket.number, ticket.site_id, ticket.status),
            timeout=60.0,
            actor=SYSTEM,
            user_id=None,
        )

    async def _recover(
        self, session: Any, rule: AlertRule, alert: Alert, value: float | None, now: datetime
    ) -> None:
        alert.status = "ok"
        alert.resolved_at = now
        ticket = await session.get(Ticket, alert.ticket_id) if alert.ticket_id else None
        await auditlog.append(
            session,
            SYSTEM,
            Event(
                "alert.recover",
                target_type="agent",
                target_id=alert.agent_id,
                site_id=alert.site_id,
                ticket_id=ticket.id if ticket else None,
                details={"rule": rule.name, "rule_id": rule.id, "value": value},
            ),
        )
        log.info("alert_recovered", rule=rule.name, agent_id=alert.agent_id)
        if ticket is None:
            return
        text = (
            f"{rule.name} recovered ({rule.metric} now {value:g})"
            if value is not None
            else f"{rule.name} recovered"
        )
        await ticketing.record_event(
            session,
            ticket,
            SYSTEM,
            "alert_recovered",
            "alert_recovered",
            text,
            data={"rule_id": rule.id, "value": value},
        )
        if rule.auto_resolve and ticket.status in OPEN and not ticket.human_touched:
            await ticketing.act(
                session,
                ticket,
                "resolve",
                SYSTEM,
                human=False,
                resolution_code="auto_recovered",
                resolution_text=text,
            )

    async def _triage(self, rule: AlertRule, base: Prepared) -> None:
        """Run the rule's diagnostics on the agent; each result attaches to the ticket."""
        async with self._sessions() as session:
            agent = await session.get(Agent, base.agent_id)
        offered = {e.get("name"): e for e in (agent.catalog or [])} if agent else {}
        for name in rule.diagnostics:
            entry = offered.get(name)
            if entry is None or entry.get("tier") != "diagnostic":
                log.info("triage_skipped", name=name, reason="not offered by the agent")
                continue
            params = _triage_params(name, agent, rule)
            try:
                await self._runs.execute(
                    Prepared(**{**base.__dict__, "name": name, "params": params})
                )
            except Exception:
                log.exception("triage_failed", name=name)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _triage_params(name: str, agent: Agent | None, rule: AlertRule) -> dict[str, Any]:
    """Sensible parameters for triage diagnostics: `disk.largest` looks inside
    the mount that fired (or the fullest disk), within the agent's file roots."""
    if name != "disk.largest" or agent is None:
        return {}
    report = agent.latest_health or {}
    mount = None
    if rule.metric.startswith("disk[") and not rule.metric.startswith("disk[*]"):
        mount = rule.metric[5 : rule.metric.index("]")]
    else:
        disks = [d for d in report.get("disks", []) if isinstance(d, dict)]
        if disks:
            mount = max(disks, key=lambda d: d.get("percent") or 0).get("mount")
    roots = [str(r) for r in (agent.policy or {}).get("file_roots", [])]
    if not mount:
        return {}
    for root in roots:
        if root == mount or root.startswith(mount.rstrip("/") + "/"):
            return {"path": root}  # a root on the full mount
        if mount.startswith(root.rstrip("/") + "/"):
            return {"path": mount}  # the mount itself lies inside a root
    return {}


async def ensure_default_rules(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Install the shipped rules once (an empty rule table gets them)."""
    async with sessions.begin() as session:
        if await session.scalar(select(AlertRule.id).limit(1)) is not None:
            return
        for spec in pure.DEFAULT_RULES:
            session.add(AlertRule(**spec))
