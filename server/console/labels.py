"""Words a person reads for the values the system stores as identifiers:
ticket states and types, session kinds and states, run and job statuses,
catalog tiers, and the built-in catalog's descriptions (pure: no I/O).

Templates use the `label` filter (`{{ s.state|label("session_state") }}`);
a value with no label shows as itself with underscores made spaces, so a
new value is readable before it has a translation. The built-in catalog
entries' descriptions are translated here, keyed by entry name; an entry
this table does not know keeps the description its agent sent.
"""

from __future__ import annotations

from server.console import i18n


def N_(text: str) -> str:
    """Marks a string for extraction; translated when shown."""
    return text


LABELS: dict[str, dict[str, str]] = {
    "ticket_status": {
        "new": N_("new"),
        "acknowledged": N_("acknowledged"),
        "in_progress": N_("in progress"),
        "waiting": N_("waiting"),
        "resolved": N_("resolved"),
        "closed": N_("closed"),
        "cancelled": N_("cancelled"),
        "open": N_("open"),
    },
    "ticket_type": {
        "incident": N_("incident"),
        "service_request": N_("service request"),
        "problem": N_("problem"),
        "change": N_("change"),
    },
    "tier": {"site": N_("site"), "hq": N_("HQ")},
    "source": {
        "console": N_("console"),
        "api": N_("API"),
        "cli": N_("command line"),
        "agent": N_("machine"),
        "alert": N_("alert"),
        "help": N_("help request"),
    },
    "session_kind": {"shell": N_("shell"), "exec": N_("commands"), "files": N_("files")},
    "session_state": {
        "requested": N_("requested"),
        "awaiting_consent": N_("awaiting consent"),
        "active": N_("active"),
        "ended": N_("ended"),
        "denied": N_("denied"),
        "expired": N_("expired"),
        "failed": N_("failed"),
    },
    "origin": {"hq": N_("HQ"), "site": N_("the site")},
    "run_status": {
        "queued": N_("queued"),
        "running": N_("running"),
        "ok": N_("ok"),
        "failed": N_("failed"),
        "timeout": N_("timed out"),
        "refused": N_("refused"),
        "interrupted": N_("interrupted"),
        "done": N_("done"),
        "cancelled": N_("cancelled"),
        "pending": N_("pending"),
        "offline": N_("offline"),
    },
    "catalog_tier": {
        "diagnostic": N_("diagnostic"),
        "action": N_("action"),
        "exec": N_("command"),
    },
    "alert_status": {"ok": N_("ok"), "pending": N_("pending"), "firing": N_("firing")},
    "sla_clock": {"ack": N_("ack"), "response": N_("response"), "resolve": N_("resolve")},
    "sla_state": {
        "running": N_("running"),
        "warning": N_("warning"),
        "breached": N_("breached"),
        "met": N_("met"),
        "missed": N_("missed"),
        "paused": N_("paused"),
    },
    "role": {
        "admin": N_("administrator"),
        "hq_engineer": N_("HQ engineer"),
        "site_tech": N_("site technician"),
        "site_staff": N_("site staff"),
        "auditor": N_("auditor"),
    },
    "outcome": {"success": N_("success"), "failure": N_("failure"), "denied": N_("denied")},
    "actor_type": {"user": N_("user"), "agent": N_("machine"), "system": N_("HQ"), "hq": N_("HQ")},
    "target_type": {
        "agent": N_("machine"),
        "user": N_("user"),
        "site": N_("site"),
        "ticket": N_("ticket"),
        "session": N_("session"),
        "job": N_("job"),
        "run": N_("run"),
        "token": N_("token"),
        "enroll_token": N_("enrollment token"),
        "binding": N_("role binding"),
        "role": N_("role"),
        "alert_rule": N_("alert rule"),
        "auth": N_("sign-in"),
        "kb_article": N_("knowledge-base article"),
        "problem": N_("problem"),
        "change": N_("change"),
    },
    # a change's history (server/changes.py, server/api/changes.py)
    "change_event": {
        "requested": N_("requested"),
        "approved": N_("approved"),
        "approve": N_("approved"),
        "rejected": N_("rejected"),
        "cancelled": N_("cancelled"),
        "state": N_("state"),
        "pilot": N_("pilot"),
        "rest": N_("rest"),
        "backout": N_("backout"),
        "gate_passed": N_("health gate passed"),
        "halted": N_("halted"),
        "review": N_("review"),
    },
    # a problem's mark on its incidents' timelines (server/ops/problems.py)
    "problem_link": {
        "linked": N_("linked to this incident"),
        "unlinked": N_("no longer linked"),
        "known_error": N_("known error"),
        "resolved": N_("resolved"),
    },
    # the notes HQ itself gives an article's versions (server/ops/kb.py)
    "kb_note": {"created": N_("created")},
    "audit_source": {
        "console": N_("console"),
        "api": N_("API"),
        "cli": N_("command line"),
        "local": N_("on the HQ host"),
        "agent": N_("machine"),
        "hq": N_("HQ"),
        "job": N_("job"),
    },
    # HQ's own workers, as they sign what they do (server/alerting.py, sessions.py, ...)
    "actor_name": {
        "alerts": N_("alert monitor"),
        "sessions": N_("session service"),
        "sla": N_("SLA monitor"),
    },
    "consent_via": {
        "machine": N_("at the machine"),
        "user": N_("in the console"),
        "timeout": N_("timed out"),
    },
    # built-in alert rules (server/itsm/alerts.py) by name; other names are shown as given
    "rule_name": {
        "Disk almost full": N_("Disk almost full"),
        "Memory exhausted": N_("Memory exhausted"),
        "CPU saturated": N_("CPU saturated"),
        "Agent offline": N_("Agent offline"),
    },
    # built-in roles' descriptions (server/auth/rbac.py) by role name
    "role_description": {
        "admin": N_("every permission"),
        "hq_engineer": N_("HQ IT engineer: works tickets, diagnoses and acts on machines remotely"),
        "site_tech": N_(
            "site IT technician: tier 1 for its site, safe diagnostics, consents to sessions"
        ),
        "site_staff": N_("site staff: opens, comments on and rates its own requests"),
        "auditor": N_(
            "auditor: reads the audit trail, KPIs, agents, health and tickets; changes nothing"
        ),
    },
    # why a session needs consent or not (server/itsm/consent.py)
    "consent_why": {
        "the site asked for this session itself": N_("the site asked for this session itself"),
        "neither the site nor the machine asks for consent": N_(
            "neither the site nor the machine asks for consent"
        ),
        "the machine's policy requires consent": N_("the machine's policy requires consent"),
        "the site requires consent": N_("the site requires consent"),
    },
    # the built-in catalog's parameters (agent/catalog): labels by parameter name,
    # their help by its English text, and the words among their choices
    "param_label": {
        "argv": N_("Program and arguments"),
        "command": N_("Command"),
        "count": N_("Count"),
        "dir": N_("Directory"),
        "dry_run": N_("Dry run"),
        "host": N_("Host"),
        "kind": N_("Kind"),
        "lines": N_("Lines"),
        "max_hops": N_("Maximum hops"),
        "min_age_hours": N_("Minimum age (hours)"),
        "n": N_("How many"),
        "name": N_("Name"),
        "path": N_("Path"),
        "pattern": N_("Pattern"),
        "pid": N_("PID"),
        "port": N_("Port"),
        "signal": N_("Signal"),
        "sort": N_("Sorted by"),
        "state": N_("State"),
        "timeout": N_("Timeout (seconds)"),
        "type": N_("Type"),
        "unit": N_("Unit"),
    },
    "param_description": {
        "a directory under one of the policy's file_roots (default: the first root)": N_(
            "a directory under one of the policy's file_roots (default: the first root)"
        ),
        "a file under the allowed file roots": N_("a file under the allowed file roots"),
        "a name, or an IP address for PTR": N_("a name, or an IP address for PTR"),
        "a shell command line (needs allow_shell)": N_("a shell command line (needs allow_shell)"),
        "a systemd unit's journal": N_("a systemd unit's journal"),
        "at least the policy's cleanup_min_age_hours": N_(
            "at least the policy's cleanup_min_age_hours"
        ),
        "for the TCP probe, used only without ping": N_(
            "for the TCP probe, used only without ping"
        ),
        "keep only lines matching this": N_("keep only lines matching this"),
        "one of the policy's cleanup_dirs": N_("one of the policy's cleanup_dirs"),
        "only connections in this state": N_("only connections in this state"),
        "only report what would be deleted": N_("only report what would be deleted"),
        "program and arguments, no shell": N_("program and arguments, no shell"),
    },
    "param_option": {"cpu": N_("CPU"), "memory": N_("memory")},
    "waiting_reason": {
        "on_site": N_("on the site"),
        "on_requester": N_("on the requester"),
        "on_vendor": N_("on a vendor"),
    },
}

# The built-in catalog's entries (agent/catalog), by name.
CATALOG_DESCRIPTIONS: dict[str, str] = {
    "system.summary": N_("Host name, OS, uptime, load, memory, swap, root disk, logged-in users"),
    "process.top": N_("Top processes by CPU (measured over half a second) or memory"),
    "hardware.sensors": N_("Temperatures, fans and battery, where the hardware reports them"),
    "time.sync": N_(
        "The clock, and whether and how well it is synchronised (chrony, ntpd, systemd)"
    ),
    "os.updates": N_("Packages with pending updates (apt or dnf, from the local package lists)"),
    "disk.usage": N_("Space and inode use of each mounted file system"),
    "disk.largest": N_(
        "The largest files and subdirectories under a path in the allowed file roots"
    ),
    "log.tail": N_(
        "The last lines of a unit's journal or of a log file, optionally filtered by a regex"
    ),
    "net.interfaces": N_(
        "Network interfaces: state, speed, MTU, addresses, traffic and error counters"
    ),
    "net.connections": N_("Open TCP/UDP connections and listening sockets with their processes"),
    "net.ping": N_("Ping a host (ICMP; a TCP connect probe where ping is not installed)"),
    "net.dns": N_("Look a name up in DNS (A and AAAA through the system resolver)"),
    "net.tcp_check": N_("Can this machine open a TCP connection to host:port, and how fast?"),
    "net.traceroute": N_(
        "The route to a host, hop by hop (where traceroute or tracepath is installed)"
    ),
    "service.status": N_("A systemd unit's state, recent log lines and main process"),
    "service.failed": N_("The systemd units that have failed"),
    "service.restart": N_("Restart a systemd unit and report its new state"),
    "process.kill": N_("Send a signal (TERM by default) to a process; never init or the agent"),
    "disk.cleanup": N_(
        "Delete old files from a configured temp directory (a dry run unless dry_run=false)"
    ),
    "net.flush_dns": N_("Flush the local DNS cache (systemd-resolved or nscd)"),
    "exec": N_("A plain command: an argv without a shell, or a shell string where policy allows"),
}


def named(value: object, group: str, default: str = "") -> str:
    """A name people gave (a rule, a role's description): ours translated
    where it is a built-in one, else exactly as given (or `default`)."""
    text = "" if value is None else str(value)
    known = LABELS.get(group, {}).get(text)
    return i18n.gettext(known) if known else (text or default)


def readable(value: str) -> str:
    """A value with no label: underscores as spaces (`service_request` -> `service request`)."""
    return value.replace("_", " ")


def label(value: object, group: str) -> str:
    """The translated word for `value` in `group` (see LABELS), else the value made readable."""
    if value is None or value == "":
        return "—"
    text = str(value)
    known = LABELS.get(group, {}).get(text)
    return i18n.gettext(known) if known else readable(text)


def translated() -> dict[str, dict[str, str]]:
    """Every label in the active language, for the pages' scripts (common.js `label`)."""
    return {
        group: {k: i18n.gettext(v) for k, v in words.items()} for group, words in LABELS.items()
    }


def catalog_description(name: str, sent: str) -> str:
    """A catalog entry's description in the reader's language: ours for a
    built-in entry, else the text its agent sent."""
    known = CATALOG_DESCRIPTIONS.get(name)
    return i18n.gettext(known) if known else sent


def kinds_allowed(policy: dict[str, object] | None) -> list[str]:
    """The session kinds a machine's reported policy lets in, in the order
    offered (a machine that has not reported a policy yet: all of them;
    HQ and the agent check again when the session is asked for)."""
    if not policy:
        return ["shell", "exec", "files"]
    out = []
    if policy.get("allow_shell"):
        out.append("shell")
    if policy.get("allow_exec") and policy.get("allowed_programs") != []:
        out.append("exec")
    if policy.get("file_roots"):
        out.append("files")
    return out
