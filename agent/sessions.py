"""Remote sessions as this machine knows them, and their enforcement here.

HQ tells the machine about every remote session on it (`SessionInfo` on the
telemetry channel: a request waiting for consent, the session active, its
end) and re-sends the live ones after each hello. The book keeps the latest
word per session id, in memory, and is what the agent checks before it lets
a shell or file-transfer channel open:

- `refusal()` is the one pure decision: a channel is accepted only for a
  session HQ said is `active`, of the channel's kind, not past its end time
  (`expires_at` while active), named in the channel's `FIELDLINK_SESSION`
  (and, where the channel names them, the same ticket and engineer), and not
  ended at this machine.
- Channels register while they run (`attach`); when a session ends -- HQ
  says so, its time passes (HQ gets `EXPIRY_GRACE` seconds to end it first),
  or the site ends it here (`end_here`) -- the book stops them itself: a
  shell's processes are killed, an SFTP channel closed.

An end decided at the machine is remembered apart from HQ's word, so an
"active" re-sent by HQ before it has read the site's `Consent` frame cannot
revive the session.

Desktop sessions also carry a control grant (keyboard and mouse): the latest
decision wins, whether taken here (`grant_here`, `fieldlink-agent consent
--control` / `--view-only`) or by the site through HQ (a change of HQ's
`control_by`; the same word re-sent after a reconnect is no new decision).
Open desktop channels are told of every change (`control_changed`); what the
grant means under the machine's policy is agent.desktop's to decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import structlog

from shared import protocol as p

log = structlog.get_logger(__name__)

LIVE = frozenset({"requested", "awaiting_consent", "active"})
FINAL = frozenset({"ended", "denied", "expired", "failed"})
KEEP_FINAL = 200  # ended sessions remembered, for `consent` and `help --assist`
KEEP_ENDED_HERE = 1000
# Past a session's end time no channel opens; the open ones are given this long
# for HQ (which sweeps every second) to end the session itself, then stopped here.
EXPIRY_GRACE = 2.0


class Channel(Protocol):
    """A shell or SFTP channel open for a session; `stop` ends it at once.
    With `failure`, the machine itself no longer allows what the channel does
    (HQ records the session as failed, with the reason)."""

    kind: str

    def stop(self, reason: str, *, failure: bool = False) -> None: ...


NOBODY = "nobody"  # HQ's consent_by when a site lets silence mean yes


@dataclass(frozen=True)
class Grant:
    """The latest decision on control of a desktop session: granted or not,
    by whom, and whether it was taken at this machine."""

    granted: bool
    by: str
    here: bool


@dataclass(frozen=True)
class Known:
    """HQ's latest word on a session, when it came (epoch seconds), and why
    the site ended it here if it did."""

    info: p.SessionInfo
    heard_at: float
    ended_here: str | None = None


def aware(value: datetime | None) -> datetime | None:
    """Times from HQ are UTC; a naive one is read as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def refusal(
    session_id: str,
    known: Known | None,
    kind: str,
    env: Mapping[str, str],
    now: datetime,
    require_consent: bool = False,
) -> str | None:
    """Why a `kind` channel may not open for this session now, or None if it may.
    With this machine's `require_consent`, a session nobody at the site consented
    to is refused here, whatever HQ decided (HQ cannot lower that floor)."""
    if not session_id:
        return f"no session named: the channel must carry {p.SESSION_ENV}"
    if known is None:
        return f"HQ has not told this machine about session {session_id}"
    info = known.info
    if known.ended_here is not None:
        return f"session {session_id} was ended at this machine ({known.ended_here})"
    if info.state != "active":
        why = f": {info.end_reason}" if info.end_reason else ""
        return f"session {session_id} is {info.state.replace('_', ' ')}, not active{why}"
    if info.kind != kind:
        return f"session {session_id} is a {info.kind} session, not a {kind} one"
    if require_consent and info.consent_by in (None, "", NOBODY):
        return (
            f"this machine's policy requires consent (require_consent = true) "
            f"and nobody at the site gave it for session {session_id}"
        )
    ends = aware(info.expires_at)
    if ends is not None and now >= ends:
        return f"session {session_id} reached its end time"
    ticket = env.get(p.TICKET_ENV)
    if ticket and ticket != info.ticket:
        return f"session {session_id} belongs to {info.ticket}, not {ticket}"
    engineer = env.get(p.ENGINEER_ENV)
    if engineer and engineer != info.engineer:
        return f"session {session_id} is {info.engineer}'s, not {engineer}'s"
    return None


# Sessions inside which a plain command (exec) may run where consent is required.
EXEC_KINDS = ("exec", "shell")


def exec_refusal(
    sessions: list[Known],
    session_id: str | None,
    ticket: str | None,
    engineer: str | None,
    now: datetime,
) -> str | None:
    """Why a plain command may not run now on a machine whose policy requires
    consent, or None if it may: it needs an active session of kind exec or
    shell, that someone at the site consented to, for the request's ticket
    (its number, FL-N) and engineer, within its time (the same test as a
    channel's, `refusal()`). With `session_id`, that session must be it."""
    need = (
        "this machine's policy requires consent (require_consent = true): a plain command "
        "runs only inside an active remote session (kind exec or shell) someone at the "
        "site consented to, for its ticket and engineer"
    )
    if not ticket or not engineer:
        return f"{need}; this request names no ticket or no engineer"
    if session_id:
        candidates = [k for k in sessions if k.info.session_id == session_id]
    else:
        candidates = [
            k
            for k in sessions
            if k.info.kind in EXEC_KINDS and k.info.ticket == ticket and k.info.engineer == engineer
        ]
    if not candidates:
        return (
            f"{need}; {engineer} has none on {ticket} here: request one "
            "(POST /api/v1/sessions with kind exec) and have the site approve it"
        )
    env = {p.TICKET_ENV: ticket, p.ENGINEER_ENV: engineer}
    reasons = []
    for known in reversed(candidates):  # the latest word first
        kind = known.info.kind if known.info.kind in EXEC_KINDS else EXEC_KINDS[0]
        why = refusal(known.info.session_id, known, kind, env, now, require_consent=True)
        if why is None:
            return None
        reasons.append(why)
    return f"{need}; {reasons[0]}"


class SessionBook:
    """Sessions on this machine: HQ's word, ends decided here, open channels."""

    def __init__(self) -> None:
        self._known: OrderedDict[str, Known] = OrderedDict()
        self._ended_here: OrderedDict[str, str] = OrderedDict()
        self._channels: dict[str, set[Channel]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._changed = asyncio.Event()
        self._grants: OrderedDict[str, Grant] = OrderedDict()
        self._hq_control_by: OrderedDict[str, str | None] = OrderedDict()

    # --- reading -----------------------------------------------------------------

    def get(self, session_id: str) -> Known | None:
        known = self._known.get(session_id)
        why = self._ended_here.get(session_id)
        if known is not None and why is not None and known.ended_here is None:
            return Known(known.info, known.heard_at, why)
        return known

    def all(self) -> list[Known]:
        """Every session known here, oldest word first."""
        return [k for k in (self.get(sid) for sid in self._known) if k is not None]

    def live(self) -> list[Known]:
        return [k for k in self.all() if k.info.state in LIVE]

    def channels(self, session_id: str) -> int:
        return len(self._channels.get(session_id, ()))

    def find(self, text: str) -> list[Known]:
        """Sessions whose id is `text` or starts with it (`se_` may be left out)."""
        text = text.strip()
        if not text:
            return []
        exact = self.get(text) or self.get(f"se_{text}")
        if exact is not None:
            return [exact]
        return [
            k
            for k in self.all()
            if k.info.session_id.startswith(text) or k.info.session_id.startswith(f"se_{text}")
        ]

    def grant(self, session_id: str) -> Grant | None:
        """The latest decision on control of a desktop session; None while
        nobody decided (the policy's default applies)."""
        return self._grants.get(session_id)

    def for_ticket(self, ticket: str, origin: str = "site") -> Known | None:
        """The latest session on `ticket` that came from `origin`."""
        found = [k for k in self.all() if k.info.ticket == ticket and k.info.origin == origin]
        return found[-1] if found else None

    def refusal(
        self, session_id: str, kind: str, env: Mapping[str, str], require_consent: bool = False
    ) -> str | None:
        return refusal(
            session_id, self.get(session_id), kind, env, datetime.now(UTC), require_consent
        )

    def exec_refusal(
        self, session_id: str | None, ticket: str | None, engineer: str | None
    ) -> str | None:
        """See `exec_refusal()`: may a plain command run now, where consent is required?"""
        return exec_refusal(self.all(), session_id, ticket, engineer, datetime.now(UTC))

    async def wait(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Wait until `ready()` holds, re-checked at every change; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not ready():
            left = deadline - loop.time()
            if left <= 0:
                return False
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)
        return True

    # --- changes ------------------------------------------------------------------

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def update(self, info: p.SessionInfo) -> None:
        """HQ's word on a session: keep it and apply it."""
        sid = info.session_id
        self._known.pop(sid, None)
        self._known[sid] = Known(info, time.time())
        self._hear_control(info)
        log.info(
            "session_info",
            session_id=sid,
            kind=info.kind,
            state=info.state,
            engineer=info.engineer,
            ticket=info.ticket,
            origin=info.origin,
        )
        self._cancel_timer(sid)
        if info.state in FINAL:
            why = info.end_reason or info.state
            self._stop_channels(sid, f"HQ ended the session ({why})")
        elif info.state != "active":
            self._stop_channels(sid, f"the session is {info.state.replace('_', ' ')}")
        else:
            self._arm_timer(sid, aware(info.expires_at))
            if info.kind == "desktop":  # HQ's grant, or what the engineer asked, may differ
                self._control_changed(sid)
        self._prune()
        self._notify()

    def _hear_control(self, info: p.SessionInfo) -> None:
        """HQ's word on a desktop session's control: a new `control_by` is a
        decision of the site's (granted when set, taken back when cleared)."""
        if info.kind != "desktop":
            return
        sid = info.session_id
        before = self._hq_control_by.pop(sid, None)
        self._hq_control_by[sid] = info.control_by
        while len(self._hq_control_by) > KEEP_ENDED_HERE:
            self._hq_control_by.popitem(last=False)
        if info.control_by != before:
            self._set_grant(sid, Grant(info.control_by is not None, info.control_by or "HQ", False))

    def grant_here(self, session_id: str, granted: bool, by: str) -> None:
        """Someone at the machine grants or takes back control of a desktop
        session; it applies at once to its open channel."""
        self._set_grant(session_id, Grant(granted, by, True))
        self._control_changed(session_id)
        self._notify()

    def _set_grant(self, session_id: str, grant: Grant) -> None:
        self._grants.pop(session_id, None)
        self._grants[session_id] = grant
        while len(self._grants) > KEEP_ENDED_HERE:
            self._grants.popitem(last=False)
        log.info(
            "desktop_control_decided",
            session_id=session_id,
            granted=grant.granted,
            by=grant.by,
            here=grant.here,
        )

    def recheck_control(self) -> None:
        """The policy changed: every open desktop channel looks at its control again."""
        for sid in list(self._channels):
            self._control_changed(sid)

    def _control_changed(self, session_id: str) -> None:
        for chan in list(self._channels.get(session_id, ())):
            changed = getattr(chan, "control_changed", None)
            if changed is None:
                continue
            try:
                changed()
            except Exception:  # one broken channel must not keep the others as they were
                log.exception("desktop_control_update_failed", session_id=session_id)

    def reset_live(self) -> None:
        """A new telemetry channel: forget what HQ said about sessions still live
        (it re-sends the live ones after the hello); ends decided here stay."""
        for sid in [sid for sid, k in self._known.items() if k.info.state in LIVE]:
            del self._known[sid]
            self._cancel_timer(sid)
            self._stop_channels(sid, "the connection to HQ was renewed")
        self._notify()

    def end_here(self, session_id: str, why: str, *, stop: bool = True) -> None:
        """The site ended the session at this machine: no channel opens for it
        any more; with `stop`, the open ones are stopped at once."""
        self._ended_here.pop(session_id, None)
        self._ended_here[session_id] = why
        while len(self._ended_here) > KEEP_ENDED_HERE:
            self._ended_here.popitem(last=False)
        if stop:
            self._stop_channels(session_id, f"ended at this machine ({why})")
        self._notify()

    def stop_now(self, session_id: str, kind: str, reason: str) -> int:
        """Stop the session's open channels of `kind` at once; how many there were."""
        chans = [c for c in self._channels.get(session_id, ()) if c.kind == kind]
        for chan in chans:
            self._stop(session_id, chan, reason)
        return len(chans)

    def stop_kind(self, kind: str, reason: str) -> None:
        """Stop every open channel of `kind`: the machine's policy no longer
        allows it (a failure, reported to HQ with the reason)."""
        for sid, chans in list(self._channels.items()):
            for chan in [c for c in chans if c.kind == kind]:
                self._stop(sid, chan, reason, failure=True)

    def stop_all(self, reason: str) -> None:
        for sid in list(self._channels):
            self._stop_channels(sid, reason)
        for sid in list(self._timers):
            self._cancel_timer(sid)

    # --- channels -------------------------------------------------------------------

    def attach(self, session_id: str, channel: Channel) -> None:
        self._channels.setdefault(session_id, set()).add(channel)
        self._notify()

    def detach(self, session_id: str, channel: Channel) -> None:
        chans = self._channels.get(session_id)
        if chans is not None:
            chans.discard(channel)
            if not chans:
                del self._channels[session_id]
        self._notify()

    def _stop(
        self, session_id: str, channel: Channel, reason: str, *, failure: bool = False
    ) -> None:
        log.info("session_channel_stopped", session_id=session_id, kind=channel.kind, reason=reason)
        try:
            channel.stop(reason, failure=failure)
        except Exception:  # one broken channel must not keep the others open
            log.exception("session_channel_stop_failed", session_id=session_id)

    def _stop_channels(self, session_id: str, reason: str) -> None:
        for chan in list(self._channels.get(session_id, ())):
            self._stop(session_id, chan, reason)

    # --- time -------------------------------------------------------------------------

    def _arm_timer(self, session_id: str, ends: datetime | None) -> None:
        if ends is None:
            return
        delay = max(0.0, (ends - datetime.now(UTC)).total_seconds()) + EXPIRY_GRACE
        loop = asyncio.get_running_loop()
        self._timers[session_id] = loop.call_later(delay, self._expire, session_id)

    def _cancel_timer(self, session_id: str) -> None:
        timer = self._timers.pop(session_id, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, session_id: str) -> None:
        self._timers.pop(session_id, None)
        known = self._known.get(session_id)
        if known is None or known.info.state != "active":
            return
        log.info("session_time_up", session_id=session_id)
        self._stop_channels(session_id, "the session reached its end time")
        self._notify()

    def _prune(self) -> None:
        final = [sid for sid, k in self._known.items() if k.info.state in FINAL]
        for sid in final[: max(0, len(final) - KEEP_FINAL)]:
            del self._known[sid]
