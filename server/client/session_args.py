"""The command lines of `fieldlink shell`, `fieldlink session ...` and
`fieldlink files ...`: argparse only (kept light), dispatched by
`commands.dispatch`.

    fieldlink shell AGENT --ticket FL-N [--reason TEXT] [--totp CODE] [--max-minutes N]
    fieldlink shell --accept ID [--totp CODE]
    fieldlink session list [--ticket FL-N] [--active] [--queue] [--state S] [--json]
    fieldlink session watch ID
    fieldlink session end ID [--reason TEXT]
    fieldlink session replay ID [--speed N] [--max-idle SECONDS]
    fieldlink files get|put AGENT SRC DST --ticket FL-N [--reason TEXT] [--totp CODE]
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from server.client.argparsing import add_command, number
from server.client.config import Login
from server.client.errors import UsageError

COMMANDS = frozenset({"shell", "session", "files"})
STEP_UP = (
    "HQ wants a TOTP code verified in the last 10 minutes before it opens a session: "
    "when it asks, the command asks you for one (or takes --totp CODE, for scripts)."
)
CONSENT = (
    "Where the site's policy asks for consent, a status line says who must approve "
    "(someone at the machine, or a site technician) and by when; a denied or expired "
    "request ends the command with its reason, exit status 1. Ctrl-C while waiting "
    "withdraws the request."
)


_speed = number(float, lambda v: 0 < v <= 1000, "a number", "more than 0, at most 1000")
_idle = number(float, lambda v: 0 <= v <= 3600, "a number of seconds", "between 0 and 3600 seconds")
_minutes = number(int, lambda v: 1 <= v <= 480, "a number of minutes", "between 1 and 480 minutes")


def _asking(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", metavar="TEXT", help="why, shown to the site when it consents")
    parser.add_argument("--totp", metavar="CODE", help="a fresh TOTP code for step-up 2FA")
    parser.add_argument(
        "--max-minutes", type=_minutes, metavar="N", help="session length limit (default HQ's, 60)"
    )


def register(sub: Any) -> None:
    shell = add_command(
        sub,
        "shell",
        usage="%(prog)s AGENT --ticket FL-N [--reason TEXT] [--totp CODE] [--max-minutes N]\n"
        "       %(prog)s --accept ID [--totp CODE]",
        help="an interactive shell on a machine, for a ticket (recorded)",
        description="Ask HQ for a shell session on AGENT for an open ticket, wait for the "
        "site's consent, then work in the machine's terminal through HQ: the local terminal "
        "goes into raw mode (Ctrl-C, Ctrl-Z and full-screen programs reach the machine), "
        "resizes follow, and the terminal is restored however the session ends. `~.` at the "
        "start of a line ends the session from here. Everything shown is recorded. "
        "--accept ID takes a session a site asked for (`fieldlink session list --queue`).",
        epilog=f"{STEP_UP}\n\n{CONSENT}\n\nExit status 0 when the shell exits or you end it, "
        "1 when it is refused, denied or ended by someone else.\n\nexample:\n"
        "  fieldlink shell shop12-pos1 --ticket FL-42 --reason 'printer queue stuck'\n"
        "  fieldlink shell --accept se_7f3a",
    )
    shell.add_argument("agent", metavar="AGENT", nargs="?", help="agent id or unique hostname")
    shell.add_argument("--ticket", metavar="FL-N", help="the open ticket the session is for")
    shell.add_argument("--accept", metavar="ID", help="take this session a site asked for")
    _asking(shell)

    session = add_command(
        sub,
        "session",
        help="list, watch, end or replay remote sessions",
        description="Remote sessions: shells and file transfers on machines, each bound to "
        "a ticket.",
        epilog="example:\n  fieldlink session list --queue\n  fieldlink session list --active\n"
        "  fieldlink session watch se_7f3a\n  fieldlink session replay se_7f3a --speed 4",
    )
    ssub = session.add_subparsers(dest="session_command", required=True, metavar="ACTION")
    listing = add_command(
        ssub,
        "list",
        help="sessions: id, state, kind, machine, ticket, engineer, consent, times",
        description="The sessions you can see, newest first: id, state, kind, machine, "
        "ticket, engineer, who consented, when it started and when it ends. --queue lists "
        "the sessions sites asked for (`fieldlink-agent help --assist`) that wait for an "
        "engineer to take them with `fieldlink shell --accept ID`.",
    )
    listing.add_argument("--ticket", metavar="FL-N", help="only this ticket's sessions")
    listing.add_argument(
        "--active",
        action="store_true",
        help="only live ones (requested, awaiting consent, active)",
    )
    listing.add_argument("--queue", action="store_true", help="sites waiting for an engineer")
    listing.add_argument("--state", metavar="S", help="a state, or a comma list of states")
    listing.add_argument("--limit", type=int, default=100, metavar="N", help="at most N (100)")
    listing.add_argument("--json", action="store_true", help="print the API's JSON items")

    watch = add_command(
        ssub,
        "watch",
        help="follow a live shell read-only",
        description="Print a live shell's output as it happens (the last screenful first), "
        "read-only, until the session ends or Ctrl-C. Needs sessions:consent, shell:open "
        "or audit:read on the machine's site.",
    )
    watch.add_argument("id", metavar="ID", help="session id")

    end = add_command(
        ssub,
        "end",
        help="end a session",
        description="End a session: yours, or, for an admin or the site's technician, any "
        "on their scope. The machine stops it too.",
    )
    end.add_argument("id", metavar="ID", help="session id")
    end.add_argument("--reason", metavar="TEXT", help="why (default: ended by the engineer)")

    replay = add_command(
        ssub,
        "replay",
        help="play a session's recording in the terminal",
        description="Fetch a shell's recording (decrypted and verified by HQ; reading it is "
        "audited) and play its output here with its timing. Idle gaps longer than "
        "--max-idle seconds (default 2) are cut to that before --speed divides the timing. "
        "A recording that fails HQ's integrity check is reported and not played "
        "(exit status 1). Needs audit:read on the site.",
    )
    replay.add_argument("id", metavar="ID", help="session id")
    replay.add_argument(
        "--speed", type=_speed, default=1.0, metavar="N", help="play N times faster (default 1)"
    )
    replay.add_argument(
        "--max-idle",
        type=_idle,
        default=2.0,
        metavar="SECONDS",
        help="cut longer idle gaps to this (default 2)",
    )

    files = add_command(
        sub,
        "files",
        help="copy one file from or to a machine, for a ticket",
        description="Copy a file through the machine's SFTP subsystem, within its policy's "
        "file roots, in a `files` session of its own that is ended afterwards. Prints the "
        "bytes moved and their SHA-256 (also in HQ's audit trail).",
        epilog=f"{STEP_UP}\n\n{CONSENT}\n\nexample:\n"
        "  fieldlink files get shop12-pos1 /var/log/cups/error_log . --ticket FL-42\n"
        "  fieldlink files put shop12-pos1 ./printers.conf /etc/cups/ --ticket FL-42",
    )
    fsub = files.add_subparsers(dest="files_command", required=True, metavar="DIRECTION")
    for direction, text, detail, src, dst in (
        (
            "get",
            "copy a file from the machine",
            "Copy SRC from the machine to DST here, through a files session asked for and "
            "ended by this command; a partial download never lands at DST.",
            "absolute path on the machine",
            "local file or directory; - for stdout",
        ),
        (
            "put",
            "copy a file to the machine",
            "Copy SRC from here to DST on the machine, through a files session asked for and "
            "ended by this command; HQ's byte count and SHA-256 must match ours.",
            "local file",
            "absolute path on the machine; ending in / keeps the file's name",
        ),
    ):
        part = add_command(fsub, direction, help=text, description=detail)
        part.add_argument("agent", metavar="AGENT", help="agent id or unique hostname")
        part.add_argument("src", metavar="SRC", help=src)
        part.add_argument("dst", metavar="DST", help=dst)
        part.add_argument("--ticket", metavar="FL-N", required=True, help="the open ticket")
        _asking(part)


def dispatch(args: argparse.Namespace, login: Login, environ: Mapping[str, str]) -> int:
    import asyncio

    from server.client import files, sessions

    if args.command == "shell":
        if args.accept:
            if args.agent or args.ticket:
                raise UsageError("--accept ID takes a site's request: no AGENT or --ticket")
            ask = None
        else:
            if not args.agent or not args.ticket:
                raise UsageError("shell needs AGENT and --ticket FL-N (or --accept ID)")
            ask = sessions.Ask(
                args.agent, args.ticket, "shell", args.reason or "", args.max_minutes, args.totp
            )
        spec = sessions.ShellSpec(ask, args.accept, args.totp, sessions.term_name(environ))
        return asyncio.run(sessions.shell(login, spec))
    if args.command == "files":
        files_spec = files.FilesSpec(
            direction=args.files_command,
            agent=args.agent,
            src=args.src,
            dst=args.dst,
            ticket=args.ticket,
            reason=args.reason,
            totp=args.totp,
            max_minutes=args.max_minutes,
        )
        return asyncio.run(files.transfer(login, files_spec))
    cmd = args.session_command
    if cmd == "list":
        list_spec = sessions.ListSpec(
            args.ticket, args.active, args.queue, args.state, args.limit, args.json
        )
        return asyncio.run(sessions.list_sessions(login, list_spec))
    if cmd == "end":
        return asyncio.run(sessions.end(login, args.id, args.reason))
    if cmd == "watch":
        return asyncio.run(sessions.watch(login, args.id))
    return sessions.replay(login, args.id, args.speed, args.max_idle)
