"""The command lines of `fieldlink change ...`: argparse only (kept light:
building the parser must not import the HTTP client), dispatched by
`commands.dispatch`.

    fieldlink change list [--upcoming] [--state S] [--agent A] [--json]
    fieldlink change show CHG-N [--json]
    fieldlink change new (NAME [key=value ...] | --command 'CMD ARGS')
                  --title T --risk low|medium|high (--site S ... | --tag T ... | --agent A ...)
                  [--plan TEXT] [--backout-plan TEXT] [--backout NAME | --backout-command CMD]
                  [--pilot N | --pilot-agent A ...] [--gate 15m] [--threshold PCT]
                  [--batch N] [--approvals N] [--planned WHEN] [--json]
    fieldlink change approve CHG-N [--comment TEXT]
    fieldlink change reject CHG-N --comment TEXT
    fieldlink change start|cancel CHG-N
    fieldlink change review CHG-N --outcome successful|failed|rolled_back [--backout]
"""

from __future__ import annotations

import argparse
from typing import Any

from server.client.argparsing import add_command, number
from server.client.config import Login

COMMANDS = frozenset({"change"})
STATES = (
    "requested",
    "approved",
    "rejected",
    "cancelled",
    "in_progress",
    "review",
    "successful",
    "failed",
    "rolled_back",
)


def gate(text: str) -> float:
    """`--gate`: 0, seconds (`90s`), minutes (`15m`) or hours (`1h`) -> seconds."""
    from shared.durations import parse_duration

    if text.strip() in ("0", "0s", "0m"):
        return 0.0
    try:
        return parse_duration(text).total_seconds()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (e.g. 0, 90s, 15m, 1h)") from None


percent = number(
    lambda t: float(t.rstrip("%")), lambda v: 0 <= v <= 100, "a percentage", "between 0 and 100"
)
count = number(int, lambda v: v >= 1, "a number", "at least 1")


def register(sub: Any) -> None:
    change = add_command(
        sub,
        "change",
        help="changes: request, approve or reject, start (pilot, gate, rest), review",
        description="Planned work on machines. A change names what it runs (a catalog "
        "entry or a command) and where; approvers holding changes:approve decide (one "
        "refusal rejects; nobody approves their own); once approved it runs as jobs in "
        "stages: a pilot group, a health gate (every pilot item ok and no new alert on a "
        "pilot machine for the gate's time), then the rest, halting on its own when "
        "failures pass the threshold; then a person reviews it. CHG-N is the change's "
        "number (CHG-7, or just 7) or its id.",
        epilog="example:\n"
        "  fieldlink change new service.restart unit=cups --site shop-12 \\\n"
        "      --title 'Restart cups after the driver update' --risk low --gate 15m\n"
        "  fieldlink change new --command 'apt-get -y upgrade tzdata' --tag pos \\\n"
        "      --title 'tzdata' --risk medium --pilot 2 --threshold 10 --batch 50\n"
        "  fieldlink change approve CHG-7 --comment 'ok for tonight'\n"
        "  fieldlink change start CHG-7\n"
        "  fieldlink change review CHG-7 --outcome successful",
    )
    csub = change.add_subparsers(dest="change_command", required=True, metavar="ACTION")

    listing = add_command(
        csub,
        "list",
        help="changes you can see: number, state, risk, sites, planned start, title",
        description="The changes touching your sites, newest first (with --upcoming: those "
        "not yet done, by planned start: what a site should expect on its machines).",
    )
    listing.add_argument(
        "--upcoming", action="store_true", help="only requested, approved and running ones"
    )
    listing.add_argument("--state", choices=STATES, help="only changes in this state")
    listing.add_argument("--agent", metavar="ID", help="only changes touching this agent")
    listing.add_argument("--json", action="store_true", help="print the API's JSON items")

    show = add_command(
        csub,
        "show",
        help="a change: plan, backout, approvals, stages with job progress, history",
        description="Print one change: its fields, plan and backout plan, approvals, the "
        "stages it ran (each a job, with its item counts) and its history.",
    )
    show.add_argument("ref", metavar="CHG-N", help="change number or id")
    show.add_argument("--json", action="store_true", help="print the API's JSON")

    new = add_command(
        csub,
        "new",
        intermixed=True,
        help="request a change; prints its number alone on stdout",
        description="Request a change and print its number (CHG-N) alone on stdout. It "
        "runs a catalog entry NAME with key=value parameters, or a plain command "
        "(--command, run without a shell; needs exec:run and the machines' allow_exec). "
        "You need changes:request and the action's own permission on every targeted site.",
    )
    new.add_argument("name", metavar="NAME", nargs="?", help="catalog entry, e.g. service.restart")
    new.add_argument("params", metavar="key=value", nargs="*", help="the entry's parameters")
    new.add_argument(
        "--command", dest="cmdline", metavar="CMD", help="a plain command instead of NAME"
    )
    new.add_argument("--title", required=True, metavar="T", help="a one-line title")
    new.add_argument(
        "--risk", required=True, choices=("low", "medium", "high"), help="the change's risk"
    )
    new.add_argument("--description", default="", metavar="TEXT", help="why, and more detail")
    new.add_argument("--plan", default="", metavar="TEXT", help="the implementation plan")
    new.add_argument("--backout-plan", default="", metavar="TEXT", help="how to undo it")
    new.add_argument("--backout", metavar="NAME", help="a catalog entry that undoes it")
    new.add_argument("--backout-command", metavar="CMD", help="a plain command that undoes it")
    new.add_argument(
        "--site", action="append", default=[], metavar="S", help="target a site; repeat"
    )
    new.add_argument(
        "--tag", action="append", default=[], metavar="T", help="only agents with this tag"
    )
    new.add_argument(
        "--agent", action="append", default=[], metavar="A", help="target this agent; repeat"
    )
    new.add_argument(
        "--pilot", type=count, default=1, metavar="N", help="machines in the pilot (default 1)"
    )
    new.add_argument(
        "--pilot-agent", action="append", default=[], metavar="A", help="a named pilot machine"
    )
    new.add_argument(
        "--gate",
        type=gate,
        default=900.0,
        metavar="TIME",
        help="health gate after the pilot: 0, 90s, 15m (default), 1h",
    )
    new.add_argument(
        "--threshold",
        type=percent,
        default=0.0,
        metavar="PCT",
        help="halt when failed items pass this %% of a stage (default 0)",
    )
    new.add_argument("--batch", type=count, metavar="N", help="run the rest N machines at a time")
    new.add_argument(
        "--approvals", type=count, default=1, metavar="N", help="approvals needed (default 1)"
    )
    new.add_argument("--planned", metavar="WHEN", help="planned start: an RFC 3339 time or a date")
    new.add_argument("--timeout", type=float, metavar="SECONDS", help="per-machine time limit")
    new.add_argument("--json", action="store_true", help="print the new change as JSON instead")

    approve = add_command(
        csub,
        "approve",
        help="approve a requested change (needs changes:approve; not your own)",
        description="Approve a requested change. When it has the approvals it needs it "
        "becomes approved and can be started. Your own change, a second decision or a "
        "change not in `requested` is refused (exit status 1).",
    )
    approve.add_argument("ref", metavar="CHG-N", help="change number or id")
    approve.add_argument("--comment", default="", metavar="TEXT", help="a note for the record")

    reject = add_command(
        csub,
        "reject",
        help="reject a requested change with a reason (one refusal rejects it)",
        description="Reject a requested change. One refusal rejects it for good.",
    )
    reject.add_argument("ref", metavar="CHG-N", help="change number or id")
    reject.add_argument("--comment", required=True, metavar="TEXT", help="why")

    start = add_command(
        csub,
        "start",
        help="start an approved change: pilot now, the rest after the health gate",
        description="Start an approved change. The pilot job runs at once; HQ then holds "
        "the health gate and runs the rest on its own, halting on failures. Needs the "
        "action's run permission on every site. `fieldlink change show` follows it.",
    )
    start.add_argument("ref", metavar="CHG-N", help="change number or id")

    cancel = add_command(
        csub,
        "cancel",
        help="cancel a change; a running one halts and goes to review",
        description="Cancel a change not yet started; a running one halts (its queued "
        "items are cancelled) and moves to review.",
    )
    cancel.add_argument("ref", metavar="CHG-N", help="change number or id")
    cancel.add_argument("--reason", default="", metavar="TEXT", help="why")

    review = add_command(
        csub,
        "review",
        help="close the review: successful, failed or rolled_back",
        description="Close a change in review with its outcome. A halted change cannot be "
        "successful. With rolled_back, --backout runs the change's backout action on the "
        "machines it ran on.",
    )
    review.add_argument("ref", metavar="CHG-N", help="change number or id")
    review.add_argument("--outcome", required=True, choices=("successful", "failed", "rolled_back"))
    review.add_argument("--comment", default="", metavar="TEXT", help="the review's notes")
    review.add_argument(
        "--backout", action="store_true", help="with rolled_back: run the backout action"
    )


def dispatch(args: argparse.Namespace, login: Login) -> int:
    import asyncio

    from server.client import changes

    cmd = args.change_command
    if cmd == "list":
        return asyncio.run(
            changes.list_changes(login, args.upcoming, args.state, args.agent, args.json)
        )
    if cmd == "show":
        return asyncio.run(changes.show(login, args.ref, args.json))
    if cmd == "new":
        return asyncio.run(changes.new(login, args))
    if cmd == "approve":
        return asyncio.run(changes.act(login, args.ref, "approve", {"comment": args.comment}))
    if cmd == "reject":
        return asyncio.run(changes.act(login, args.ref, "reject", {"comment": args.comment}))
    if cmd == "start":
        return asyncio.run(changes.act(login, args.ref, "start", None))
    if cmd == "cancel":
        return asyncio.run(changes.act(login, args.ref, "cancel", {"reason": args.reason}))
    body = {"outcome": args.outcome, "comment": args.comment, "run_backout": args.backout}
    return asyncio.run(changes.act(login, args.ref, "review", body))
