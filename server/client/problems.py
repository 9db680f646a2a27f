"""Problem records: `fieldlink problem list|show|new|edit|link|unlink|status|
note|accept|dismiss`. Thin shells around `/api/v1/problems`: build the request,
send it pinned, draw the answer (problemview.py). HQ's refusals (409 naming
the allowed statuses, 422 naming the missing text) reach the person through
`commands.describe` with exit status 1.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from server.client import problemview, render
from server.client.argparsing import numbered
from server.client.config import Login
from server.client.errors import UsageError
from server.client.http import Api
from server.client.tickets import ticket_ref

PAGE = 200
STATUSES = ("proposed", "new", "investigating", "known_error", "resolved", "closed", "dismissed")

__all__ = ["ticket_ref"]


def problem_ref(ref: str) -> str:
    """`prb-7`, `7` -> `PRB-7`; ids pass through. Pure."""
    return numbered(ref, "PRB", "a problem number (PRB-7)")


def status_filter(text: str) -> str:
    """`--status`: a status, a comma list of them, or `open`. Pure."""
    words = [w.strip().lower().replace("-", "_") for w in text.split(",") if w.strip()]
    if words == ["open"]:
        return "open"
    unknown = [w for w in words if w not in STATUSES]
    if not words or unknown:
        raise UsageError(
            f"--status {text!r}: not a status; use open or one or more of {', '.join(STATUSES)}"
        )
    return ",".join(dict.fromkeys(words))


def _path(ref: str, suffix: str = "") -> str:
    return f"/api/v1/problems/{quote(problem_ref(ref), safe='')}{suffix}"


@dataclass(frozen=True)
class ListSpec:
    status: str | None
    site: str | None
    mine: bool
    limit: int
    as_json: bool


async def list_problems(login: Login, spec: ListSpec) -> int:
    params: dict[str, str] = {"limit": str(min(spec.limit, PAGE))}
    if spec.status:
        params["status"] = status_filter(spec.status)
    if spec.site:
        params["site"] = spec.site
    if spec.mine:
        params["assignee"] = "me"
    async with Api(login.url, login.fingerprint, login.token) as api:
        items: list[dict[str, Any]] = await api.pages("/api/v1/problems", params, limit=spec.limit)
    if spec.as_json:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        render.console(stderr=True).print("no problems match", markup=False, highlight=False)
        return 0
    render.console().print(problemview.problems_table(items))
    return 0


async def show(login: Login, ref: str, as_json: bool) -> int:
    async with Api(login.url, login.fingerprint, login.token) as api:
        problem = await api.get(_path(ref))
    if as_json:
        print(json.dumps(problem, indent=2))
        return 0
    render.console().print(problemview.problem_detail(problem))
    return 0


async def new(login: Login, body: dict[str, Any], as_json: bool) -> int:
    async with Api(login.url, login.fingerprint, login.token) as api:
        problem = await api.post("/api/v1/problems", body)
    if as_json:
        print(json.dumps(problem, indent=2))
        return 0
    print(problem["number"])
    where = problem.get("site") or "HQ-wide"
    count = problem.get("ticket_count", 0)
    print(
        f"opened {problem['number']}: {problem.get('priority')} {where}, {count} incident(s)",
        file=sys.stderr,
    )
    return 0


async def edit(login: Login, ref: str, changes: dict[str, Any]) -> int:
    if not changes:
        raise UsageError("nothing to change: give --title, --workaround, --root-cause, ...")
    async with Api(login.url, login.fingerprint, login.token) as api:
        problem = await api.request("PATCH", _path(ref), json_body=changes)
    print(f"{problem['number']}: changed {', '.join(sorted(changes))}")
    return 0


async def link(login: Login, ref: str, refs: list[str]) -> int:
    async with Api(login.url, login.fingerprint, login.token) as api:
        problem: dict[str, Any] = {}
        for t in refs:
            problem = await api.post(_path(ref, "/tickets"), {"ticket": ticket_ref(t)})
    numbers = ", ".join(str(t.get("number")) for t in problem.get("tickets") or [])
    print(f"{problem['number']}: {problem.get('ticket_count', 0)} incident(s): {numbers}")
    return 0


async def unlink(login: Login, ref: str, ticket: str) -> int:
    async with Api(login.url, login.fingerprint, login.token) as api:
        problem = await api.request(
            "DELETE", _path(ref, f"/tickets/{quote(ticket_ref(ticket), safe='')}")
        )
    print(f"{problem['number']}: {ticket_ref(ticket)} unlinked")
    return 0


async def move(login: Login, ref: str, body: dict[str, Any]) -> int:
    async with Api(login.url, login.fingerprint, login.token) as api:
        problem = await api.post(_path(ref, "/transition"), body)
    change = next(
        (e for e in reversed(problem.get("history") or []) if e.get("kind") == "state"), None
    )
    data = change.get("data") if change else None
    before = f"{data.get('from')} -> " if isinstance(data, dict) else ""
    print(f"{problem['number']}: {before}{problem['status']}")
    allowed = problem.get("allowed_statuses") or []
    if allowed:
        print(f"  next: {', '.join(allowed)}", file=sys.stderr)
    return 0


async def add_note(login: Login, ref: str, text: str) -> int:
    if text == "-":
        text = sys.stdin.read()
    if not text.strip():
        raise UsageError("the note is empty")
    async with Api(login.url, login.fingerprint, login.token) as api:
        problem = await api.post(_path(ref, "/notes"), {"body": text})
    print(f"{problem['number']}: note added")
    return 0
