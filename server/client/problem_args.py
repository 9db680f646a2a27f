"""The command lines of `fieldlink problem ...`: argparse only (building the
parser must not import the HTTP client), dispatched by `commands.dispatch`.

    fieldlink problem list [--status S | --proposed] [--site S] [--mine] [--limit N] [--json]
    fieldlink problem show PRB-N [--json]
    fieldlink problem new --title T [--site S] [--ticket FL-N ...] [--priority P2] ...
    fieldlink problem edit PRB-N [--title T] [--root-cause TEXT] [--workaround TEXT] ...
    fieldlink problem link PRB-N FL-N [FL-N ...]
    fieldlink problem unlink PRB-N FL-N
    fieldlink problem status PRB-N STATUS [--workaround T] [--root-cause T]
                  [--resolution T] [--note T] [--resolve-incidents]
    fieldlink problem note PRB-N TEXT
    fieldlink problem accept PRB-N
    fieldlink problem dismiss PRB-N --reason WHY
"""

from __future__ import annotations

import argparse
from typing import Any

from server.client.argparsing import add_command, count, level, priority
from server.client.config import Login

COMMANDS = frozenset({"problem"})
STATUSES = ("proposed", "new", "investigating", "known_error", "resolved", "closed", "dismissed")
TARGETS = ("investigating", "known_error", "resolved", "closed", "new", "dismissed")
STATUS_HELP = (
    "a status (proposed, new, investigating, known_error, resolved, closed, dismissed), a "
    "comma list of them, or open (new, investigating, known_error); default: every "
    "problem but proposals and dismissed ones"
)


def _target(text: str) -> str:
    value = text.strip().lower().replace("-", "_").replace(" ", "_")
    if value not in TARGETS:
        raise argparse.ArgumentTypeError(f"one of {', '.join(TARGETS)}")
    return value


def _texts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root-cause", metavar="TEXT", help="why it happens")
    parser.add_argument(
        "--workaround", metavar="TEXT", help="what helps until it is fixed (shown on incidents)"
    )
    parser.add_argument("--resolution", metavar="TEXT", help="how it was fixed for good")


def register(sub: Any) -> None:
    problem = add_command(
        sub,
        "problem",
        help="problem records: the causes behind repeated incidents",
        description="Work problem records. PRB-N is a problem's number (PRB-7, or just 7) or "
        "its id; FL-N a ticket's. A problem goes new -> investigating -> known_error -> "
        "resolved -> closed; a known error needs a workaround (it then shows on every linked "
        "incident), a resolved problem its root cause and resolution. HQ proposes problems "
        "itself (an alert rule firing on 3 or more machines, an incident reopened twice): "
        "list them with --proposed, then accept or dismiss them.",
        epilog="example:\n"
        "  fieldlink problem list --proposed\n"
        "  fieldlink problem new --site shop-12 --title 'tills freeze' --ticket FL-12 "
        "--ticket FL-15\n"
        "  fieldlink problem status PRB-3 known_error --workaround 'restart the till service'\n"
        "  fieldlink problem status PRB-3 resolved --root-cause 'driver 4.2' "
        "--resolution 'driver 4.3'",
    )
    psub = problem.add_subparsers(dest="problem_command", required=True, metavar="ACTION")

    lst = add_command(
        psub,
        "list",
        help="list problems: number, priority, status, incidents, site, owner, title",
        description="The problems you can see, newest first, as a table: number, priority, "
        "status, how many incidents are linked, site (hq for HQ-wide ones), owner and title.",
    )
    which = lst.add_mutually_exclusive_group()
    which.add_argument("--status", metavar="S", help=STATUS_HELP)
    which.add_argument(
        "--proposed", action="store_true", help="HQ's proposals waiting to be accepted"
    )
    lst.add_argument("--site", metavar="S", help="only this site's problems; hq: HQ-wide ones")
    lst.add_argument("--mine", action="store_true", help="only problems you own")
    lst.add_argument(
        "--limit", type=count, default=50, metavar="N", help="at most N problems (default 50)"
    )
    lst.add_argument("--json", action="store_true", help="print the API's JSON items")

    show = add_command(
        psub,
        "show",
        help="a problem's fields, workaround, root cause, incidents and history",
        description="Print one problem: its fields, why HQ proposed it (for proposals), its "
        "workaround, root cause and resolution, the linked incidents and its history.",
    )
    show.add_argument("ref", metavar="PRB-N", help="problem number or id")
    show.add_argument("--json", action="store_true", help="print the API's JSON")

    new = add_command(
        psub,
        "new",
        help="open a problem; prints its number alone on stdout",
        description="Open a problem record (status new) and print its number (PRB-N) alone "
        "on stdout. Without --site it is HQ-wide (that needs problems:write on every site).",
    )
    new.add_argument("--title", required=True, metavar="T", help="a one-line title")
    new.add_argument("--description", default="", metavar="TEXT", help="more detail")
    new.add_argument("--site", metavar="S", help="the site it belongs to (default HQ-wide)")
    new.add_argument(
        "--ticket",
        action="append",
        default=[],
        metavar="FL-N",
        help="link this incident; repeat for more",
    )
    new.add_argument("--priority", type=priority, metavar="P2", help="P1-P4 (overrides)")
    new.add_argument("--impact", type=level, metavar="1-3", help="impact, 1 high .. 3 low")
    new.add_argument("--urgency", type=level, metavar="1-3", help="urgency, 1 high .. 3 low")
    new.add_argument("--assignee", metavar="USER", help="the owner")
    new.add_argument("--json", action="store_true", help="print the new problem as JSON instead")

    edit = add_command(
        psub,
        "edit",
        help="change a problem's fields (title, priority, owner, texts)",
        description="Change fields of a problem. A known error keeps a workaround; a changed "
        "workaround of a known error is noted on its open incidents.",
    )
    edit.add_argument("ref", metavar="PRB-N", help="problem number or id")
    edit.add_argument("--title", metavar="T")
    edit.add_argument("--description", metavar="TEXT")
    edit.add_argument("--priority", type=priority, metavar="P2")
    edit.add_argument("--assignee", metavar="USER", help='the owner ("" to clear)')
    _texts(edit)

    link = add_command(
        psub,
        "link",
        help="link incidents to a problem",
        description="Tie incidents to the problem (a site's problem takes only that site's "
        "incidents). A known error's workaround then shows on each of them.",
    )
    link.add_argument("ref", metavar="PRB-N", help="problem number or id")
    link.add_argument("tickets", metavar="FL-N", nargs="+", help="ticket numbers or ids")

    unlink = add_command(
        psub, "unlink", help="unlink an incident", description="Untie an incident from a problem."
    )
    unlink.add_argument("ref", metavar="PRB-N", help="problem number or id")
    unlink.add_argument("ticket", metavar="FL-N", help="ticket number or id")

    status = add_command(
        psub,
        "status",
        help="move a problem to a status",
        description="Move the problem to STATUS: investigating, known_error (needs a "
        "workaround), resolved (needs root cause and resolution), closed; new accepts a "
        "proposal, dismissed dismisses it (needs --note as the reason). Texts given here are "
        "stored with the move. A status not allowed now is refused (409) with the allowed "
        "ones; exit status 1.",
    )
    status.add_argument("ref", metavar="PRB-N", help="problem number or id")
    status.add_argument("status", metavar="STATUS", type=_target, help=", ".join(TARGETS))
    _texts(status)
    status.add_argument("--note", metavar="TEXT", help="a note on the history")
    status.add_argument(
        "--resolve-incidents",
        action="store_true",
        help="resolved: also resolve the open linked incidents you may work",
    )

    note = add_command(
        psub,
        "note",
        help="add a work note to a problem's history",
        description="Add a work note (findings, what was tried) to the problem's history.",
    )
    note.add_argument("ref", metavar="PRB-N", help="problem number or id")
    note.add_argument("text", metavar="TEXT", help="the note; - reads it from stdin")

    accept = add_command(
        psub,
        "accept",
        help="accept a proposal (it becomes a new problem)",
        description="Accept one of HQ's proposals: it becomes a problem (status new).",
    )
    accept.add_argument("ref", metavar="PRB-N", help="problem number or id")

    dismiss = add_command(
        psub,
        "dismiss",
        help="dismiss a proposal, saying why",
        description="Dismiss one of HQ's proposals. Its incidents stay linked to it, so the "
        "same incidents do not make a new proposal.",
    )
    dismiss.add_argument("ref", metavar="PRB-N", help="problem number or id")
    dismiss.add_argument("--reason", required=True, metavar="WHY", help="why it is no problem")


TEXTS = ("root_cause", "workaround", "resolution")


def _given(args: argparse.Namespace, *keys: str) -> dict[str, Any]:
    """The options among `keys` given on the command line, for the API's body."""
    return {key: getattr(args, key) for key in keys if getattr(args, key) is not None}


def dispatch(args: argparse.Namespace, login: Login) -> int:
    import asyncio

    from server.client import problems

    cmd = args.problem_command
    if cmd == "list":
        status = "proposed" if args.proposed else args.status
        spec = problems.ListSpec(status, args.site, args.mine, args.limit, args.json)
        return asyncio.run(problems.list_problems(login, spec))
    if cmd == "show":
        return asyncio.run(problems.show(login, args.ref, args.json))
    if cmd == "new":
        body: dict[str, Any] = {"title": args.title, "description": args.description}
        body |= _given(args, "site", "priority", "impact", "urgency", "assignee")
        if args.ticket:
            body["tickets"] = [problems.ticket_ref(t) for t in args.ticket]
        return asyncio.run(problems.new(login, body, args.json))
    if cmd == "edit":
        changes = _given(args, "title", "description", "priority", "assignee", *TEXTS)
        return asyncio.run(problems.edit(login, args.ref, changes))
    if cmd == "link":
        return asyncio.run(problems.link(login, args.ref, list(args.tickets)))
    if cmd == "unlink":
        return asyncio.run(problems.unlink(login, args.ref, args.ticket))
    if cmd == "note":
        return asyncio.run(problems.add_note(login, args.ref, args.text))
    if cmd == "accept":
        return asyncio.run(problems.move(login, args.ref, {"status": "new"}))
    if cmd == "dismiss":
        return asyncio.run(
            problems.move(login, args.ref, {"status": "dismissed", "reason": args.reason})
        )
    move: dict[str, Any] = {"status": args.status, **_given(args, *TEXTS, "note")}
    if args.resolve_incidents:
        move["resolve_incidents"] = True
    if args.status == "dismissed" and "note" in move:
        move["reason"] = move.pop("note")
    return asyncio.run(problems.move(login, args.ref, move))
