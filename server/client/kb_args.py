"""The command lines of `fieldlink kb ...`: argparse only (building the parser
must not import the HTTP client), dispatched by `commands.dispatch`.

    fieldlink kb search TEXT [--any] [--state S] [--site S] [--tag T] [--limit N] [--json]
    fieldlink kb show KB-N [--version N] [--json]
    fieldlink kb new --title T [--symptom ..] [--cause ..] [--resolution ..] [--tag T ...]
                     [--visibility internal|site|public] [--site S] [--file FILE | --edit]
                     [--json]
    fieldlink kb submit|publish|return|archive|restore KB-N [--note TEXT]
    fieldlink kb from-ticket FL-N [--title T] [--visibility V]
"""

from __future__ import annotations

import argparse
from typing import Any

from server.client.argparsing import add_command, number
from server.client.config import Login

COMMANDS = frozenset({"kb"})
VISIBILITIES = ("internal", "site", "public")
ACTION_HELP = {
    "submit": "send a draft for review (kb:write)",
    "publish": "publish a draft or an article in review (kb:publish)",
    "return": "send an article in review back to draft (kb:publish)",
    "archive": "archive an article: it leaves search and suggestions (kb:publish)",
    "restore": "bring an archived article back as a draft (kb:publish)",
}
FILE_HELP = (
    "read the article from FILE (- for stdin): a first line `Title: ...`, optional lines "
    "`Tags: a, b` and `Visibility: site shop-12`, then sections headed `## Symptom`, "
    "`## Cause` and `## Resolution`; options given as well win"
)


_limit = number(int, lambda v: 1 <= v <= 200, "a number", "between 1 and 200")


def register(sub: Any) -> None:
    kb = add_command(
        sub,
        "kb",
        help="the knowledge base: search, show, write and publish articles",
        description="Knowledge-base articles (symptom, cause, resolution) that answer "
        "before a ticket is needed. KB-N is an article's number (KB-7, or just 7) or its id. "
        "You see what your roles allow: internal articles at HQ, a site's articles on that "
        "site, public ones everywhere; drafts only where you may write.",
        epilog="example:\n"
        "  fieldlink kb search receipt printer blank\n"
        "  fieldlink kb show KB-7\n"
        "  fieldlink kb new --title 'Receipt printer prints blank' \\\n"
        "      --symptom 'paper comes out empty' --resolution 'turn the roll over'\n"
        "  fieldlink kb new --file article.md\n"
        "  fieldlink kb new --edit --visibility site --site shop-12\n"
        "  fieldlink kb publish KB-7\n"
        "  fieldlink kb from-ticket FL-42",
    )
    ksub = kb.add_subparsers(dest="kb_command", required=True, metavar="ACTION")

    search = add_command(
        ksub,
        "search",
        help="search articles by words, best match first",
        description="Articles whose title, tags, symptom, cause or resolution hold every "
        "word (--any: one or more), best first, with the matched words marked. Without "
        "words: the articles you can see, latest change first.",
    )
    search.add_argument("text", metavar="TEXT", nargs="*", help="words to look for")
    search.add_argument("--any", action="store_true", help="match any word, not all")
    search.add_argument(
        "--state", metavar="S", help="draft, review, published, archived (comma list)"
    )
    search.add_argument("--site", metavar="S", help="only this site's articles")
    search.add_argument("--tag", metavar="T", help="only articles with this tag")
    search.add_argument(
        "--limit", type=_limit, default=20, metavar="N", help="at most N (default 20)"
    )
    search.add_argument("--json", action="store_true", help="print the API's JSON items")

    show = add_command(
        ksub,
        "show",
        help="an article: symptom, cause, resolution, links, votes",
        description="Print one article. With --version N, that earlier version "
        "(needs kb:write on the article).",
    )
    show.add_argument("ref", metavar="KB-N", help="article number or id")
    show.add_argument("--version", type=int, metavar="N", help="an earlier version")
    show.add_argument("--json", action="store_true", help="print the API's JSON")

    new = add_command(
        ksub,
        "new",
        help="write a draft article; prints its number alone on stdout",
        description="Write a draft article and print its number (KB-N) alone on stdout. "
        "Internal and public articles need kb:write on the global scope; a site article "
        "(--visibility site --site S) kb:write on that site.",
    )
    new.add_argument("--title", metavar="T", help="a one-line title")
    new.add_argument("--symptom", metavar="TEXT", help="what people see")
    new.add_argument("--cause", metavar="TEXT", help="why it happens")
    new.add_argument("--resolution", metavar="TEXT", help="what fixes it")
    new.add_argument(
        "--tag", action="append", default=None, metavar="T", help="a tag; repeat for more"
    )
    new.add_argument(
        "--visibility", choices=VISIBILITIES, help="who may read it (default internal)"
    )
    new.add_argument("--site", metavar="S", help="the site of a site article")
    source = new.add_mutually_exclusive_group()
    source.add_argument("--file", metavar="FILE", help=FILE_HELP)
    source.add_argument(
        "--edit",
        action="store_true",
        help="write it in $VISUAL or $EDITOR (else vi): a template in the --file format, "
        "filled with the options given; what you save is sent",
    )
    new.add_argument("--json", action="store_true", help="print the new article as JSON")

    for action, text in ACTION_HELP.items():
        step = add_command(
            ksub,
            action,
            help=text,
            description=f"{text[0].upper()}{text[1:]}. A move the article's state does not "
            "allow is refused (409) with the moves it does allow; exit status 1.",
        )
        step.add_argument("ref", metavar="KB-N", help="article number or id")
        step.add_argument("--note", default="", metavar="TEXT", help="a note for the audit trail")

    frm = add_command(
        ksub,
        "from-ticket",
        help="turn a resolved ticket into a draft article; prints its number",
        description="Write a draft from a resolved or closed ticket in one step: its title, "
        "the description as the symptom, the resolution text as the resolution, linked to "
        "the ticket. Internal when you write globally, else for the ticket's site.",
    )
    frm.add_argument("ticket", metavar="FL-N", help="ticket number or id")
    frm.add_argument("--title", metavar="T", help="a title other than the ticket's")
    frm.add_argument("--visibility", choices=VISIBILITIES, help="who may read it")


def dispatch(args: argparse.Namespace, login: Login) -> int:
    import asyncio

    from server.client import kb

    cmd = args.kb_command
    if cmd == "search":
        spec = kb.SearchSpec(
            text=" ".join(args.text),
            any_word=args.any,
            state=args.state,
            site=args.site,
            tag=args.tag,
            limit=args.limit,
            as_json=args.json,
        )
        return asyncio.run(kb.search(login, spec))
    if cmd == "show":
        return asyncio.run(kb.show(login, args.ref, args.version, args.json))
    if cmd == "new":
        body = kb.new_body(
            title=args.title,
            symptom=args.symptom,
            cause=args.cause,
            resolution=args.resolution,
            tags=args.tag,
            visibility=args.visibility,
            site=args.site,
            file=args.file,
            editor=args.edit,
        )
        return asyncio.run(kb.new(login, body, args.json))
    if cmd == "from-ticket":
        return asyncio.run(kb.from_ticket(login, args.ticket, args.title, args.visibility))
    return asyncio.run(kb.act(login, args.ref, cmd, args.note))
