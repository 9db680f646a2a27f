"""A hostile agent against a real HQ (issue 17, items 1 and 2): what it costs HQ.

    .venv/bin/python bench/hostile_agent.py patterns   # 800 costly RE2 patterns at hello
    .venv/bin/python bench/hostile_agent.py unique     # uniqueItems over 60,000 objects

`patterns`: an impostor (an enrolled agent's real key) says hello with 100
catalog entries holding 800 distinct legal RE2 patterns such as
`(?i)[\\p{L}\\p{N}]{300}x<n>` (59 KB). For `--seconds` it samples the memory of
HQ's process and its children (the parameter check workers) and the latency of
`/healthz`.

`unique`: the impostor advertises `{"type": "array", "uniqueItems": true}`
for a parameter; two runs send 60,000 distinct small objects (829 KB) at
once; then every 2 s a run with parameters goes to another, real agent and
`/healthz` is probed. Prints how many of those runs were refused as "not
checked in time", `/healthz` latency and HQ's CPU use.

HQ runs in this process (SQLite in a temporary directory); figures are
printed, and written as JSON with `--json FILE`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared import protocol as p
from tests.support import start_agent, start_hq, wait_until
from tests.test_hostile_catalog import _impostor_hello

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in children:
        out += _tree(int(child))
    return out


def rss_mb() -> float:
    """Resident memory of this process (HQ) and its children, in MB."""
    total = 0
    for pid in _tree(os.getpid()):
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except OSError:
            continue
    return total / 1e6


def cpu_seconds() -> float:
    total = 0.0
    for pid in _tree(os.getpid()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def _entry(name: str, schema: dict[str, Any]) -> p.CatalogEntry:
    return p.CatalogEntry(
        name=name,
        description="hostile",
        tier="diagnostic",
        params_schema=schema,
        timeout=10.0,
        output_cap=1000,
    )


def pattern_entries(count: int = 800, per_entry: int = 8) -> list[p.CatalogEntry]:
    entries = []
    for e in range(count // per_entry):
        props = {
            f"p{i}": {
                "type": "string",
                "pattern": rf"(?i)[\p{{L}}\p{{N}}]{{300}}x{e * per_entry + i}",
            }
            for i in range(per_entry)
        }
        entries.append(_entry(f"evil.patterns{e}", {"type": "object", "properties": props}))
    return entries


async def probe(api: Any, until: float, every: float, took: list[float]) -> None:
    while time.monotonic() < until:
        asked = time.monotonic()
        status, _ = await api.get("/healthz")
        took.append(time.monotonic() - asked)
        assert status == 200, status
        await asyncio.sleep(max(0.0, every - (time.monotonic() - asked)))


def _latency(took: list[float]) -> dict[str, float]:
    return {
        "healthz_median_ms": round(statistics.median(took) * 1000, 1),
        "healthz_max_ms": round(max(took) * 1000, 1),
    }


async def patterns(work: Path, seconds: float) -> dict[str, Any]:
    hq = await start_hq(work / "hq", f"sqlite+aiosqlite:///{work / 'hq.db'}")
    try:
        handle = await start_agent(hq, work / "impostor", run=False)
        await asyncio.sleep(2)
        before = rss_mb()
        entries = pattern_entries()
        size = len(json.dumps([e.model_dump(mode="json") for e in entries]))
        conn = await _impostor_hello(hq, handle, entries)
        took: list[float] = []
        peak = before
        started = time.monotonic()
        async with hq.client() as api:
            task = asyncio.create_task(probe(api, started + seconds, 0.5, took))
            while not task.done():
                peak = max(peak, rss_mb())
                await asyncio.sleep(1)
            await task
        after = rss_mb()
        async with hq.client(hq.admin_token) as api:
            body = await api.ok("GET", f"/api/v1/agents/{handle.agent_id}/catalog")
        offered = sum(1 for e in body["items"] if e["name"].startswith("evil."))
        conn.close()
        return {
            "catalog_bytes": size,
            "patterns": 800,
            "rss_before_mb": round(before, 1),
            "rss_peak_mb": round(peak, 1),
            "rss_after_mb": round(after, 1),
            "hostile_entries_offered": offered,
            **_latency(took),
        }
    finally:
        await hq.stop()


async def unique(work: Path, seconds: float) -> dict[str, Any]:
    hq = await start_hq(work / "hq", f"sqlite+aiosqlite:///{work / 'hq.db'}")
    try:
        handle = await start_agent(hq, work / "impostor", run=False)
        real = await start_agent(hq, work / "real")
        await wait_until(lambda: hq.hq.parts.links.get(real.agent_id), what="agent")
        schema = {"type": "object", "properties": {"x": {"type": "array", "uniqueItems": True}}}
        conn = await _impostor_hello(hq, handle, [_entry("evil.unique", schema)])
        params = {"x": [{"a": i} for i in range(60000)]}
        async with hq.client(hq.admin_token) as api:

            async def offered() -> bool:
                body = await api.ok("GET", f"/api/v1/agents/{handle.agent_id}/catalog")
                return any(e["name"] == "evil.unique" for e in body["items"])

            await wait_until(offered, what="the impostor's catalog")
            url = f"/api/v1/agents/{handle.agent_id}/run"
            baseline: list[float] = []
            await probe(api, time.monotonic() + 3, 0.2, baseline)
            cpu0, t0 = cpu_seconds(), time.monotonic()
            hostile = [
                asyncio.create_task(api.post(url, {"name": "evil.unique", "params": params}))
                for _ in range(2)
            ]
            await asyncio.sleep(0.5)
            took: list[float] = []
            statuses: list[int] = []
            refused = 0
            task = asyncio.create_task(probe(api, time.monotonic() + seconds, 0.5, took))
            real_url = f"/api/v1/agents/{real.agent_id}/run"
            while not task.done():
                status, body = await api.post(real_url, {"name": "process.top", "params": {"n": 3}})
                statuses.append(status)
                refused += status == 422 and "not checked" in json.dumps(body)
                await asyncio.sleep(2)
            await task
            cpu = (cpu_seconds() - cpu0) / (time.monotonic() - t0)
            done = await asyncio.gather(*hostile)
        conn.close()
        return {
            "params_bytes": len(json.dumps(params)),
            "hostile_runs": [s for s, _ in done],
            "real_runs": len(statuses),
            "real_runs_refused_not_checked": refused,
            "real_run_statuses": sorted(set(statuses)),
            "healthz_baseline_median_ms": round(statistics.median(baseline) * 1000, 1),
            "cpu_percent_of_one_core": round(cpu * 100),
            **_latency(took),
        }
    finally:
        await real.stop()
        await hq.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenario", choices=("patterns", "unique"))
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = patterns if args.scenario == "patterns" else unique
        figures = asyncio.run(run(Path(tmp), args.seconds))
    for key, value in figures.items():
        print(f"{key:32} {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
