"""Changes: `fieldlink change list|show|new|approve|reject|start|cancel|review`.

Thin shells around `/api/v1/changes`: build the request, send it pinned, draw
the answer. A refusal (your own change, a state that does not allow the step)
reaches the person through `commands.describe` with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any
from urllib.parse import quote

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from server.client import params as kv
from server.client import render
from server.client.argparsing import numbered
from server.client.config import Login
from server.client.errors import UsageError
from server.client.http import Api
from server.client.remote import list_agents, pick_agent, schema_of
from server.client.tickets import time_bound

STATE_STYLE = {
    "requested": "bold",
    "approved": "cyan",
    "in_progress": "cyan",
    "review": "yellow",
    "successful": "green",
    "failed": "red",
    "rolled_back": "red",
    "rejected": "dim",
    "cancelled": "dim",
}
RISK_STYLE = {"high": "bold red", "medium": "yellow", "low": ""}


def change_ref(ref: str) -> str:
    """`chg-7`, `7` -> `CHG-7`; ids pass through. Pure."""
    return numbered(ref, "CHG", "a change number (CHG-7)")


def _path(ref: str, suffix: str = "") -> str:
    return f"/api/v1/changes/{quote(change_ref(ref), safe='')}{suffix}"


def changes_table(items: list[dict[str, Any]]) -> Table:
    table = Table(header_style="bold")
    for name in ("change", "state", "risk", "sites", "machines", "planned"):
        table.add_column(name, no_wrap=True)
    table.add_column("title")
    for item in items:
        state = str(item.get("state", ""))
        if item.get("stage"):
            state = f"{state} ({item['stage']})"
        table.add_row(
            Text(str(item.get("number", ""))),
            Text(state, style=STATE_STYLE.get(str(item.get("state")), "")),
            Text(str(item.get("risk", "")), style=RISK_STYLE.get(str(item.get("risk")), "")),
            Text(", ".join(item.get("sites") or [])),
            Text(str(item.get("agent_count", ""))),
            Text(str(item.get("planned_start") or "-")),
            Text(str(item.get("title", "")), no_wrap=True, overflow="ellipsis"),
        )
    return table


def _action(spec: dict[str, Any] | None) -> str:
    if not spec:
        return "-"
    params = spec.get("params") or {}
    if spec.get("name") == "exec" and isinstance(params.get("argv"), list):
        return "exec: " + shlex.join(str(a) for a in params["argv"])
    words = " ".join(f"{k}={v}" for k, v in params.items())
    return f"{spec.get('name')} {words}".strip()


def change_detail(c: dict[str, Any]) -> RenderableType:
    """One change as the engineer reads it. Pure."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    state = str(c.get("state"))
    if c.get("stage"):
        state += f" ({c['stage']})"
    approved = sum(1 for a in c.get("approvals", []) if a["decision"] == "approve")
    rows = [
        ("change", f"{c.get('number')}  {c.get('title')}"),
        ("state", state),
        ("risk", str(c.get("risk"))),
        ("requester", str(c.get("requester"))),
        ("action", _action(c.get("action"))),
        ("backout action", _action(c.get("backout_action"))),
        ("sites", ", ".join(c.get("sites") or [])),
        (
            "machines",
            f"{c.get('agent_count')} (pilot: "
            + (
                ", ".join(
                    str(a.get("hostname") or a["id"]) for a in c.get("agents", []) if a.get("pilot")
                )
                or f"{c.get('pilot_size')} at start"
            )
            + ")",
        ),
        (
            "stages",
            f"gate {float(c.get('gate_seconds') or 0):g}s, halt above "
            f"{float(c.get('failure_threshold') or 0):g}% failed"
            + (f", batches of {c['batch_size']}" if c.get("batch_size") else ""),
        ),
        (
            "approvals",
            f"{approved} of {c.get('approvals_required')} needed",
        ),
        ("planned start", str(c.get("planned_start") or "-")),
    ]
    if c.get("halted"):
        rows.append(("halted", str(c.get("halt_reason"))))
    if c.get("outcome"):
        rows.append(("outcome", f"{c['outcome']}: {c.get('review_comment') or ''}"))
    for key, value in rows:
        grid.add_row(key, Text(value))
    parts: list[RenderableType] = [grid]
    for title, key in (
        ("plan", "plan"),
        ("backout plan", "backout_plan"),
        ("description", "description"),
    ):
        if c.get(key):
            parts += [Text(""), Text(title, style="bold"), Text(str(c[key]))]
    if c.get("approvals"):
        table = Table(title="approvals", header_style="bold")
        for name in ("approver", "decision", "at", "comment"):
            table.add_column(name)
        for a in c["approvals"]:
            table.add_row(
                Text(a["approver"]),
                Text(a["decision"]),
                Text(str(a["at"])),
                Text(a.get("comment") or ""),
            )
        parts += [Text(""), table]
    if c.get("stages"):
        table = Table(title="stages", header_style="bold")
        for name in ("stage", "job", "machines", "status", "items"):
            table.add_column(name)
        for s in c["stages"]:
            counts = ", ".join(f"{k} {v}" for k, v in sorted((s.get("counts") or {}).items()))
            table.add_row(
                Text(s["stage"]),
                Text(s["job_id"]),
                Text(str(s["agents"])),
                Text(s["status"]),
                Text(counts),
            )
        parts += [Text(""), table]
    if c.get("history"):
        table = Table(title="history", header_style="bold")
        for name in ("at", "who", "what", ""):
            table.add_column(name)
        for e in c["history"]:
            table.add_row(
                Text(str(e["at"])),
                Text(e.get("actor") or "HQ"),
                Text(e["kind"]),
                Text(e.get("body") or ""),
            )
        parts += [Text(""), table]
    return Group(*parts)


async def list_changes(
    login: Login, upcoming: bool, state: str | None, agent: str | None, as_json: bool
) -> int:
    query: dict[str, str] = {}
    if upcoming:
        query["upcoming"] = "true"
    if state:
        query["state"] = state
    if agent:
        query["agent"] = agent
    async with Api(login.url, login.fingerprint, login.token) as api:
        page = await api.get("/api/v1/changes", query)
    items = page.get("items") or []
    if as_json:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        render.console(stderr=True).print("no changes match", markup=False, highlight=False)
        return 0
    render.console().print(changes_table(items))
    return 0


async def show(login: Login, ref: str, as_json: bool) -> int:
    async with Api(login.url, login.fingerprint, login.token) as api:
        change = await api.get(_path(ref))
    if as_json:
        print(json.dumps(change, indent=2))
        return 0
    render.console().print(change_detail(change))
    return 0


def _command(text: str, flag: str) -> dict[str, Any]:
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    if not argv:
        raise UsageError(f"{flag} is empty")
    return {"name": "exec", "params": {"argv": argv}}


async def new(login: Login, args: argparse.Namespace) -> int:
    if bool(args.name) == bool(args.cmdline):
        raise UsageError("name what the change runs: a catalog entry NAME or --command 'CMD'")
    if args.cmdline and args.params:
        raise UsageError("key=value parameters go with a catalog entry, not --command")
    if args.backout and args.backout_command:
        raise UsageError("--backout or --backout-command, not both")
    if not (args.site or args.tag or args.agent):
        raise UsageError("name where it runs: --site, --tag or --agent")
    body: dict[str, Any] = {
        "title": args.title,
        "risk": args.risk,
        "description": args.description,
        "plan": args.plan,
        "backout_plan": args.backout_plan,
        "pilot_size": args.pilot,
        "gate_seconds": args.gate,
        "failure_threshold": args.threshold,
        "approvals_required": args.approvals,
    }
    if args.batch:
        body["batch_size"] = args.batch
    if args.timeout:
        body["timeout"] = args.timeout
    if args.planned:
        body["planned_start"] = time_bound(args.planned, end=False)
    async with Api(login.url, login.fingerprint, login.token) as api:
        visible = await list_agents(api)
        target: dict[str, Any] = {}
        if args.site:
            target["sites"] = list(args.site)
        if args.tag:
            target["tags"] = list(args.tag)
        if args.agent:
            target["agent_ids"] = list(
                dict.fromkeys(str(pick_agent(visible, ref)["id"]) for ref in args.agent)
            )
        if args.pilot_agent:
            body["pilot_agent_ids"] = list(
                dict.fromkeys(str(pick_agent(visible, ref)["id"]) for ref in args.pilot_agent)
            )
        body["target"] = target
        if args.cmdline:
            body["action"] = _command(args.cmdline, "--command")
        else:
            sample = next(
                (
                    a
                    for a in visible
                    if a.get("status") == "online" and (not args.site or a.get("site") in args.site)
                ),
                None,
            )
            schema = None
            if sample is not None:
                schema = schema_of(
                    await api.get(f"/api/v1/agents/{sample['id']}/catalog"), args.name
                )
            body["action"] = {
                "name": args.name,
                "params": kv.coerce(kv.split_pairs(list(args.params)), schema),
            }
        if args.backout_command:
            body["backout_action"] = _command(args.backout_command, "--backout-command")
        elif args.backout:
            body["backout_action"] = {"name": args.backout, "params": {}}
        change = await api.post("/api/v1/changes", body)
    if args.json:
        print(json.dumps(change, indent=2))
        return 0
    print(change["number"])
    print(
        f"requested {change['number']}: {change['risk']} risk, {change['agent_count']} "
        f"machine(s); waiting for {change['approvals_required']} approval(s)",
        file=sys.stderr,
    )
    return 0


async def act(login: Login, ref: str, step: str, body: dict[str, Any] | None) -> int:
    async with Api(login.url, login.fingerprint, login.token) as api:
        change = await api.post(_path(ref, f"/{step}"), body)
    state = str(change["state"])
    if change.get("stage"):
        state += f" ({change['stage']})"
    print(f"{change['number']}: {state}")
    if change.get("halt_reason"):
        print(f"  halted: {change['halt_reason']}", file=sys.stderr)
    return 0
