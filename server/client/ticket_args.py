"""The command lines of `fieldlink tickets`, `fieldlink ticket ...` and
`fieldlink kpi`: argparse only (kept light: building the parser must not
import the HTTP client), dispatched by `commands.dispatch`.

    fieldlink tickets [--site S] [--status S] [--mine] [--limit N] [--json]
    fieldlink ticket show FL-N [--json]
    fieldlink ticket new --site S --title T [--agent A] [--priority P2] [--type incident]
    fieldlink ticket ack|start|wait|resolve|close|reopen|cancel FL-N
                  [--reason ...] [--note ...] [--code CODE]
    fieldlink ticket comment FL-N TEXT [--internal]
    fieldlink kpi [--site S] [--engineer U] [--from T] [--to T] [--group-by G] [--json]
    fieldlink report [--site S] --period P [--format pdf|html|json] [--output FILE] [--lang L]
"""

from __future__ import annotations

import argparse
from typing import Any

from server.client.argparsing import add_command, count, level, priority
from server.client.config import Login

COMMANDS = frozenset({"tickets", "ticket", "kpi", "report"})
TYPES = ("incident", "service_request", "problem", "change")
ACTION_HELP = {
    "ack": "acknowledge a new ticket",
    "start": "start working on it (in_progress)",
    "wait": "park it, pausing its SLA clocks: --reason on_site|on_requester|on_vendor",
    "resolve": "resolve it: --note is the resolution text, --code the resolution code",
    "close": "close a resolved ticket",
    "reopen": "reopen a resolved ticket (within 7 days of resolution)",
    "cancel": "cancel an open ticket",
}
STATUS_HELP = (
    "a status (new, acknowledged, in_progress, waiting, resolved, closed, cancelled), "
    "a comma list of them, or open (every status not yet resolved)"
)


def register(sub: Any) -> None:
    tickets = add_command(
        sub,
        "tickets",
        help="list tickets: number, priority, status, SLA, site, assignee, title",
        description="The tickets you can see, newest first, as a table: number, priority, "
        "status, an SLA badge (the worst of the ticket's clocks: breached, missed, warning, "
        "paused, ok with the time left to the next due, or met), site, assignee and title.",
        epilog="example:\n  fieldlink tickets --status open --mine\n"
        "  fieldlink tickets --site shop-12 --status new,acknowledged\n"
        "  fieldlink tickets --json | jq '.[].number'",
    )
    tickets.add_argument("--site", metavar="S", help="only this site's tickets")
    tickets.add_argument("--status", metavar="S", help=STATUS_HELP)
    tickets.add_argument(
        "--mine", action="store_true", help="only tickets assigned to you or asked by you"
    )
    tickets.add_argument(
        "--limit", type=count, default=50, metavar="N", help="at most N tickets (default 50)"
    )
    tickets.add_argument("--json", action="store_true", help="print the API's JSON items")

    ticket = add_command(
        sub,
        "ticket",
        help="show, open, move, or comment on one ticket",
        description="Work one ticket. FL-N is the ticket's number (FL-12, or just 12) or its id.",
        epilog="example:\n"
        "  fieldlink ticket new --site shop-12 --title 'till 3 freezes' --priority P2\n"
        "  fieldlink ticket ack FL-12\n"
        "  fieldlink ticket wait FL-12 --reason on_vendor --note 'RMA 4411'\n"
        "  fieldlink ticket resolve FL-12 --note 'replaced the cable' --code fixed\n"
        "  fieldlink ticket comment FL-12 'new cable is on its way' --internal",
    )
    tsub = ticket.add_subparsers(dest="ticket_command", required=True, metavar="ACTION")

    show = add_command(
        tsub,
        "show",
        help="a ticket's fields, SLA clocks and timeline",
        description="Print one ticket: its fields, its SLA clocks with their due times, and "
        "its timeline (comments, state changes, runs with their result ids, sessions, "
        "alerts, SLA warnings and breaches).",
    )
    show.add_argument("ref", metavar="FL-N", help="ticket number or id")
    show.add_argument("--json", action="store_true", help="print the API's JSON")

    new = add_command(
        tsub,
        "new",
        help="open a ticket; prints its number alone on stdout",
        description="Open a ticket on a site and print its number (FL-N) alone on stdout, "
        "so scripts can keep it: T=$(fieldlink ticket new ...). The priority comes from "
        "impact x urgency unless --priority sets it.",
    )
    new.add_argument("--site", required=True, metavar="S", help="the site it is about")
    new.add_argument("--title", required=True, metavar="T", help="a one-line title")
    new.add_argument("--description", default="", metavar="TEXT", help="more detail")
    new.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="A",
        help="link this machine (agent id or unique hostname on the site); repeat for more",
    )
    new.add_argument("--priority", type=priority, metavar="P2", help="P1-P4 (overrides)")
    new.add_argument("--impact", type=level, metavar="1-3", help="impact, 1 high .. 3 low")
    new.add_argument("--urgency", type=level, metavar="1-3", help="urgency, 1 high .. 3 low")
    new.add_argument(
        "--type", default="incident", choices=TYPES, help="ticket type (default incident)"
    )
    new.add_argument("--json", action="store_true", help="print the new ticket as JSON instead")

    for action, text in ACTION_HELP.items():
        step = add_command(
            tsub,
            action,
            help=text,
            description=f"{text[0].upper()}{text[1:]}. An action the ticket's status does not "
            "allow is refused (409) with the actions it does allow; exit status 1.",
        )
        step.add_argument("ref", metavar="FL-N", help="ticket number or id")
        step.add_argument(
            "--reason",
            metavar="WHY",
            help="wait: on_site, on_requester or on_vendor; other actions: a note",
        )
        step.add_argument(
            "--note", metavar="TEXT", help="a note on the timeline (resolve: the resolution text)"
        )
        if action == "resolve":
            step.add_argument(
                "--code", metavar="CODE", help="resolution code (default fixed), e.g. workaround"
            )

    comment = add_command(
        tsub,
        "comment",
        help="comment on a ticket (public, or --internal for IT only)",
        description="Add a comment to the ticket's timeline. Public comments are seen by the "
        "requester (the first one counts as the first response); --internal notes are for IT.",
    )
    comment.add_argument("ref", metavar="FL-N", help="ticket number or id")
    comment.add_argument("text", metavar="TEXT", help="the comment; - reads it from stdin")
    comment.add_argument("--internal", action="store_true", help="visible to IT only")

    kpi = add_command(
        sub,
        "kpi",
        help="service KPIs: response and resolution times, SLA compliance, CSAT",
        description="Service KPIs over the tickets created in a period: time to acknowledge, "
        "to first response and to resolve (mean / median / p90, resolve without paused "
        "time), SLA compliance per clock, tier-1 resolution, escalation and reopen rates, "
        "CSAT and its response rate, alerts per alert ticket, auto-resolved share, and the "
        "deflection rate (help requests a knowledge-base article solved / requests asked).",
        epilog="Times: a date (2026-11-01, a whole day in UTC; --to includes it), an RFC 3339 "
        "time (2026-11-01T08:00:00Z), or a duration back from now (30d, 12h).\n\n"
        "example:\n  fieldlink kpi --site shop-12 --from 2026-11-01 --to 2026-11-30\n"
        "  fieldlink kpi --from 30d --group-by engineer",
    )
    kpi.add_argument("--site", metavar="S", help="only this site's tickets")
    kpi.add_argument("--engineer", metavar="USER", help="only tickets assigned to this user")
    kpi.add_argument("--from", dest="start", metavar="WHEN", help="created at or after")
    kpi.add_argument("--to", dest="end", metavar="WHEN", help="created before (dates: through)")
    kpi.add_argument(
        "--group-by",
        choices=("site", "engineer", "priority", "week"),
        help="one column per site, engineer, priority or ISO week",
    )
    kpi.add_argument("--json", action="store_true", help="print the API's JSON report")

    report = add_command(
        sub,
        "report",
        help="review report of a site or of HQ for a month or week, as PDF, HTML or JSON",
        description="The review report of one site (--site) or of HQ (every site you read "
        "KPIs on): KPIs of the period against their targets, the trend over the period and "
        "the five before it (tickets opened and resolved, SLA compliance, MTTR), tickets per "
        "day, the top problems by linked incidents, changes and their success rate, CSAT "
        "with the requesters' comments, and the deflection rate. Written to a file "
        "(report-SITE-PERIOD.pdf by default; HQ's is report-HQ-PERIOD.pdf); the file's "
        "name is printed.",
        epilog="Periods (UTC): 2026-11 (a month), 2026-W47 (an ISO week), "
        "2026-11-01..2026-11-15 (days, both included).\n\n"
        "example:\n  fieldlink report --site shop-12 --period 2026-11\n"
        "  fieldlink report --period 2026-W47 --format html --output hq-week47.html\n"
        "  fieldlink report --site shop-12 --period 2026-11 --format json --output -",
    )
    report.add_argument("--site", metavar="S", help="the site; without it: the HQ report")
    report.add_argument("--period", metavar="P", required=True, help="2026-11, 2026-W47 or A..B")
    report.add_argument(
        "--format", choices=("pdf", "html", "json"), default="pdf", help="default pdf"
    )
    report.add_argument(
        "--output",
        metavar="FILE",
        help="where to write it (- for stdout); default "
        "report-SITE-PERIOD.EXT in the current directory",
    )
    report.add_argument(
        "--lang", choices=("en", "ko"), default="en", help="language of the PDF or HTML"
    )


def dispatch(args: argparse.Namespace, login: Login) -> int:
    import asyncio

    from server.client import tickets

    if args.command == "tickets":
        spec = tickets.ListSpec(args.site, args.status, args.mine, args.limit, args.json)
        return asyncio.run(tickets.list_tickets(login, spec))
    if args.command == "report":
        from server.client import reports

        report_spec = reports.ReportSpec(
            args.site, args.period, args.format, args.output, args.lang
        )
        return asyncio.run(reports.report(login, report_spec))
    if args.command == "kpi":
        kpi_spec = tickets.KpiSpec(
            args.site, args.engineer, args.start, args.end, args.group_by, args.json
        )
        return asyncio.run(tickets.kpis(login, kpi_spec))
    cmd = args.ticket_command
    if cmd == "show":
        return asyncio.run(tickets.show(login, args.ref, args.json))
    if cmd == "new":
        new_spec = tickets.NewSpec(
            site=args.site,
            title=args.title,
            description=args.description,
            type=args.type,
            priority=args.priority,
            impact=args.impact,
            urgency=args.urgency,
            agents=list(args.agent),
            as_json=args.json,
        )
        return asyncio.run(tickets.new(login, new_spec))
    if cmd == "comment":
        return asyncio.run(tickets.comment(login, args.ref, args.text, args.internal))
    body = tickets.transition_body(cmd, args.reason, args.note, getattr(args, "code", None))
    return asyncio.run(tickets.act(login, args.ref, body))
