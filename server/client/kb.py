"""Knowledge base: `fieldlink kb search|show|new|submit|publish|return|archive|
restore|from-ticket`. Thin shells around `/api/v1/kb`: build the request,
send it pinned, draw the answer with rich (HQ's text is never read as markup).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from server.client import render
from server.client.argparsing import numbered
from server.client.config import Login
from server.client.errors import UsageError
from server.client.http import Api
from server.client.tickets import ticket_ref

STATE_STYLE = {"draft": "yellow", "review": "cyan", "published": "green", "archived": "dim"}
SECTIONS = ("symptom", "cause", "resolution")
_HEADING = re.compile(r"^##\s*(symptom|cause|resolution)\s*$", re.IGNORECASE)
_FIELD = re.compile(r"^(title|tags|visibility)\s*:\s*(.*)$", re.IGNORECASE)


def article_ref(ref: str) -> str:
    """`kb-7`, `7` -> `KB-7`; ids pass through. Pure."""
    return numbered(ref, "KB", "an article number (KB-7)")


def parse_article(text: str) -> dict[str, Any]:
    """An article file: `Title:`, `Tags:`, `Visibility:` lines, then `## Symptom`,
    `## Cause`, `## Resolution` sections. Pure."""
    out: dict[str, Any] = {}
    section: str | None = None
    lines: dict[str, list[str]] = {}
    for line in text.splitlines():
        heading = _HEADING.match(line.strip())
        if heading:
            section = heading.group(1).lower()
            lines[section] = []
            continue
        if section is not None:
            lines[section].append(line)
            continue
        field = _FIELD.match(line.strip())
        if field:
            key, value = field.group(1).lower(), field.group(2).strip()
            if key == "title":
                out["title"] = value
            elif key == "tags":
                out["tags"] = [t.strip() for t in value.split(",") if t.strip()]
            else:
                words = value.split()
                if words:
                    out["visibility"] = words[0].lower()
                if len(words) > 1:
                    out["site"] = words[1]
        elif line.strip():
            raise UsageError(
                f"article file: {line.strip()[:40]!r} is before any `## Symptom`, `## Cause` "
                "or `## Resolution` heading and is not a Title:, Tags: or Visibility: line"
            )
    for key, body in lines.items():
        out[key] = "\n".join(body).strip()
    return out


TEMPLATE = """Title: {title}
Tags: {tags}
Visibility: {visibility}

## Symptom
{symptom}

## Cause
{cause}

## Resolution
{resolution}
"""


def edit_in_editor(start: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    """Open $VISUAL or $EDITOR (else vi) on an article template filled with
    what the options gave; the text as saved."""
    env = os.environ if environ is None else environ
    editor = env.get("VISUAL") or env.get("EDITOR") or "vi"
    visibility = start.get("visibility") or "internal"
    if start.get("site"):
        visibility += f" {start['site']}"
    text = TEMPLATE.format(
        title=start.get("title") or "",
        tags=", ".join(start.get("tags") or []),
        visibility=visibility,
        symptom=start.get("symptom") or "",
        cause=start.get("cause") or "",
        resolution=start.get("resolution") or "",
    )
    with tempfile.TemporaryDirectory(prefix="fieldlink-kb-") as tmp:
        path = Path(tmp) / "article.md"
        path.write_text(text, encoding="utf-8")
        try:
            done = subprocess.run([*shlex.split(editor), str(path)], check=False)
        except OSError as exc:
            raise UsageError(f"cannot start the editor {editor!r}: {exc}") from None
        if done.returncode != 0:
            raise UsageError(f"the editor {editor!r} exited with {done.returncode}; nothing sent")
        return path.read_text(encoding="utf-8")


def new_body(
    *,
    title: str | None,
    symptom: str | None,
    cause: str | None,
    resolution: str | None,
    tags: list[str] | None,
    visibility: str | None,
    site: str | None,
    file: str | None,
    editor: bool = False,
) -> dict[str, Any]:
    """The create request from options and/or an article file (options win), or
    from the editor (started with what the options gave; what is saved wins).
    Pure apart from reading the file or running the editor."""
    body: dict[str, Any] = {}
    if editor:
        given_start = {
            "title": title,
            "symptom": symptom,
            "cause": cause,
            "resolution": resolution,
            "tags": tags,
            "visibility": visibility,
            "site": site,
        }
        body = parse_article(edit_in_editor(given_start))
        title = symptom = cause = resolution = visibility = site = None
        tags = None
    elif file is not None:
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {file}: {exc}") from None
        body.update(parse_article(text))
    given = {
        "title": title,
        "symptom": symptom,
        "cause": cause,
        "resolution": resolution,
        "tags": tags,
        "visibility": visibility,
        "site": site,
    }
    body.update({k: v for k, v in given.items() if v is not None})
    if not str(body.get("title") or "").strip():
        raise UsageError("an article needs a title: --title T (or a Title: line in --file)")
    if body.get("visibility") == "site" and not body.get("site"):
        raise UsageError("a site article needs --site S")
    return body


@dataclass(frozen=True)
class SearchSpec:
    text: str
    any_word: bool
    state: str | None
    site: str | None
    tag: str | None
    limit: int
    as_json: bool


def marked(snippet: str) -> Text:
    """A snippet with HQ's « » marks drawn bold (the marks themselves dropped). Pure."""
    out = Text()
    for i, part in enumerate(re.split(r"[«»]", snippet)):
        out.append(part, style="bold" if i % 2 else "")
    return out


def results_table(items: list[dict[str, Any]]) -> Table:
    table = Table(header_style="bold")
    for name in ("number", "state", "visibility", "title", "votes"):
        table.add_column(name, no_wrap=name != "title")
    for a in items:
        scope = a["visibility"] + (f" {a['site']}" if a.get("site") else "")
        title = Text(a["title"])
        if a.get("snippet"):
            title.append("\n")
            title.append_text(marked(a["snippet"]))
        table.add_row(
            a["number"],
            Text(a["state"], style=STATE_STYLE.get(a["state"], "")),
            scope,
            title,
            f"+{a['helped']} -{a['not_helped']}",
        )
    return table


async def search(login: Login, spec: SearchSpec) -> int:
    params: dict[str, str] = {"limit": str(spec.limit)}
    if spec.text.strip():
        params["q"] = spec.text
    if spec.any_word:
        params["match"] = "any"
    for key in ("state", "site", "tag"):
        value = getattr(spec, key)
        if value:
            params[key] = value
    async with Api(login.url, login.fingerprint, login.token) as api:
        page = await api.get("/api/v1/kb", params)
    items = page.get("items") or []
    if spec.as_json:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        render.console(stderr=True).print("no articles match", markup=False, highlight=False)
        return 0
    render.console().print(results_table(items))
    return 0


def article_view(a: dict[str, Any]) -> RenderableType:
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    scope = a["visibility"] + (f" ({a['site']})" if a.get("site") else "")
    head.add_row("article", Text(f"{a['number']}  {a['title']}"))
    head.add_row("state", Text(a["state"], style=STATE_STYLE.get(a["state"], "")))
    head.add_row("visibility", Text(scope))
    if a.get("tags"):
        head.add_row("tags", Text(", ".join(a["tags"])))
    head.add_row("version", Text(str(a.get("version", ""))))
    if "author" in a:
        head.add_row("author", Text(a["author"] or "-"))
    if "helped" in a:
        head.add_row("votes", Text(f"helped {a['helped']}, did not help {a['not_helped']}"))
    parts: list[RenderableType] = [head]
    for key in SECTIONS:
        if a.get(key):
            parts.append(Text(f"\n{key.capitalize()}", style="bold underline"))
            parts.append(Text(a[key]))
    links = a.get("links") or []
    if links:
        parts.append(Text("\nLinks", style="bold underline"))
        for link in links:
            parts.append(Text(f"{link['kind']}: {link['label']}"))
    if a.get("allowed_actions"):
        parts.append(Text(f"\nnext: {', '.join(a['allowed_actions'])}", style="dim"))
    return Group(*parts)


async def show(login: Login, ref: str, version: int | None, as_json: bool) -> int:
    path = f"/api/v1/kb/{quote(article_ref(ref), safe='')}"
    async with Api(login.url, login.fingerprint, login.token) as api:
        if version is not None:
            data = await api.get(f"{path}/versions/{version}")
            article = await api.get(path)
            data = {**data, "number": article["number"], "state": article["state"]}
        else:
            data = await api.get(path)
    if as_json:
        print(json.dumps(data, indent=2))
        return 0
    render.console().print(article_view(data))
    return 0


async def new(login: Login, body: dict[str, Any], as_json: bool) -> int:
    async with Api(login.url, login.fingerprint, login.token) as api:
        article = await api.post("/api/v1/kb", body)
    if as_json:
        print(json.dumps(article, indent=2))
        return 0
    print(article["number"])
    print(f"draft {article['number']} written ({article['visibility']})", file=sys.stderr)
    return 0


async def act(login: Login, ref: str, action: str, note: str) -> int:
    async with Api(login.url, login.fingerprint, login.token) as api:
        article = await api.post(
            f"/api/v1/kb/{quote(article_ref(ref), safe='')}/transition",
            {"action": action, "note": note},
        )
    print(f"{article['number']}: {article['state']}")
    return 0


async def from_ticket(login: Login, ref: str, title: str | None, visibility: str | None) -> int:
    body: dict[str, Any] = {}
    if title:
        body["title"] = title
    if visibility:
        body["visibility"] = visibility
    async with Api(login.url, login.fingerprint, login.token) as api:
        article = await api.post(f"/api/v1/tickets/{quote(ticket_ref(ref), safe='')}/kb", body)
    print(article["number"])
    print(f"draft {article['number']} written from {ticket_ref(ref)}", file=sys.stderr)
    return 0
