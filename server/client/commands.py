"""Engineer commands of `fieldlink`: argument parsing and dispatch.

    fieldlink login URL [--fingerprint FP] [--username U] [--password-stdin] [--totp CODE]
    fieldlink logout
    fieldlink agents [--site SITE] [--json]
    fieldlink run AGENT NAME [key=value ...] [--ticket T] [--json]
    fieldlink exec AGENT --ticket T -- CMD [ARGS ...]
    fieldlink job NAME [key=value ...] (--site SITE | --tag TAG | --agent ID ...)
                  [--ticket T] [--ttl 1h] [--json]
    fieldlink tickets | ticket ... | kpi            (ticket_args.py)
    fieldlink problem ...                           (problem_args.py)
    fieldlink shell | session ... | files ...       (session_args.py)
    fieldlink change ...                            (change_args.py)
    fieldlink kb search|show|new|publish|...        (kb_args.py)

`run(args)` reads the environment once (config dir and the FIELDLINK_SERVER /
FIELDLINK_TOKEN / FIELDLINK_TLS_FINGERPRINT overrides), runs the command and
turns every `ClientError` into a clear message on stderr and an exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from typing import Any

from server.client import change_args, kb_args, problem_args, session_args, ticket_args
from server.client.argparsing import add_command, duration, seconds
from server.client.errors import ApiError, ClientError

COMMANDS = frozenset(
    {"login", "logout", "agents", "run", "exec", "job"}
    | ticket_args.COMMANDS
    | change_args.COMMANDS
    | problem_args.COMMANDS
    | session_args.COMMANDS
    | kb_args.COMMANDS
)

PARAMS_HELP = (
    "parameters as key=value, typed by the entry's schema: numbers, true/false, "
    "lists as a,b or by repeating the key, an empty value for null"
)
LOGIN_HINT = "run `fieldlink login URL` to log in again"


def register(sub: Any) -> None:
    """Add the engineer subcommands to `fieldlink`'s parser."""
    login = add_command(
        sub,
        "login",
        help="log in to HQ: pins its TLS certificate and stores a token",
        description="Connect to HQ, show the SHA-256 fingerprint of its TLS certificate "
        "and ask whether to trust it, then ask for user name, password and (when HQ asks) "
        "a TOTP code. The token and the pinned fingerprint are stored, readable by you only, "
        "in $FIELDLINK_CONFIG_DIR, $XDG_CONFIG_HOME/fieldlink or ~/.config/fieldlink.",
        epilog="For scripts, FIELDLINK_SERVER, FIELDLINK_TOKEN and FIELDLINK_TLS_FINGERPRINT "
        "in the environment replace the stored login.\n\nexample:\n"
        "  fieldlink login https://hq.example:8443\n"
        "  fieldlink login https://hq.example:8443 --fingerprint 3f9a... \\\n"
        "      --username ann --password-stdin --totp 123456 < password-file",
    )
    login.add_argument("url", metavar="URL", help="HQ's HTTPS address, e.g. https://hq:8443")
    login.add_argument(
        "--fingerprint",
        metavar="FP",
        help="the SHA-256 fingerprint HQ's certificate must have (no question asked; "
        "refused if it differs); `fieldlink admin fingerprint` prints it on HQ",
    )
    login.add_argument("--username", metavar="NAME", help="user name (else asked)")
    login.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from a line of stdin (after the trust answer, if one is asked)",
    )
    login.add_argument(
        "--totp", metavar="CODE", help="the current TOTP code (else asked if needed)"
    )

    add_command(
        sub,
        "logout",
        help="revoke the stored token at HQ and forget it",
        description="Revoke the stored login token at HQ and delete it from this machine. "
        "When HQ cannot be reached the token is forgotten here anyway (it expires at HQ on "
        "its own). FIELDLINK_TOKEN in the environment is not touched.",
    )

    agents = add_command(
        sub,
        "agents",
        help="list agents: site, host, status, health",
        description="The agents you may see: id, site, hostname, status, CPU/memory/disk "
        "use and when each was last seen.",
        epilog="example:\n  fieldlink agents --site shop-12\n  fieldlink agents --json | jq",
    )
    agents.add_argument("--site", help="only this site's agents")
    agents.add_argument("--json", action="store_true", help="print the API's JSON items")

    run = add_command(
        sub,
        "run",
        intermixed=True,
        usage="%(prog)s AGENT NAME [key=value ...] [--ticket T] [--timeout SECONDS] [--json]",
        help="run a diagnostic or action on one agent and stream its output",
        description="Run a catalog entry (see GET /api/v1/agents/{id}/catalog) on one agent "
        "and print its output as it comes; tabular results are drawn as tables on a terminal. "
        "Exit status 0 when the result is ok, 1 otherwise (the reason on stderr).",
        epilog="AGENT is an agent id or a hostname only one agent has.\n\n"
        "Parameters: key=value, typed by the entry's advertised schema: integers and "
        "numbers, booleans as true/false (yes/no, on/off, 1/0), lists as a,b or by "
        'repeating the key (or a JSON list: key=\'["a,b","c"]\'), an empty value for '
        "null. A value that does not fit its type is sent as given, and HQ names it.\n\n"
        "example:\n  fieldlink run shop12-pos1 disk.usage\n"
        "  fieldlink run ag_3f2c process.top n=5 sort=memory\n"
        "  fieldlink run shop12-pos1 service.restart unit=cups --ticket FL-42",
    )
    run.add_argument("agent", metavar="AGENT", help="agent id or unique hostname")
    run.add_argument("name", metavar="NAME", help="catalog entry, e.g. system.summary")
    run.add_argument("params", metavar="key=value", nargs="*", help=PARAMS_HELP)
    run.add_argument("--ticket", metavar="T", help="ticket number (FL-42) or id")
    run.add_argument("--timeout", type=seconds, metavar="SECONDS", help="run time limit")
    run.add_argument("--json", action="store_true", help="print only the final result as JSON")

    ex = add_command(
        sub,
        "exec",
        usage="%(prog)s AGENT --ticket T [--timeout SECONDS] [--json] -- CMD [ARGS ...]",
        help="run a plain command on one agent (needs a ticket and the agent's allow_exec)",
        description="Run CMD with its ARGS on the agent, without a shell, and stream its "
        "output. Needs exec:run, an open ticket on the agent's site and allow_exec = true "
        "in the agent's policy.toml. Exit status: the command's own when it ran to an end "
        "(128+N when killed by signal N), else 1 with the reason on stderr.",
        epilog="example:\n  fieldlink exec shop12-pos1 --ticket FL-42 -- ls -l /var/log",
    )
    ex.add_argument("agent", metavar="AGENT", help="agent id or unique hostname")
    ex.add_argument("--ticket", metavar="T", required=True, help="ticket number (FL-42) or id")
    ex.add_argument("--timeout", type=seconds, metavar="SECONDS", help="run time limit")
    ex.add_argument("--json", action="store_true", help="print only the final result as JSON")
    ex.add_argument("argv", metavar="CMD", nargs="+", help="after --: the command and its ARGS")

    job = add_command(
        sub,
        "job",
        intermixed=True,
        usage="%(prog)s NAME [key=value ...] (--site SITE | --tag TAG | --agent ID ...)\n"
        "                     [--ticket T] [--ttl 1h] [--timeout SECONDS] [--json]",
        help="run one entry across a site, tagged agents or a list, and follow it",
        description="Run a catalog entry on many agents. Connected agents run it at once; "
        "offline ones when they reconnect, until --ttl passes (then `expired`). A live "
        "progress bar follows the job, then a table shows each agent's result. Exit "
        "status 0 only when every agent's result is ok. Ctrl-C stops following; the "
        "job goes on at HQ.",
        epilog="Parameters are typed as for `fieldlink run`.\n\n"
        "example:\n  fieldlink job disk.usage --site shop-12\n"
        "  fieldlink job service.status unit=cups --tag pos --ttl 4h\n"
        "  fieldlink job net.ping host=10.0.0.1 --agent ag_3f2c --agent ag_9b1d",
    )
    job.add_argument("name", metavar="NAME", help="catalog entry, e.g. disk.usage")
    job.add_argument("params", metavar="key=value", nargs="*", help=PARAMS_HELP)
    target = job.add_mutually_exclusive_group(required=True)
    target.add_argument("--site", help="every agent of this site")
    target.add_argument(
        "--tag", action="append", metavar="TAG", help="agents with this tag (repeat: all of them)"
    )
    target.add_argument(
        "--agent",
        action="extend",
        nargs="+",
        metavar="ID",
        help="these agents (ids or unique hostnames; repeat or list several)",
    )
    job.add_argument("--ticket", metavar="T", help="ticket number (FL-42) or id")
    job.add_argument(
        "--ttl",
        type=duration,
        metavar="DURATION",
        help="how long items for offline agents may wait: 30m, 1h, 2d (default HQ's, 1h)",
    )
    job.add_argument("--timeout", type=seconds, metavar="SECONDS", help="per-agent time limit")
    job.add_argument("--json", action="store_true", help="print only the final job as JSON")

    ticket_args.register(sub)
    problem_args.register(sub)
    session_args.register(sub)
    change_args.register(sub)
    kb_args.register(sub)


def describe(exc: ClientError) -> str:
    """The message for stderr: HQ's message, each field, and what to do."""
    lines = [f"fieldlink: {exc.message}"]
    if isinstance(exc, ApiError):
        lines.extend(f"  {field}: {why}" for field, why in sorted(exc.fields.items()))
        if exc.allowed is not None and not all(a in exc.message for a in exc.allowed):
            lines.append(f"  allowed now: {', '.join(exc.allowed) or 'nothing'}")
        if exc.code == "step_up_required":
            lines.append("  (give a fresh TOTP code with --totp CODE)")
        elif exc.code == "recording_tampered":
            lines.append(
                "  (the stored recording does not verify: it was altered or cut after it was "
                "made; this read is in the audit trail)"
            )
        elif exc.status == 401:
            lines.append(f"  ({LOGIN_HINT})")
        elif exc.code == "2fa_required":
            lines.append("  (turn on two-factor authentication in the console first)")
        elif exc.status == 429 and exc.retry_after:
            lines.append(f"  (try again in {exc.retry_after}s)")
    return "\n".join(lines)


def dispatch(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from server.client import config, jobs, login, remote

    directory = config.config_dir(environ)
    if args.command == "login":
        login_spec = login.LoginSpec(
            url=args.url,
            fingerprint=args.fingerprint,
            username=args.username,
            password_stdin=args.password_stdin,
            totp=args.totp,
        )
        return login.login(login_spec, directory, sys.stdin, sys.stderr)
    if args.command == "logout":
        return login.logout(directory)
    stored = config.load(directory)
    creds = config.effective(environ, stored)
    if creds.expired():
        raise ClientError(f"your login to {creds.url} expired at {creds.expires_at}; {LOGIN_HINT}")
    if args.command == "agents":
        return asyncio.run(remote.agents(creds, args.site, args.json))
    if args.command in ("run", "exec"):
        is_exec = args.command == "exec"
        run_spec = remote.RunSpec(
            agent=args.agent,
            name="exec" if is_exec else args.name,
            params={"argv": list(args.argv)} if is_exec else None,
            words=[] if is_exec else list(args.params),
            ticket=args.ticket,
            timeout=args.timeout,
            as_json=args.json,
            remote_code=is_exec,
        )
        return asyncio.run(remote.run(creds, run_spec))
    if args.command == "job":
        # agent ids never hold "=": a key=value after `--agent ID` is a parameter
        refs = [a for a in args.agent or [] if "=" not in a]
        words = list(args.params) + [a for a in args.agent or [] if "=" in a]
        job_spec = jobs.JobSpec(
            name=args.name,
            words=words,
            site=args.site,
            tags=list(args.tag or []),
            agents=refs,
            ticket=args.ticket,
            ttl=args.ttl,
            timeout=args.timeout,
            as_json=args.json,
        )
        if args.agent is not None and not refs:
            raise ClientError("--agent needs at least one agent id")
        return asyncio.run(jobs.job(creds, job_spec))
    if args.command in ticket_args.COMMANDS:
        return ticket_args.dispatch(args, creds)
    if args.command in change_args.COMMANDS:
        return change_args.dispatch(args, creds)
    if args.command in problem_args.COMMANDS:
        return problem_args.dispatch(args, creds)
    if args.command in session_args.COMMANDS:
        return session_args.dispatch(args, creds, environ)
    if args.command in kb_args.COMMANDS:
        return kb_args.dispatch(args, creds)
    raise ClientError(f"unknown command {args.command}")


def run(args: argparse.Namespace) -> int:
    """Run an engineer command; exit status 0 on success."""
    try:
        return dispatch(args, dict(os.environ))
    except ClientError as exc:
        print(describe(exc), file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("fieldlink: interrupted", file=sys.stderr)
        return 130
