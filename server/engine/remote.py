"""Remote sessions bound to tickets: request, consent, activity, end.

States: requested -> awaiting_consent -> active -> ended, or denied /
expired / failed. Every change goes on the ticket's timeline and into the
audit trail, and is pushed to the machine (`SessionInfo`), which enforces
the session's end on its side too.

Sessions end at `max_minutes`, when the engineer or the site ends them, when
their ticket is resolved, closed or cancelled, or when the engineer loses the
rights to hold them. A site's own request (an "assisted" session offer)
carries its consent for the one session accepted within the offer's timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncssh
import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.auth import rbac
from server.base.audit import Actor
from server.engine.shells import LiveShell
from server.itsm import consent as policy
from server.itsm.tickets import OPEN, number_text
from server.links.registry import Registry
from server.ops import remotesessions, ticketing
from server.store import people
from server.store.models import Agent, RemoteSession, Site, Ticket, utcnow
from server.store.recording import Recorder, RecordingError
from shared import protocol as p
from shared.errors import Conflict

log = structlog.get_logger(__name__)

SYSTEM = Actor("system", None, "sessions", "hq")
KIND_PERMISSION = {"shell": ("shell:open",), "exec": ("exec:run",), "files": ("files:read",)}
SWEEP_SECONDS = 1.0
RIGHTS_CHECK_SECONDS = 5.0


def site_policy(site: Site | None) -> policy.SitePolicy:
    return policy.SitePolicy.from_json(site.session_policy if site else None)


class Sessions:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        links: Registry,
        master_key: bytes,
        recordings: Path,
    ) -> None:
        self._sessions = sessions
        self._links = links
        self._master_key = master_key
        self._recordings = recordings
        self.shells: dict[str, LiveShell] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # one ending at a time per session, so concurrent ends record it once
        self._ending: dict[str, asyncio.Lock] = {}

    # --- waiting for changes (CLI and console follow a session live) ------------------

    def _signal(self, session_id: str) -> None:
        event = self._changed.pop(session_id, None)
        if event is not None:
            event.set()

    async def wait_change(self, session_id: str, timeout: float) -> None:
        event = self._changed.setdefault(session_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def push(self, rs: RemoteSession) -> None:
        """Tell the machine (if connected here) and anyone following the session."""
        self._signal(rs.id)
        link = self._links.get(rs.agent_id)
        if link is None:
            return
        async with self._sessions() as session:
            ticket = await session.get(Ticket, rs.ticket_id)
        if ticket is not None:
            link.send(remotesessions.info(rs, ticket.number))

    async def push_live(self, agent_id: str) -> None:
        """After an agent's hello: every live session on it, again."""
        link = self._links.get(agent_id)
        if link is None:
            return
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(RemoteSession, Ticket.number)
                    .join(Ticket, Ticket.id == RemoteSession.ticket_id)
                    .where(
                        RemoteSession.agent_id == agent_id,
                        RemoteSession.state.in_(sorted(policy.LIVE)),
                    )
                )
            ).all()
        for rs, number in rows:
            link.send(remotesessions.info(rs, number))

    # --- creating ---------------------------------------------------------------------------

    async def request(
        self,
        session: AsyncSession,
        *,
        agent: Agent,
        ticket: Ticket,
        kind: str,
        reason: str,
        max_minutes: int,
        requested_by: str | None,
        requested_by_name: str,
        actor: Actor,
        origin: str = "hq",
    ) -> RemoteSession:
        site = await session.get(Site, agent.site_id)
        site_rules = site_policy(site)
        agent_floor = (agent.policy or {}).get("require_consent")
        decision = policy.decide(kind, site_rules, agent_floor, origin)
        now = utcnow()
        rs = RemoteSession(
            agent_id=agent.id,
            site_id=agent.site_id,
            ticket_id=ticket.id,
            kind=kind,
            reason=reason,
            max_minutes=max_minutes,
            state="requested",
            origin=origin,
            requested_by=requested_by,
            requested_by_name=requested_by_name,
            consent_required=decision.consent_needed,
            consent_on_timeout=decision.on_timeout,
            record_input=site_rules.record_input,
        )
        if origin == "site":
            rs.expires_at = now + timedelta(seconds=site_rules.offer_timeout_seconds)
            rs.consent_by, rs.consent_via, rs.consent_at = requested_by_name, "site_request", now
        session.add(rs)
        await session.flush()
        await remotesessions.record(
            session,
            rs,
            actor,
            "requested",
            f"{kind} session requested: {reason}" if reason else f"{kind} session requested",
            origin=origin,
            consent_needed=decision.consent_needed,
            consent_why=decision.why,
            max_minutes=max_minutes,
        )
        if origin == "hq":
            if decision.consent_needed:
                rs.state = "awaiting_consent"
                rs.expires_at = now + timedelta(seconds=decision.timeout_seconds)
                await remotesessions.record(
                    session,
                    rs,
                    SYSTEM,
                    "awaiting_consent",
                    f"waiting for the site's consent ({decision.why})",
                    expires_at=rs.expires_at.isoformat(),
                )
            else:
                await self._activate(session, rs, SYSTEM, "no consent needed")
        return rs

    async def _activate(
        self, session: AsyncSession, rs: RemoteSession, actor: Actor, why: str
    ) -> None:
        now = utcnow()
        rs.state = "active"
        rs.started_at = now
        rs.ends_at = now + timedelta(minutes=rs.max_minutes)
        rs.expires_at = None
        await remotesessions.record(
            session, rs, actor, "active", f"session active ({why})", ends_at=rs.ends_at.isoformat()
        )

    async def accept_offer(
        self, session: AsyncSession, rs: RemoteSession, *, user_id: str, username: str, actor: Actor
    ) -> None:
        if rs.origin != "site" or rs.state != "requested":
            raise Conflict(f"session is {rs.state}; only a waiting site request can be accepted")
        rs.requested_by, rs.requested_by_name = user_id, username
        await self._activate(session, rs, actor, f"accepted by {username}; the site asked for it")

    async def answer(
        self,
        session: AsyncSession,
        rs: RemoteSession,
        approve: bool,
        *,
        by: str,
        via: str,
        actor: Actor,
    ) -> None:
        if rs.state != "awaiting_consent":
            raise Conflict(f"session is {rs.state}; it is not waiting for consent")
        rs.consent_by, rs.consent_via, rs.consent_at = by, via, utcnow()
        if approve:
            await self._activate(session, rs, actor, f"consent given by {by} ({via})")
        else:
            rs.state = "denied"
            rs.ended_at = utcnow()
            rs.end_reason = f"denied by {by} ({via})"
            await remotesessions.record(session, rs, actor, "denied", rs.end_reason)

    # --- ending -------------------------------------------------------------------------------

    async def end(
        self, session_id: str, reason: str, *, by: str, actor: Actor, state: str = "ended"
    ) -> RemoteSession | None:
        shell = self.shells.pop(session_id, None)
        recording: tuple[str, int] | None = None
        if shell is not None:
            try:
                recording = shell.recorder.close()
            except RecordingError as exc:
                log.error("recording_close_failed", session_id=session_id, error=str(exc))
            shell.close()
        lock = self._ending.setdefault(session_id, asyncio.Lock())
        try:
            async with lock, self._sessions.begin() as session:
                rs = await session.get(RemoteSession, session_id)
                if rs is None or rs.state in policy.FINAL:
                    if rs is not None and recording is not None and rs.recording_sha256 is None:
                        rs.recording_sha256, rs.recording_bytes = recording
                    return rs
                rs.state = state
                rs.ended_at = utcnow()
                rs.end_reason = reason
                rs.ended_by = by
                details: dict[str, Any] = {"reason": reason, "by": by}
                if recording is not None:
                    rs.recording_sha256, rs.recording_bytes = recording
                    details.update(recording_sha256=recording[0], recording_bytes=recording[1])
                summary = f"session {state}: {reason}"
                await remotesessions.record(session, rs, actor, state, summary, **details)
        finally:  # later ends find the session final in the database
            self._ending.pop(session_id, None)
        log.info("session_end", session_id=session_id, state=state, reason=reason)
        await self.push(rs)
        return rs

    async def sweep(self) -> None:
        """Deadlines: consent timeouts, expired offers, max_minutes."""
        now = utcnow()
        async with self._sessions() as session:
            rows = (
                await session.scalars(
                    select(RemoteSession).where(RemoteSession.state.in_(sorted(policy.LIVE)))
                )
            ).all()
        for rs in rows:
            if rs.state == "active" and rs.ends_at and now >= rs.ends_at:
                await self.end(
                    rs.id, f"reached its limit of {rs.max_minutes} minutes", by="hq", actor=SYSTEM
                )
            elif rs.state == "awaiting_consent" and rs.expires_at and now >= rs.expires_at:
                if rs.consent_on_timeout == "allow":
                    async with self._sessions.begin() as session:
                        live = await session.get(RemoteSession, rs.id)
                        if live is not None and live.state == "awaiting_consent":
                            live.consent_by, live.consent_via = "nobody", "timeout"
                            await self._activate(
                                session, live, SYSTEM, "no answer; the site allows on timeout"
                            )
                            rs = live
                    await self.push(rs)
                else:
                    await self.end(
                        rs.id,
                        "nobody answered within the consent timeout",
                        by="hq",
                        actor=SYSTEM,
                        state="denied",
                    )
            elif (
                rs.state == "requested"
                and rs.origin == "site"
                and rs.expires_at
                and now >= rs.expires_at
            ):
                await self.end(
                    rs.id,
                    "nobody at HQ took the request in time",
                    by="hq",
                    actor=SYSTEM,
                    state="expired",
                )

    async def check_rights(self) -> None:
        """End active sessions whose engineer no longer holds the rights."""
        async with self._sessions() as session:
            rows = (
                await session.scalars(select(RemoteSession).where(RemoteSession.state == "active"))
            ).all()
            revoked = []
            for rs in rows:
                if rs.requested_by is None:
                    continue
                rights = await people.rights_for(session, rs.requested_by)
                needed = ("sessions:request", *KIND_PERMISSION[rs.kind])
                if not all(rbac.allowed(rights, perm, rs.site_id) for perm in needed):
                    revoked.append(rs.id)
        for session_id in revoked:
            await self.end(session_id, "the engineer's rights were revoked", by="hq", actor=SYSTEM)

    def tickets_changed(self, ticket_ids: set[str]) -> None:
        """After-commit hook: sessions of a ticket that stopped being open end."""
        task = asyncio.create_task(self._end_for_tickets(ticket_ids))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _end_for_tickets(self, ticket_ids: set[str]) -> None:
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(RemoteSession.id, Ticket.status)
                    .join(Ticket, Ticket.id == RemoteSession.ticket_id)
                    .where(
                        RemoteSession.ticket_id.in_(ticket_ids),
                        RemoteSession.state.in_(sorted(policy.LIVE)),
                    )
                )
            ).all()
        for session_id, status in rows:
            if status not in OPEN:
                await self.end(session_id, f"its ticket was {status}", by="hq", actor=SYSTEM)

    async def loop(self) -> None:
        last_rights = 0.0
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self.sweep()
                now = asyncio.get_running_loop().time()
                if now - last_rights >= RIGHTS_CHECK_SECONDS:
                    last_rights = now
                    await self.check_rights()
            except Exception:
                log.exception("session_sweep_failed")

    async def offer_from_site(self, agent_id: str, ticket_id: str, frame: p.Help) -> None:
        """`fieldlink-agent help --assist`: the ticket's session offer, queued for HQ."""
        if not frame.assist:
            return
        async with self._sessions.begin() as session:
            agent = await session.get(Agent, agent_id)
            ticket = await session.get(Ticket, ticket_id)
            if agent is None or ticket is None:
                return
            who = f"{frame.user}@{agent.hostname}" if frame.user else agent.hostname
            rs = await self.offer(
                session,
                agent=agent,
                ticket=ticket,
                reason=frame.text,
                asked_by=who,
                actor=Actor("agent", agent_id, who, "machine"),
            )
        if rs is not None:
            await self.push(rs)

    async def offer(
        self,
        session: AsyncSession,
        *,
        agent: Agent,
        ticket: Ticket,
        reason: str,
        asked_by: str,
        actor: Actor,
    ) -> RemoteSession | None:
        """A site asks for someone at HQ to take over `agent`: a shell session
        offer on `ticket`, waiting in HQ's queue; the site's asking is its
        consent. None (and a note on the ticket) when the machine's policy
        allows no shells. The caller pushes the offer once committed."""
        if (agent.policy or {}).get("allow_shell") is False:
            await ticketing.record_event(
                session,
                ticket,
                SYSTEM,
                "session",
                "session_not_offered",
                "the site asked for someone to take over, but this machine's policy "
                "does not allow shells (allow_shell = false)",
                internal=True,
            )
            return None
        rs = await self.request(
            session,
            agent=agent,
            ticket=ticket,
            kind="shell",
            reason=reason[:2000],
            max_minutes=60,
            requested_by=None,
            requested_by_name="",
            origin="site",
            actor=actor,
        )
        rs.consent_by = asked_by
        return rs

    # --- consent from the machine -----------------------------------------------------------

    async def from_machine(self, agent_id: str, frame: p.Consent) -> None:
        async with self._sessions.begin() as session:
            rs = await session.get(RemoteSession, frame.session_id)
            agent = await session.get(Agent, agent_id)
            if rs is None or rs.agent_id != agent_id or agent is None:
                log.warning(
                    "consent_for_unknown_session", agent_id=agent_id, session_id=frame.session_id
                )
                return
            who = f"{frame.user}@{agent.hostname}" if frame.user else agent.hostname
            actor = Actor("agent", agent_id, who, "machine")
            if frame.action == "end":
                end_now = True
            else:
                end_now = False
                try:
                    await self.answer(
                        session, rs, frame.action == "approve", by=who, via="machine", actor=actor
                    )
                except Conflict as exc:
                    log.info("consent_ignored", session_id=rs.id, reason=str(exc))
                    return
        if end_now:
            await self.end(frame.session_id, f"ended at the machine by {who}", by=who, actor=actor)
        else:
            await self.push(rs)

    # --- the shell bridge ---------------------------------------------------------------------

    async def open_shell(
        self, rs: RemoteSession, ticket_number: int, *, term: str, cols: int, rows: int
    ) -> LiveShell:
        if rs.id in self.shells:
            raise Conflict("this session's terminal is already open")
        link = self._links.get(rs.agent_id)
        if link is None:
            raise Conflict("the machine is not connected")
        path = self._recordings / f"{rs.id}.cast.enc"
        header = {
            "version": 2,
            "width": cols,
            "height": rows,
            "timestamp": int(utcnow().timestamp()),
            "env": {"TERM": term},
            "title": f"{number_text(ticket_number)} {rs.kind}",
            "fieldlink": {
                "session": rs.id,
                "ticket": number_text(ticket_number),
                "agent": rs.agent_id,
                "engineer": rs.requested_by_name,
            },
        }
        try:
            recorder = Recorder(path, self._master_key, rs.id, header)
        except RecordingError as exc:  # no recording, no shell: fail closed
            log.error("recording_open_failed", session_id=rs.id, error=str(exc))
            reason = f"the recording could not be written ({exc}); the session was stopped"
            await self.end(rs.id, reason, by="hq", actor=SYSTEM, state="failed")
            raise Conflict(reason) from exc
        env = {
            p.SESSION_ENV: rs.id,
            p.TICKET_ENV: number_text(ticket_number),
            p.ENGINEER_ENV: rs.requested_by_name,
        }
        try:
            process = await link.conn.create_process(
                term_type=term,
                term_size=(cols, rows),
                env=env,
                encoding=None,
            )
        except (asyncssh.Error, OSError) as exc:
            recorder.close()
            reason = f"the machine refused the shell: {exc}"
            await self.end(rs.id, reason, by="machine", actor=SYSTEM, state="failed")
            raise Conflict(reason) from exc
        shell = LiveShell(rs.id, process, recorder, rs.record_input)
        self.shells[rs.id] = shell
        return shell

    async def stop(self) -> None:
        for session_id in list(self.shells):
            await self.end(session_id, "HQ is shutting down", by="hq", actor=SYSTEM)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
