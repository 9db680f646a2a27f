"""systemd service diagnostics: one unit's status, and the failed units.

Unit names are validated (`Unit`: letters, digits and `_.:@\\-`, never a
leading `-`) and passed after `--` to systemctl. Where systemd is not PID 1,
each entry says so instead of running systemctl.
"""

from __future__ import annotations

from typing import Any

from agent.catalog.base import (
    KIB,
    Context,
    Entry,
    NoParams,
    Outcome,
    Params,
    Problem,
    Unit,
    no_systemd_reason,
    render_table,
    systemd_running,
    table,
)
from agent.runner import describe_exit

_PROPERTIES = [
    "Id",
    "Description",
    "LoadState",
    "ActiveState",
    "SubState",
    "UnitFileState",
    "MainPID",
    "ActiveEnterTimestamp",
    "NRestarts",
    "Result",
]


class UnitParams(Params):
    unit: Unit


def require_systemd(what: str) -> None:
    if not systemd_running():
        raise Problem(no_systemd_reason(what))


async def unit_properties(ctx: Context, unit: str) -> dict[str, Any]:
    """A unit's main properties from `systemctl show` (snake_case keys)."""
    argv = ["systemctl", "show", "--no-pager", "--property=" + ",".join(_PROPERTIES), "--", unit]
    res = await ctx.exec(argv, stream=False)
    if res.exit_code != 0:
        raise Problem(
            f"systemctl show {unit}: {res.stderr.strip() or describe_exit(res.exit_code)}"
        )
    props: dict[str, Any] = {}
    for line in res.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[_snake(key)] = value
    if "main_pid" in props:
        props["main_pid"] = int(props["main_pid"] or 0) or None
    if "n_restarts" in props and props["n_restarts"].isdigit():
        props["n_restarts"] = int(props["n_restarts"])
    return props


def _snake(name: str) -> str:
    special = {"MainPID": "main_pid", "NRestarts": "n_restarts"}
    if name in special:
        return special[name]
    out = ""
    for ch in name:
        out += ("_" + ch.lower()) if ch.isupper() and out else ch.lower()
    return out


async def service_status(ctx: Context, params: UnitParams) -> Outcome:
    require_systemd("service.status")
    props = await unit_properties(ctx, params.unit)
    if props.get("load_state") == "not-found":
        await ctx.line(f"unit {params.unit} not found")
        return Outcome(data=props, status="failed", reason=f"unit {params.unit} not found")
    res = await ctx.exec(["systemctl", "status", "--no-pager", "--lines=20", "--", params.unit])
    # systemctl status exits 3 for an inactive unit: that is an answer, not a failure.
    return Outcome(data=props, exit_code=res.exit_code)


_FAILED_COLUMNS = ["unit", "load", "active", "sub", "description"]


async def service_failed(ctx: Context, _params: NoParams) -> Outcome:
    require_systemd("service.failed")
    argv = ["systemctl", "list-units", "--failed", "--no-pager", "--plain", "--no-legend"]
    res = await ctx.exec(argv, stream=False)
    if res.exit_code != 0:
        raise Problem(f"systemctl list-units failed: {res.stderr.strip()}", exit_code=res.exit_code)
    rows: list[list[Any]] = []
    for line in res.stdout.splitlines():
        cols = line.split(None, 4)
        if len(cols) >= 4:
            rows.append([*cols[:4], cols[4] if len(cols) > 4 else ""])
    await ctx.write(render_table(_FAILED_COLUMNS, rows, "no failed units"))
    return Outcome(data=table(_FAILED_COLUMNS, rows))


ENTRIES = [
    Entry(
        "service.status",
        "A systemd unit's state, recent log lines and main process",
        UnitParams,
        "diagnostic",
        timeout=20,
        output_cap=128 * KIB,
        run=service_status,
    ),
    Entry(
        "service.failed",
        "The systemd units that have failed",
        NoParams,
        "diagnostic",
        timeout=20,
        output_cap=128 * KIB,
        run=service_failed,
    ),
]
