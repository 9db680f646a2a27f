"""`fieldlink-agent`: the command line on a site machine.

fieldlink-agent enroll TOKEN --config-dir DIR
fieldlink-agent run --config-dir DIR [--interval SECONDS]
fieldlink-agent status --config-dir DIR
fieldlink-agent policy --config-dir DIR [--init] [--json]
fieldlink-agent catalog [--json]

For people at the machine (they talk to the running agent over its local socket):
fieldlink-agent help TEXT [--assist] [--no-suggest | --solved KB-N] [--wait SECONDS]
                     [--config-dir DIR] [--socket PATH]
fieldlink-agent tickets [--json] [--config-dir DIR] [--socket PATH]
fieldlink-agent rate FL-N SCORE [--comment TEXT] [--wait SECONDS]
fieldlink-agent consent [--approve ID | --deny ID | --end ID | --control ID | --view-only ID]
                        [--wait SECONDS] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from agent.config import ConfigDir, ConfigError
from shared import logs
from shared.version import __version__

DEFAULT_CONFIG_DIR = "/etc/fieldlink-agent"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fieldlink-agent",
        description="Fieldlink site agent: reports this machine's health to HQ over an "
        "outbound SSH connection and runs what HQ is authorised to ask.",
    )
    parser.add_argument("--version", action="version", version=f"fieldlink-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument(
            "--config-dir",
            default=DEFAULT_CONFIG_DIR,
            help=f"the agent's config directory (default {DEFAULT_CONFIG_DIR})",
        )
        cmd.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
        return cmd

    e = add("enroll", "enroll this machine with HQ using a token from an HQ admin")
    e.add_argument("token", metavar="TOKEN", help="the enrollment token (fl1....)")
    e.add_argument("--force", action="store_true", help="replace an existing enrollment")

    r = add("run", "run the agent: sample health and keep the link to HQ up")
    r.epilog = (
        "Exit status: 0 when stopped by SIGTERM or SIGINT; 1 on a fatal error (a spool "
        "it cannot open, a part of the agent that failed), with the reason on stderr. "
        "A full disk is not fatal: reports that cannot be spooled are dropped and counted "
        "(see status)."
    )
    r.add_argument(
        "--interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds between health reports (default: from config, 15)",
    )

    s = add(
        "status",
        "show this agent's identity, link state and spool (pending, dropped, write errors)",
    )
    s.add_argument("--json", action="store_true", help="print JSON")

    pol = add("policy", "check and show this machine's local policy (policy.toml)")
    pol.add_argument("--json", action="store_true", help="print JSON")
    pol.add_argument(
        "--init", action="store_true", help="write the default policy file if there is none"
    )

    c = add("catalog", "list the diagnostics and actions this agent offers HQ")
    c.add_argument("--json", action="store_true", help="print JSON, with parameter schemas")

    def local(cmd: argparse.ArgumentParser, waits: bool) -> None:
        cmd.add_argument(
            "--socket",
            metavar="PATH",
            help="the running agent's local socket (default: DIR/agent.sock, or "
            "local_socket from the config when readable)",
        )
        cmd.add_argument("--json", action="store_true", help="print the agent's answer as JSON")
        if waits:
            cmd.add_argument(
                "--wait",
                type=_wait_seconds,
                default=10.0,
                metavar="SECONDS",
                help="how long to wait for HQ's answer (0-60, default 10); if none "
                "comes the request stays saved on this machine and goes later",
            )

    h = add(
        "help",
        "ask HQ's IT team for help with this machine; prints the ticket number (asking again "
        "what you have open adds to that ticket; HQ limits how many requests are made per hour)",
    )
    h.add_argument("text", nargs="+", metavar="TEXT", help="what is wrong, in your words")
    h.add_argument(
        "--assist",
        action="store_true",
        help="ask for someone at HQ to take over the machine; the command stays, shows who "
        "joined and when, and ends the session on `end` + Enter or Ctrl-C",
    )
    h.add_argument(
        "--no-suggest",
        action="store_true",
        help="do not show knowledge-base articles first; open the request at once",
    )
    h.add_argument(
        "--solved",
        metavar="KB-N",
        help="the knowledge-base article that solved it: recorded as self-served (closed "
        "at once), no question asked",
    )
    local(h, waits=True)

    t = add("tickets", "this machine's open and recently resolved tickets")
    local(t, waits=False)

    rt = add("rate", "rate the help on a resolved ticket you asked for (once)")
    rt.add_argument("ticket", metavar="FL-N", help="the ticket number")
    rt.add_argument("score", type=int, choices=range(1, 6), metavar="SCORE", help="1 (bad) to 5")
    rt.add_argument("--comment", default="", help="a few words for the team")
    local(rt, waits=True)

    cs = add(
        "consent",
        "list HQ's session requests and live sessions on this machine; approve, deny or end "
        "one; grant or take back keyboard and mouse in a desktop session",
    )
    answer = cs.add_mutually_exclusive_group()
    answer.add_argument("--approve", metavar="ID", help="let the engineer in (a waiting request)")
    answer.add_argument("--deny", metavar="ID", help="refuse a waiting request")
    answer.add_argument(
        "--end",
        metavar="ID",
        help="end a session now (its shell, file transfer and screen sharing stop at once)",
    )
    answer.add_argument(
        "--control",
        metavar="ID",
        help="let the engineer use keyboard and mouse in an active desktop session (at once)",
    )
    answer.add_argument(
        "--view-only",
        dest="view_only",
        metavar="ID",
        help="take keyboard and mouse back in a desktop session: they can only watch (at once)",
    )
    local(cs, waits=True)
    return parser


def _wait_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 60:
        raise argparse.ArgumentTypeError("must be between 0 and 60 seconds")
    return value


def _policy(config_dir: ConfigDir, as_json: bool, init: bool) -> int:
    from agent import allowlist
    from agent.policy import ensure_policy, load_policy

    path = config_dir.policy_file
    if init:
        config_dir.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if ensure_policy(path):
            print(f"wrote the default policy to {path}", file=sys.stderr)
    policy = load_policy(path)
    for warning in allowlist.resolve(policy).warnings:
        print(f"warning: {warning}", file=sys.stderr)
    values = policy.model_dump(exclude_none=True)
    if as_json:
        print(json.dumps(values, indent=2))
        return 0
    print(f"# effective policy from {path}")
    for key, value in values.items():
        print(f"{key} = {json.dumps(value)}")
    return 0


def _catalog(as_json: bool) -> int:
    from agent import catalog

    entries = catalog.advertise()
    if as_json:
        print(json.dumps([e.model_dump() for e in entries], indent=2))
        return 0
    width = max(len(e.name) for e in entries)
    for e in entries:
        print(f"{e.name:<{width}}  {e.tier:<10}  {e.description}")
    return 0


def _fmt_time(value: str | None) -> str:
    if not value:
        return "never"
    return datetime.fromtimestamp(float(value), UTC).isoformat(timespec="seconds")


def _status(config_dir: ConfigDir, as_json: bool) -> int:
    from agent import staff
    from agent.spool import Spool

    if config_dir.config_file.exists() and not os.access(config_dir.config_file, os.R_OK):
        # an account that may not read the config asks the agent
        return staff.status_command(config_dir.socket_file, as_json=as_json)

    config = config_dir.load()
    spool = Spool(config_dir.spool_file, config.spool_max_frames, config.spool_max_bytes)
    try:
        stats = spool.stats()
    finally:
        spool.close()
    state = stats.values
    live = staff.live_status(config_dir.socket_path(config))
    connected = state.get("state:connected") == "1" if live is None else live.connected
    pending = stats.pending if live is None else live.spool_pending
    dropped = stats.dropped if live is None else live.spool_dropped
    error = None if live is None else live.spool_error
    info: dict[str, Any] = {
        "agent_id": config.agent_id,
        "site": config.site,
        "hq": config.hq_url,
        "ssh": f"{config.ssh_host}:{config.ssh_port}",
        "link": "connected" if connected else "disconnected",
        "link_since": _fmt_time(state.get("state:since")),
        "last_ack": _fmt_time(state.get("last_ack_at")),
        "last_seq": stats.last_seq,
        "spool_pending": pending,
        "spool_bytes": stats.pending_bytes,
        "spool_dropped": dropped,
        "spool_error": error,
        "spool_error_since": None if live is None else live.spool_error_since,
        "spool_last_error": state.get("last_error"),
        "spool_last_error_at": _fmt_time(state.get("last_error_at"))
        if state.get("last_error_at")
        else None,
        "interval": config.interval,
        "run_containment": "unknown (the agent is not running)"
        if live is None
        else live.run_containment,
        "log_dropped": None if live is None else live.log_dropped,
        "log_error": None if live is None else live.log_error,
        "version": __version__,
    }
    sessions = None if live is None else live.sessions
    info["policy_warnings"] = _policy_warnings(config_dir) if live is None else live.policy_warnings
    if as_json:
        info["spool_error_since"] = (
            None if info["spool_error_since"] is None else info["spool_error_since"].isoformat()
        )
        info["sessions"] = (
            None if sessions is None else [s.model_dump(mode="json") for s in sessions]
        )
        print(json.dumps(info, indent=2))
    else:
        shown = dict(info)
        warnings = shown.pop("policy_warnings")
        shown["spool_error"] = staff.spool_error_text(error, info["spool_error_since"])
        shown.pop("spool_error_since")
        if shown["spool_last_error"] is None:
            shown.pop("spool_last_error")
            shown.pop("spool_last_error_at")
        if not shown["log_dropped"] and shown["log_error"] is None:
            shown.pop("log_dropped")
            shown.pop("log_error")
        width = max(len(k) for k in shown)
        for key, value in shown.items():
            print(f"{key.replace('_', ' '):<{width}}  {value}")
        if sessions is None:
            print("live sessions  unknown (the agent is not running)")
        else:
            for line in staff.sessions_lines(sessions, datetime.now(UTC)):
                print(line)
        for warning in warnings:
            print(f"policy warning: {warning}")
        if error is not None:
            print(
                f"warning: the spool cannot be written ({error}); new reports are dropped "
                "and counted until it can (free space on the disk)",
                file=sys.stderr,
            )
        if dropped:
            print(
                f"warning: {dropped} reports were dropped: the spool was full while HQ was "
                "unreachable, or the disk was",
                file=sys.stderr,
            )
    return 0


def _policy_warnings(config_dir: ConfigDir) -> list[str]:
    """What is wrong with the policy file, as the agent would find it at start."""
    from agent import allowlist
    from agent.policy import PolicyError, load_policy

    try:
        return list(allowlist.resolve(load_policy(config_dir.policy_file)).warnings)
    except PolicyError as exc:
        return [str(exc)]


def _run(config_dir: ConfigDir, interval: float | None) -> int:
    """The daemon, until a signal stops it (0) or something fatal does (1): a
    supervisor (systemd `Restart=on-failure`) then starts it again."""
    import sqlite3

    import structlog

    from agent.daemon import Daemon
    from agent.local import LocalError

    log = structlog.get_logger("agent.cli")
    try:
        daemon = Daemon(config_dir, interval=interval)
    except ConfigError:
        raise
    except (sqlite3.Error, OSError) as exc:  # the spool (or a file) cannot be opened
        what = getattr(exc, "filename", None) or config_dir.spool_file
        log.error("agent_start_failed", error=str(exc), path=str(what))
        print(f"fieldlink-agent: cannot start: {what}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # e.g. an unreadable agent_key
        log.error("agent_start_failed", error=repr(exc))
        print(f"fieldlink-agent: cannot start: {exc!r}", file=sys.stderr)
        return 1
    try:
        asyncio.run(daemon.run())
    except (KeyboardInterrupt, ConfigError, LocalError):
        raise
    except Exception as exc:
        log.exception("agent_failed")
        print(f"fieldlink-agent: stopped by an error: {exc!r}", file=sys.stderr)
        return 1
    if daemon.failure is not None:
        print(f"fieldlink-agent: stopped by an error: {daemon.failure}", file=sys.stderr)
        return 1
    return 0


def _enroll(config_dir: ConfigDir, token: str, force: bool) -> int:
    from agent.enroll import EnrollError, enroll

    try:
        config = enroll(token, config_dir, force=force)
    except EnrollError as exc:
        print(f"fieldlink-agent: {exc}", file=sys.stderr)
        return 1
    print(f"enrolled as agent {config.agent_id} at site {config.site}")
    print(f"start it with: fieldlink-agent run --config-dir {config_dir.path}")
    return 0


def _staff(config_dir: ConfigDir, args: argparse.Namespace) -> int:
    from agent import staff

    path = staff.socket_for(config_dir, args.socket)
    if args.command == "help":
        text = " ".join(args.text)
        return staff.help_command(
            path,
            text,
            assist=args.assist,
            wait=args.wait,
            as_json=args.json,
            suggest=not args.no_suggest,
            solved=args.solved,
        )
    if args.command == "rate":
        return staff.rate_command(
            path, args.ticket, args.score, args.comment, wait=args.wait, as_json=args.json
        )
    if args.command == "consent":
        for action in ("approve", "deny", "end", "control", "view_only"):
            session = getattr(args, action)
            if session is not None:
                return staff.consent_command(
                    path, action, session, wait=args.wait, as_json=args.json
                )
        return staff.consent_command(path, "list", None, wait=args.wait, as_json=args.json)
    return staff.tickets_command(path, as_json=args.json)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    fmt = {"auto": None, "json": True, "console": False}[args.log_format]
    # the daemon logs through a sink that never raises into or blocks its link
    logs.configure(json=fmt, safe=args.command == "run")
    config_dir = ConfigDir(args.config_dir)
    # Modules are imported by the command that needs them: `help` on a till
    # should not wait for asyncssh and psutil to load.
    from agent.local import LocalError

    try:
        if args.command in ("help", "tickets", "rate", "consent"):
            return _staff(config_dir, args)
        if args.command == "enroll":
            return _enroll(config_dir, args.token, args.force)
        if args.command == "run":
            if args.interval is not None and args.interval <= 0:
                print("fieldlink-agent: --interval must be positive", file=sys.stderr)
                return 2
            return _run(config_dir, args.interval)
        if args.command == "status":
            return _status(config_dir, args.json)
        if args.command == "policy":
            return _policy(config_dir, args.json, args.init)
        if args.command == "catalog":
            return _catalog(args.json)
    except (ConfigError, LocalError) as exc:
        print(f"fieldlink-agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
