"""Remote-session policy, pure: does a session need the site's consent, how
long may the site take to answer, what happens when nobody answers, and must
runs on a ticket happen inside an active session.

Inputs are the site's settings at HQ and the agent's own local policy; the
agent's `require_consent` is a floor HQ cannot lower (defence in depth).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KINDS = ("shell", "exec", "files")
STATES = ("requested", "awaiting_consent", "active", "ended", "denied", "expired", "failed")
LIVE = frozenset({"requested", "awaiting_consent", "active"})
FINAL = frozenset({"ended", "denied", "expired", "failed"})


@dataclass(frozen=True)
class SitePolicy:
    """Per-site session settings kept at HQ (JSON on the site)."""

    consent: dict[str, bool] = field(
        default_factory=lambda: {"shell": True, "exec": True, "files": True}
    )
    consent_timeout_seconds: float = 300.0
    on_timeout: str = "deny"  # deny | allow
    # run tiers that need an active session on their ticket ("exec", "action")
    require_session_for: tuple[str, ...] = ()
    record_input: bool = False
    offer_timeout_seconds: float = 1800.0  # a site's own request waits this long for HQ

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> SitePolicy:
        data = data or {}
        base = cls()
        consent = {
            **base.consent,
            **{k: bool(v) for k, v in (data.get("consent") or {}).items() if k in KINDS},
        }
        return cls(
            consent=consent,
            consent_timeout_seconds=float(
                data.get("consent_timeout_seconds", base.consent_timeout_seconds)
            ),
            on_timeout="allow" if data.get("on_timeout") == "allow" else "deny",
            require_session_for=tuple(
                t for t in data.get("require_session_for", ()) if t in ("exec", "action")
            ),
            record_input=bool(data.get("record_input", False)),
            offer_timeout_seconds=float(
                data.get("offer_timeout_seconds", base.offer_timeout_seconds)
            ),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "consent": dict(self.consent),
            "consent_timeout_seconds": self.consent_timeout_seconds,
            "on_timeout": self.on_timeout,
            "require_session_for": list(self.require_session_for),
            "record_input": self.record_input,
            "offer_timeout_seconds": self.offer_timeout_seconds,
        }


@dataclass(frozen=True)
class Decision:
    consent_needed: bool
    why: str
    timeout_seconds: float
    on_timeout: str  # what a timeout means: deny | allow


def decide(
    kind: str, site: SitePolicy, agent_requires_consent: bool | None, origin: str
) -> Decision:
    """Consent for one session. A session the site asked for itself carries
    its consent; otherwise the site's setting for the kind, raised (never
    lowered) by the agent's local policy. An agent that has not said what its
    policy is counts as requiring consent."""
    if origin == "site":
        return Decision(False, "the site asked for this session itself", 0.0, "deny")
    agent_floor = True if agent_requires_consent is None else agent_requires_consent
    site_wants = site.consent.get(kind, True)
    needed = site_wants or agent_floor
    if not needed:
        return Decision(False, "neither the site nor the machine asks for consent", 0.0, "deny")
    why = (
        "the machine's policy requires consent"
        if agent_floor and not site_wants
        else "the site requires consent"
    )
    # With the machine itself requiring consent, silence can never mean yes.
    on_timeout = "deny" if agent_floor else site.on_timeout
    return Decision(True, why, site.consent_timeout_seconds, on_timeout)
