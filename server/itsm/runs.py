"""What a run on a machine requires, decided in one place.

- Diagnostics (read-only) need `diag:run` on the agent's site.
- Actions need `action:run`, plain commands `exec:run`, and both need a
  ticket: an open ticket on the agent's site.
- Where the site's session policy says so, actions and commands also need
  an active remote session of the same engineer on that ticket and machine.
- The agent's own policy is checked again on the machine (defence in depth).
"""

from __future__ import annotations

from dataclasses import dataclass

TIER_PERMISSION = {"diagnostic": "diag:run", "action": "action:run", "exec": "exec:run"}
OPEN_STATUSES = frozenset({"new", "acknowledged", "in_progress", "waiting"})


@dataclass(frozen=True)
class TicketView:
    id: str
    number: int
    site_id: str
    status: str


def tier_of(name: str, catalog: list[dict[str, object]] | None) -> str | None:
    """The tier the agent advertises for `name` (exec is always the exec tier)."""
    if name == "exec":
        return "exec"
    for entry in catalog or []:
        if entry.get("name") == name:
            tier = entry.get("tier")
            return tier if isinstance(tier, str) else None
    return None


def ticket_requirement(tier: str, ticket: TicketView | None, agent_site_id: str) -> str | None:
    """Why this run may not go ahead for lack of a proper ticket, or None."""
    if tier == "diagnostic":
        if ticket is not None and ticket.site_id != agent_site_id:
            return "the ticket belongs to another site"
        return None
    if ticket is None:
        return f"a{'n' if tier == 'action' else ''} {tier} needs a ticket: pass ticket_id"
    if ticket.site_id != agent_site_id:
        return "the ticket belongs to another site"
    if ticket.status not in OPEN_STATUSES:
        return f"ticket FL-{ticket.number} is {ticket.status}; it must be open"
    return None


def session_requirement(tier: str, site_requires: tuple[str, ...], has_session: bool) -> str | None:
    """Where the site's policy says so, actions and commands also need the
    engineer's active session on the ticket and machine."""
    if tier in site_requires and not has_session:
        return (
            f"this site runs {tier}s only inside an active session on the ticket: "
            "request one first (POST /api/v1/sessions)"
        )
    return None
