"""`fieldlink`: HQ's command line.

On the HQ machine (work on the data directory directly):
    fieldlink init  --data-dir DIR
    fieldlink serve --data-dir DIR [--http HOST:PORT] [--ssh HOST:PORT] [--db URL]
    fieldlink admin --data-dir DIR enroll-token --site SITE [--uses N] [--ttl 1h]
    fieldlink admin --data-dir DIR api-token --user NAME [--ttl 30d]
    fieldlink admin --data-dir DIR agent revoke AGENT_ID
    fieldlink admin --data-dir DIR fingerprint
    fieldlink admin --data-dir DIR user add NAME --role ROLE [--site SITE] [--password-stdin]
    fieldlink admin --data-dir DIR audit verify
    fieldlink demo  [--data-dir DIR] [--http HOST:PORT] [--ssh HOST:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from shared import logs
from shared.version import __version__

DEFAULT_DATA_DIR = "/var/lib/fieldlink"
LOG_FORMATS: dict[str, bool | None] = {"auto": None, "json": True, "console": False}
HQ_COMMANDS = frozenset({"init", "serve", "admin", "demo"})
# The demo listens on loopback unless told otherwise.
DEMO_HTTP = "127.0.0.1:8443"
DEMO_SSH = "127.0.0.1:8022"


def _hq_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def data_dir(p: argparse.ArgumentParser, default: str = DEFAULT_DATA_DIR) -> None:
        p.add_argument(
            "--data-dir",
            default=default,
            type=Path,
            help=f"HQ's data directory (default {default})",
        )

    init = sub.add_parser(
        "init",
        help="create HQ's data directory, keys, database and admin user",
        description="Create the data directory: TLS key and self-signed "
        "certificate, HQ's SSH key, the database (migrated) and the first "
        "admin user `admin`, whose password is printed once.",
    )
    data_dir(init)
    init.add_argument(
        "--db",
        help="database URL (default: SQLite in the data dir); e.g. "
        "postgresql+asyncpg://user@host/db",
    )
    init.add_argument("--public-url", help="the HTTPS URL agents and engineers use to reach HQ")

    serve = sub.add_parser("serve", help="run HQ: HTTPS API and the SSH gateway for agents")
    data_dir(serve)
    serve.add_argument(
        "--http", metavar="HOST:PORT", help="HTTPS listen address (default 0.0.0.0:8443)"
    )
    serve.add_argument(
        "--ssh", metavar="HOST:PORT", help="SSH listen address for agents (default 0.0.0.0:8022)"
    )
    serve.add_argument(
        "--db", help="database URL (or FIELDLINK_DB); default SQLite in the data dir"
    )
    serve.add_argument("--public-url", help="the HTTPS URL that goes into enrollment tokens")

    adm = sub.add_parser("admin", help="administer HQ from the HQ machine (no login needed)")
    data_dir(adm)
    asub = adm.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")
    et = asub.add_parser("enroll-token", help="make an enrollment token; prints it alone on stdout")
    et.add_argument("--site", required=True, help="the site the agent joins (created if new)")
    et.add_argument("--uses", type=int, default=1, help="how many agents may use it (default 1)")
    et.add_argument("--ttl", default="1h", help="how long it stays valid (default 1h)")
    at = asub.add_parser(
        "api-token", help="make a bearer token for a user (break-glass); prints it alone on stdout"
    )
    at.add_argument("--user", required=True)
    at.add_argument("--ttl", default="30d", help="how long it stays valid (default 30d)")
    ag = asub.add_parser("agent", help="manage agents")
    agsub = ag.add_subparsers(dest="agent_command", required=True, metavar="COMMAND")
    rv = agsub.add_parser("revoke", help="revoke an agent: its connection drops and it is refused")
    rv.add_argument("agent_id", metavar="AGENT_ID")
    asub.add_parser("fingerprint", help="print the SHA-256 fingerprint of HQ's TLS certificate")
    us = asub.add_parser("user", help="manage users")
    ussub = us.add_subparsers(dest="user_command", required=True, metavar="COMMAND")
    ua = ussub.add_parser(
        "add", help="add a user with a role; prints a generated password unless --password-stdin"
    )
    ua.add_argument("name", metavar="NAME")
    ua.add_argument(
        "--role",
        required=True,
        help="admin, hq_engineer, site_tech, site_staff, auditor or a custom role",
    )
    ua.add_argument("--site", help="scope the role to this site (default: global)")
    ua.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    au = asub.add_parser("audit", help="the audit trail")
    ausub = au.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    ausub.add_parser(
        "verify", help="walk the hash chain; non-zero exit naming the first broken entry"
    )

    demo = sub.add_parser(
        "demo",
        help="HQ plus one local agent on SQLite (what `make run` runs)",
        description="Start HQ and one local agent, then print the URL, the admin password "
        "and the TLS fingerprint. Logs go to DATA_DIR/demo.log; Ctrl-C stops both.",
        epilog="example:\n  fieldlink demo --http 127.0.0.1:9443 --ssh 127.0.0.1:9022\n"
        "  make run HTTP_PORT=9443 SSH_PORT=9022 BIND=0.0.0.0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data_dir(demo, ".demo")
    demo.add_argument(
        "--http",
        metavar="HOST:PORT",
        default=DEMO_HTTP,
        help=f"HTTPS listen address (default {DEMO_HTTP}: this machine only)",
    )
    demo.add_argument(
        "--ssh",
        metavar="HOST:PORT",
        default=DEMO_SSH,
        help=f"SSH listen address for the agent (default {DEMO_SSH})",
    )
    demo.add_argument("--interval", type=float, help="agent report interval (default 15)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fieldlink",
        description="Fieldlink HQ and engineer command line.",
    )
    parser.add_argument("--version", action="version", version=f"fieldlink {__version__}")
    parser.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _hq_parser(sub)
    from server.client import commands

    commands.register(sub)
    return parser


def _run_hq_command(args: argparse.Namespace) -> int:
    from server.config.settings import load_settings
    from server.control import admin

    overrides: dict[str, object] = {}
    for name in ("http", "ssh", "db", "public_url"):
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    if getattr(args, "interval", None) is not None:
        overrides["report_interval"] = args.interval
    try:
        settings = load_settings(args.data_dir, **overrides)
    except ValueError as exc:
        print(f"fieldlink: invalid settings: {exc}", file=sys.stderr)
        return 2
    log_file = None
    if args.command == "demo":
        from server.demo import open_log

        # the terminal keeps the banner; the logs of HQ and the agent go to a file
        log_file = open_log(args.data_dir)
        logs.configure(json=True, level=settings.log_level, stream=log_file)
    else:
        logs.configure(json=LOG_FORMATS[args.log_format], level=settings.log_level)

    try:
        if args.command == "init":
            result = asyncio.run(admin.init(settings))
            print(f"Fieldlink HQ initialised in {args.data_dir.resolve()}")
            print(f"TLS certificate fingerprint (SHA-256): {result.fingerprint}")
            print("admin user: admin")
            print(f"admin password: {result.admin_password}")
            print("The password is shown only now: store it somewhere safe.")
            return 0
        if args.command == "serve":
            from server.hq import HQ

            asyncio.run(HQ(settings).run_until_signalled())
            return 0
        if args.command == "demo":
            from server.demo import run_demo

            return asyncio.run(run_demo(settings, log_file))
        return _admin(args, settings)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from server.config.datadir import DataDirError
        from shared.errors import FieldlinkError

        if isinstance(exc, FieldlinkError | DataDirError | OSError):
            return admin.fail(exc)
        raise


def _admin(args: argparse.Namespace, settings: object) -> int:
    from server.config.datadir import DataDir
    from server.config.settings import Settings
    from server.control import admin

    assert isinstance(settings, Settings)
    cmd = args.admin_command
    if cmd == "enroll-token":
        print(
            asyncio.run(admin.enroll_token(settings, site=args.site, uses=args.uses, ttl=args.ttl))
        )
        return 0
    if cmd == "api-token":
        print(asyncio.run(admin.api_token(settings, user=args.user, ttl=args.ttl)))
        return 0
    if cmd == "fingerprint":
        datadir = DataDir(settings.data_dir)
        datadir.require()
        print(datadir.fingerprint())
        return 0
    if cmd == "agent" and args.agent_command == "revoke":
        told = asyncio.run(admin.revoke_agent(settings, args.agent_id))
        note = (
            "its connection was closed"
            if told
            else "no running HQ was reached; it is refused on its next connection"
        )
        print(f"agent {args.agent_id} revoked; {note}", file=sys.stderr)
        return 0
    if cmd == "user" and args.user_command == "add":
        password = None
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        generated = asyncio.run(
            admin.add_user(
                settings, username=args.name, role=args.role, site=args.site, password=password
            )
        )
        scope = f"site {args.site}" if args.site else "global"
        print(f"user {args.name} added with role {args.role} ({scope})", file=sys.stderr)
        if generated:
            print(generated)
        return 0
    if cmd == "audit" and args.audit_command == "verify":
        count, broken = asyncio.run(admin.audit_verify(settings))
        if broken:
            print(f"audit chain BROKEN at {broken} ({count} entries read)", file=sys.stderr)
            return 1
        print(f"audit chain intact: {count} entries")
        return 0
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(json=LOG_FORMATS[args.log_format])
    if args.command not in HQ_COMMANDS:
        from server.client import commands

        return commands.run(args)
    return _run_hq_command(args)


if __name__ == "__main__":
    sys.exit(main())
