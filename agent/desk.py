"""The help desk on the machine: what the daemon does with requests that come
over the local socket (agent.local).

A help request becomes a `Help` frame with a fresh health sample, a rating a
`Rating` frame; both go into the spool first (so nothing is lost while HQ is
away), wake the telemetry sender and wait, bounded, for HQ's receipt. An
answer is either HQ's receipt or "queued": saved here and sent when the link
returns, its receipt recorded then for `fieldlink-agent tickets`.

A person's answer to a session request (approve, deny) or the end of a
session becomes a spooled `Consent` frame the same way; the answer waits,
bounded, for HQ to report the session's new state (`SessionInfo`, kept in
the session book, agent.sessions). Ending a session also stops its shell and
file transfer here: at once when HQ is unreachable, otherwise as soon as HQ
has closed them or after a moment (`END_GRACE`), whichever comes first. A
desktop stream stops at once, always: the screen is the person's.

In a desktop session, control of keyboard and mouse is granted and taken
back here (`control`, `view_only`): it applies to the open stream at once and
goes to HQ as a spooled `Consent` frame for its records. The notice on the
screen ends a session the same way as `--end` (`end_at_screen`).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from agent.config import AgentConfig
from agent.desktop import control_now
from agent.link import Telemetry
from agent.local import (
    Answer,
    AnyRequest,
    Caller,
    ConsentAnswer,
    ConsentRequest,
    HelpAnswer,
    HelpRequest,
    OfferAnswer,
    OfferRequest,
    RateAnswer,
    RateRequest,
    Refusal,
    RequestInfo,
    SessionView,
    StatusAnswer,
    SuggestAnswer,
    SuggestRequest,
    TicketsAnswer,
    TicketsRequest,
)
from agent.policy import Policy
from agent.sessions import FINAL, LIVE, Known, SessionBook
from agent.spool import Asked, RequestRow, Spool, Spooled, SpoolFull
from shared import protocol as p
from shared.version import __version__

log = structlog.get_logger(__name__)

# A person may have this many help requests waiting to reach HQ at once: enough
# for real needs while HQ is away, not enough for a stuck loop to flood HQ.
MAX_WAITING_HELP = 5
RECENT_SECONDS = 7 * 86400  # requests answered this recently are listed
END_GRACE = 1.0  # seconds HQ has to close a session's channels before the agent does


def _when(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def request_info(row: RequestRow) -> RequestInfo:
    return RequestInfo(
        kind=row.kind,
        seq=row.seq,
        user=row.user,
        summary=row.summary,
        asked_at=datetime.fromtimestamp(row.asked_at, UTC),
        state=row.state,
        answered_at=_when(row.answered_at),
        ok=row.ok,
        ticket=row.ticket,
        message=row.message,
    )


def session_view(known: Known, channels: int = 0) -> SessionView:
    info = known.info
    return SessionView(
        id=info.session_id,
        kind=info.kind,
        state=info.state,
        origin=info.origin,
        engineer=info.engineer,
        ticket=info.ticket,
        reason=info.reason,
        consent_by=info.consent_by,
        expires_at=info.expires_at,
        started_at=info.started_at,
        end_reason=info.end_reason,
        ended_here=known.ended_here,
        channels=channels,
        heard_at=datetime.fromtimestamp(known.heard_at, UTC),
    )


class Desk:
    """Answers local requests for the daemon (the `handler` of a LocalServer)."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        spool: Spool,
        telemetry: Telemetry,
        sample: Callable[[], Awaitable[p.HealthReport | None]],
        sessions: SessionBook,
        policy: Callable[[], Policy],
        status_extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._config = config
        # more of the agent's own state for `status` (policy warnings, run
        # containment, dropped log lines): StatusAnswer fields by name
        self._status_extra = status_extra
        self._spool = spool
        self._telemetry = telemetry
        self._sample = sample
        self._sessions = sessions
        self._policy = policy
        # one knowledge-base query to HQ at a time from this machine
        self._suggesting = asyncio.Lock()

    async def __call__(self, caller: Caller, request: AnyRequest) -> Answer:
        if isinstance(request, HelpRequest):
            return await self.help(caller, request)
        if isinstance(request, RateRequest):
            return await self.rate(caller, request)
        if isinstance(request, TicketsRequest):
            return await self.tickets()
        if isinstance(request, ConsentRequest):
            return await self.consent(caller, request)
        if isinstance(request, OfferRequest):
            return await self.offer(request)
        if isinstance(request, SuggestRequest):
            return await self.suggest(request)
        return await self.status(caller)

    def _view(self, known: Known) -> SessionView:
        view = session_view(known, self._sessions.channels(known.info.session_id))
        if known.info.kind != "desktop":
            return view
        sid = known.info.session_id
        control, by = control_now(self._policy(), known.info, self._sessions.grant(sid))
        return view.model_copy(
            update={"control_asked": known.info.control, "control": control, "control_by": by}
        )

    async def _outcome(self, kind: str, seq: int, wait: float) -> dict[str, object]:
        """HQ's receipt for (kind, seq) if it comes within `wait` seconds."""
        connected = self._telemetry.open
        receipt = await self._telemetry.receipt(kind, seq, wait) if connected else None
        if receipt is None:
            return {"seq": seq, "state": "queued", "connected": connected}
        return {
            "seq": seq,
            "state": "answered",
            "connected": connected,
            "ok": receipt.ok,
            "ticket": receipt.ticket,
            "message": receipt.message,
        }

    async def help(self, caller: Caller, request: HelpRequest) -> HelpAnswer:
        rows = await asyncio.to_thread(self._spool.requests, time.time())
        waiting = [
            r for r in rows if r.kind == "help" and r.user == caller.user and r.state == "waiting"
        ]
        if len(waiting) >= MAX_WAITING_HELP:
            raise Refusal(
                "too_many_waiting",
                f"{len(waiting)} of your help requests are already waiting to reach HQ; "
                "they go as soon as the connection returns",
            )
        text = request.text.strip()
        snapshot = await self._sample()
        asked_at = datetime.now(UTC)

        def build(seq: int, dropped: int) -> bytes:
            frame = p.Help(
                seq=seq,
                text=text,
                user=caller.user,
                assist=request.assist,
                asked_at=asked_at,
                snapshot=snapshot,
                solved_by=request.solved_by,
            )
            return p.encode(frame)

        asked = Asked(caller.user, text.splitlines()[0][:200])
        spooled = await self._append("help", build, asked)
        self._telemetry.notify()
        log.info(
            "help_requested",
            seq=spooled.seq,
            user=caller.user,
            assist=request.assist,
            snapshot=snapshot is not None,
        )
        return HelpAnswer.model_validate(await self._outcome("help", spooled.seq, request.wait))

    async def suggest(self, request: SuggestRequest) -> SuggestAnswer:
        """HQ's best published articles for the words, if HQ is there and answers
        in time. Not spooled, and one at a time: a loop of local callers cannot
        make HQ search faster than it answers."""
        connected = self._telemetry.open
        async with self._suggesting:
            found = await self._telemetry.ask_kb(request.text.strip(), request.limit, request.wait)
        return SuggestAnswer(
            connected=connected,
            answered=found is not None,
            items=list(found.items) if found is not None else [],
        )

    async def rate(self, caller: Caller, request: RateRequest) -> RateAnswer:
        rows = await asyncio.to_thread(self._spool.requests, 0.0)
        asker = next(
            (r.user for r in rows if r.kind == "help" and r.ok and r.ticket == request.ticket),
            None,
        )
        if asker is not None and asker != caller.user and caller.uid not in (0, os.getuid()):
            raise Refusal(
                "forbidden", f"{request.ticket} was asked for by {asker}; only they can rate it"
            )

        def build(seq: int, dropped: int) -> bytes:
            frame = p.Rating(
                seq=seq,
                ticket=request.ticket,
                score=request.score,
                comment=request.comment,
                user=caller.user,
            )
            return p.encode(frame)

        asked = Asked(caller.user, f"rating {request.ticket} {request.score}/5")
        spooled = await self._append("rating", build, asked)
        self._telemetry.notify()
        log.info("rating_given", seq=spooled.seq, user=caller.user, ticket=request.ticket)
        return RateAnswer.model_validate(await self._outcome("rating", spooled.seq, request.wait))

    async def tickets(self) -> TicketsAnswer:
        rows = await asyncio.to_thread(self._spool.requests, time.time() - RECENT_SECONDS)
        latest = self._telemetry.tickets
        return TicketsAnswer(
            connected=self._telemetry.open,
            received_at=_when(latest.received_at) if latest else None,
            tickets=latest.items if latest else [],
            requests=[request_info(r) for r in rows],
        )

    async def _append(
        self, kind: str, build: Callable[[int, int], bytes], asked: Asked | None = None
    ) -> Spooled:
        """Spool what a person asked; a spool that cannot take it (a full disk)
        is a refusal that says so, not an internal error."""
        try:
            return await asyncio.to_thread(self._spool.append, kind, build, asked)
        except (SpoolFull, sqlite3.Error, OSError) as exc:
            log.error("spool_write_failed", kind=kind, error=str(exc))
            raise Refusal(
                "spool_full",
                f"this machine could not save your {kind} request ({exc}); "
                "free space on its disk, or call your IT team",
            ) from None

    async def status(self, caller: Caller) -> StatusAnswer:
        stats = await asyncio.to_thread(self._spool.stats)
        error = self._spool.error
        rows = await asyncio.to_thread(self._spool.requests, time.time())
        since = stats.values.get("state:since")
        return StatusAnswer(
            agent_id=self._config.agent_id,
            site=self._config.site,
            version=__version__,
            caller=caller.user,
            connected=self._telemetry.open,
            since=_when(float(since)) if since else None,
            spool_pending=stats.pending,
            spool_dropped=stats.dropped,
            requests_waiting=sum(1 for r in rows if r.state == "waiting"),
            spool_error=error.message if error else None,
            spool_error_since=_when(error.since) if error else None,
            sessions=[self._view(k) for k in self._sessions.live()],
            **(self._status_extra() if self._status_extra is not None else {}),
        )

    # --- sessions ---------------------------------------------------------------------

    def _one(self, text: str) -> Known:
        found = self._sessions.find(text)
        if not found:
            raise Refusal(
                "not_found",
                f"no session {text!r} on this machine; `fieldlink-agent consent` lists them",
            )
        if len(found) > 1:
            raise Refusal("ambiguous", f"{text!r} names {len(found)} sessions; give more of its id")
        return found[0]

    async def consent(self, caller: Caller, request: ConsentRequest) -> ConsentAnswer:
        """List sessions, or send a person's answer about one to HQ."""
        connected = self._telemetry.open
        if request.action == "list":
            return ConsentAnswer(
                action="list",
                connected=connected,
                state="listed",
                sessions=[self._view(k) for k in self._sessions.all()],
            )
        if request.session is None:
            raise Refusal("bad_request", f"{request.action} needs a session id")
        if request.action in ("control", "view_only"):
            return await self._control(caller, request.session, request.action == "control")
        known = self._pick(request.session, request.action, connected)
        sid = known.info.session_id if known else request.session
        before = known.info.state if known else None

        def build(seq: int, dropped: int) -> bytes:
            frame = p.Consent(seq=seq, session_id=sid, action=request.action, user=caller.user)
            return p.encode(frame)

        await self._append("consent", build)
        self._telemetry.notify()
        log.info("consent_given", session_id=sid, action=request.action, user=caller.user)

        def settled() -> bool:
            now = self._sessions.get(sid)
            if now is None:
                return False
            if request.action == "end":
                return now.info.state in FINAL
            return now.info.state != before

        stopped = 0
        wait = request.wait if connected else 0.0
        if request.action == "end":
            # New channels are refused from now on; HQ closes the open ones when it
            # ends the session, and whatever is still open after a moment is stopped here.
            stopped = self._sessions.channels(sid)
            self._sessions.end_here(sid, f"by {caller.user}", stop=False)
            # the screen is dropped at once, not after HQ's moment
            self._sessions.stop_now(sid, "desktop", f"ended at this machine (by {caller.user})")
            grace = min(wait, END_GRACE)
            await self._sessions.wait(lambda: settled() or not self._sessions.channels(sid), grace)
            self._sessions.end_here(sid, f"by {caller.user}", stop=True)
            wait = max(0.0, wait - grace)
        answered = await self._sessions.wait(settled, wait) if connected else False
        now = self._sessions.get(sid)
        return ConsentAnswer(
            action=request.action,
            connected=connected,
            state="answered" if answered else "queued",
            session=self._view(now) if now else None,
            stopped=stopped,
        )

    async def _control(self, caller: Caller, text: str, granted: bool) -> ConsentAnswer:
        """Grant or take back keyboard and mouse in an active desktop session:
        at once here, then HQ is told (spooled)."""
        known = self._one(text)
        info = known.info
        sid = info.session_id
        if info.kind != "desktop":
            raise Refusal("conflict", f"session {sid} is a {info.kind} session, not a desktop one")
        if info.state != "active" or known.ended_here is not None:
            state = "ended here" if known.ended_here else info.state.replace("_", " ")
            raise Refusal(
                "conflict",
                f"session {sid} is {state}; control is granted or taken back in an active "
                "desktop session (approve it first)",
            )
        policy = self._policy()
        if granted and policy.desktop_control == "never":
            raise Refusal(
                "forbidden",
                'this machine\'s policy never gives control (desktop_control = "never")',
            )
        if granted and not info.control:
            raise Refusal(
                "conflict",
                f"{info.engineer} asked for a view-only session; control cannot be granted in it",
            )
        who = caller.user
        self._sessions.grant_here(sid, granted, f"{who} at this machine")
        action = "control" if granted else "view_only"

        def build(seq: int, dropped: int) -> bytes:
            return p.encode(p.Consent(seq=seq, session_id=sid, action=action, user=who))

        await self._append("consent", build)
        self._telemetry.notify()
        log.info("desktop_control_given", session_id=sid, granted=granted, user=who)
        now = self._sessions.get(sid)
        return ConsentAnswer(
            action=action,
            connected=self._telemetry.open,
            state="applied",
            session=self._view(now) if now else None,
        )

    async def end_at_screen(self, session_id: str, who: str) -> None:
        """The person at the screen pressed the notice's button: the session
        ends here at once (its channels stop) and HQ is told, as for `--end`."""
        self._sessions.end_here(session_id, "at the screen", stop=True)

        def build(seq: int, dropped: int) -> bytes:
            return p.encode(p.Consent(seq=seq, session_id=session_id, action="end", user=who))

        try:
            await self._append("consent", build)
        except Refusal as exc:  # a full disk: ended here all the same
            log.error("screen_end_unsent", session_id=session_id, reason=exc.message)
            return
        self._telemetry.notify()
        log.info("consent_given", session_id=session_id, action="end", user=who)

    def _pick(self, text: str, action: str, connected: bool) -> Known | None:
        """The session an answer is about. While HQ is unreachable an id this
        machine has not heard of is taken as given (HQ will judge it)."""
        try:
            known = self._one(text)
        except Refusal:
            if connected:
                raise
            return None
        state = known.info.state
        if action in ("approve", "deny") and state != "awaiting_consent":
            raise Refusal(
                "conflict",
                f"session {known.info.session_id} is {state.replace('_', ' ')}; "
                "only a request waiting for consent can be approved or denied",
            )
        if action == "end" and state not in LIVE:
            raise Refusal("conflict", f"session {known.info.session_id} is already {state}")
        return known

    async def offer(self, request: OfferRequest) -> OfferAnswer:
        """The session offer on a ticket this machine asked for, once it differs
        from what the caller saw last."""

        def changed() -> bool:
            known = self._sessions.for_ticket(request.ticket)
            if known is None:
                return False
            return known.info.state != request.seen

        await self._sessions.wait(changed, request.wait)
        known = self._sessions.for_ticket(request.ticket)
        return OfferAnswer(
            connected=self._telemetry.open,
            shells_allowed=self._policy().allow_shell,
            session=self._view(known) if known else None,
        )
