"""`fieldlink-agent`: the command line on a site machine.

fieldlink-agent enroll TOKEN --config-dir DIR
fieldlink-agent run --config-dir DIR [--interval SECONDS]
fieldlink-agent status --config-dir DIR
fieldlink-agent policy --config-dir DIR [--init] [--json]
fieldlink-agent catalog [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from agent.config import ConfigDir, ConfigError
from agent.enroll import EnrollError, enroll
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
    r.add_argument(
        "--interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds between health reports (default: from config, 15)",
    )

    s = add("status", "show this agent's identity, link state and spool")
    s.add_argument("--json", action="store_true", help="print JSON")

    pol = add("policy", "check and show this machine's local policy (policy.toml)")
    pol.add_argument("--json", action="store_true", help="print JSON")
    pol.add_argument(
        "--init", action="store_true", help="write the default policy file if there is none"
    )

    c = add("catalog", "list the diagnostics and actions this agent offers HQ")
    c.add_argument("--json", action="store_true", help="print JSON, with parameter schemas")
    return parser


def _policy(config_dir: ConfigDir, as_json: bool, init: bool) -> int:
    from agent.policy import ensure_policy, load_policy

    path = config_dir.policy_file
    if init:
        config_dir.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if ensure_policy(path):
            print(f"wrote the default policy to {path}", file=sys.stderr)
    policy = load_policy(path)
    values = policy.model_dump()
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
    from agent.spool import Spool

    config = config_dir.load()
    spool = Spool(config_dir.spool_file, config.spool_max_frames)
    try:
        stats = spool.stats()
    finally:
        spool.close()
    state = stats.values
    connected = state.get("state:connected") == "1"
    info: dict[str, Any] = {
        "agent_id": config.agent_id,
        "site": config.site,
        "hq": config.hq_url,
        "ssh": f"{config.ssh_host}:{config.ssh_port}",
        "link": "connected" if connected else "disconnected",
        "link_since": _fmt_time(state.get("state:since")),
        "last_ack": _fmt_time(state.get("last_ack_at")),
        "last_seq": stats.last_seq,
        "spool_pending": stats.pending,
        "spool_dropped": stats.dropped,
        "interval": config.interval,
        "version": __version__,
    }
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key.replace('_', ' '):<{width}}  {value}")
        if stats.dropped:
            print(
                f"warning: {stats.dropped} health reports were dropped because the spool was full "
                "while HQ was unreachable",
                file=sys.stderr,
            )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    fmt = {"auto": None, "json": True, "console": False}[args.log_format]
    logs.configure(json=fmt)
    config_dir = ConfigDir(args.config_dir)
    try:
        if args.command == "enroll":
            config = enroll(args.token, config_dir, force=args.force)
            print(f"enrolled as agent {config.agent_id} at site {config.site}")
            print(f"start it with: fieldlink-agent run --config-dir {config_dir.path}")
            return 0
        if args.command == "run":
            from agent.daemon import Daemon

            if args.interval is not None and args.interval <= 0:
                print("fieldlink-agent: --interval must be positive", file=sys.stderr)
                return 2
            daemon = Daemon(config_dir, interval=args.interval)
            asyncio.run(daemon.run())
            return 0
        if args.command == "status":
            return _status(config_dir, args.json)
        if args.command == "policy":
            return _policy(config_dir, args.json, args.init)
        if args.command == "catalog":
            return _catalog(args.json)
    except (ConfigError, EnrollError) as exc:
        print(f"fieldlink-agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
