"""The agent's catalog: every named diagnostic and action it offers, plus
`exec`. Entries live in modules by subject; this package collects them.

    base.py     Entry, Context, parameter types, rendering helpers
    system.py   system.summary, process.top, hardware.sensors, time.sync, os.updates
    disk.py     disk.usage, disk.largest
    net.py      net.interfaces, net.connections, net.ping, net.dns, net.tcp_check,
                net.traceroute
    service.py  service.status, service.failed
    logs.py     log.tail
    actions.py  service.restart, process.kill, disk.cleanup, net.flush_dns
    execute.py  exec
"""

from __future__ import annotations

from functools import cache

from agent.catalog.base import Entry
from shared import protocol as p


@cache
def entries() -> dict[str, Entry]:
    """Every entry by name (built once)."""
    from agent.catalog import actions, disk, execute, logs, net, service, system

    found: dict[str, Entry] = {}
    for module in (system, disk, net, service, logs, actions, execute):
        for entry in module.ENTRIES:
            if entry.name in found:
                raise RuntimeError(f"catalog entry {entry.name} is defined twice")
            found[entry.name] = entry
    return found


def get(name: str) -> Entry | None:
    return entries().get(name)


@cache
def advertise() -> list[p.CatalogEntry]:
    """What the hello tells HQ: names, descriptions, tiers, parameter schemas."""
    return [entry.advertise() for entry in entries().values()]


__all__ = ["Entry", "advertise", "entries", "get"]
