"""`make fuzz`: schemathesis against a real HQ's own OpenAPI document.

Starts a real HQ (in this process) on 127.0.0.1 with a temporary data
directory, makes an admin API token as `fieldlink admin api-token` does, and
runs `schemathesis run` against `/api/openapi.json` with that token, bounded
by examples per operation and a time budget. Checks: no server errors (5xx),
every answered status code documented for its operation, and responses that
match their documented schema.

Prints the figures (operations, requests, failures by kind, server errors
HQ logged) and exits non-zero on any failure. Not collected by pytest.

    python -m tests.fuzz.run [--max-examples N] [--max-time SECONDS] [--db URL]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from shared import logs
from tests.support import start_hq

CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance"
# Operations left out (by operationId), with why: each would end the fuzzer's own login.
EXCLUDED = {
    # POST /api/v1/auth/logout revokes the very token the fuzzer authenticates with
    "logout_post",
}


def _args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(prog="make fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--max-examples",
        type=int,
        default=int(env.get("FUZZ_EXAMPLES", "25")),
        help="test cases per operation and phase (FUZZ_EXAMPLES; default 25)",
    )
    parser.add_argument(
        "--max-time",
        type=int,
        default=int(env.get("FUZZ_TIME", "0")) or None,
        help="time budget in seconds for the whole run (FUZZ_TIME; default: none, "
        "the examples bound it)",
    )
    parser.add_argument(
        "--workers",
        default=env.get("FUZZ_WORKERS", "2"),
        help="concurrent schemathesis workers (FUZZ_WORKERS; default 2)",
    )
    parser.add_argument("--seed", type=int, default=int(env.get("FUZZ_SEED", "0")) or None)
    parser.add_argument(
        "--db",
        default=env.get("FUZZ_DB", ""),
        help="database URL (FUZZ_DB; default: a SQLite file in the temporary data dir)",
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=Path(env.get("FUZZ_REPORT_DIR", "test-artifacts/fuzz")),
        help="where the schemathesis report and HQ's log go (default test-artifacts/fuzz)",
    )
    return parser.parse_args(argv)


def _schemathesis() -> str:
    exe = Path(sys.executable).with_name("schemathesis")
    return str(exe) if exe.exists() else "schemathesis"


def _server_errors(log_path: Path) -> collections.Counter[str]:
    """The `request_failed` events HQ logged (a 500 each), by method and path."""
    found: collections.Counter[str] = collections.Counter()
    if not log_path.exists():
        return found
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "request_failed":
            found[f"{event.get('method')} {event.get('path')}"] += 1
    return found


def _summary(report: Path) -> dict[str, Any]:
    """Operations, requests and failures by check from schemathesis' NDJSON events."""
    ops: set[str] = set()
    requests = 0
    failures: collections.Counter[str] = collections.Counter()
    codes: collections.Counter[str] = collections.Counter()
    unique: set[tuple[str, str, str]] = set()
    lines = report.read_text(errors="replace").splitlines() if report.exists() else []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict) or "ScenarioFinished" not in event:
            continue
        finished = event["ScenarioFinished"]
        recorder = finished.get("recorder") or {}
        label = recorder.get("label") or ""
        if label and label != "Stateful tests":
            ops.add(label)
        for interactions in (recorder.get("interactions") or {}).values():
            response = (interactions or {}).get("response")
            if response is not None:
                requests += 1
                codes[str(response.get("status_code"))] += 1
        for checks in (recorder.get("checks") or {}).values():
            for check in checks:
                if str(check.get("status", "")).lower() != "failure":
                    continue
                failure = (check.get("failure_info") or {}).get("failure") or {}
                kind = failure.get("title") or check.get("name", "?")
                failures[kind] += 1
                message = " ".join(str(failure.get("message", "")).split())[:160]
                unique.add((kind, label, message))
    return {
        "operations": len(ops),
        "requests": requests,
        "failures": failures,
        "codes": codes,
        "unique": unique,
    }


async def _run(args: argparse.Namespace) -> int:
    args.report_dir = args.report_dir.resolve()
    args.report_dir.mkdir(parents=True, exist_ok=True)
    log_path = args.report_dir / "hq.log"
    ndjson = args.report_dir / "events.ndjson"
    for stale in (log_path, ndjson):
        stale.unlink(missing_ok=True)
    log_file = log_path.open("w")
    logs.configure(json=True, level="info", stream=log_file)
    with tempfile.TemporaryDirectory(prefix="fieldlink-fuzz-") as tmp:
        data = Path(tmp)
        db = args.db or f"sqlite+aiosqlite:///{data / 'hq.db'}"
        hq = await start_hq(data / "hq", db)
        try:
            token = await hq.api_token("admin", ttl="12h")
            argv = [
                _schemathesis(),
                "run",
                f"{hq.url}/api/openapi.json",
                "--header",
                f"Authorization: Bearer {token}",
                "--tls-verify",
                "false",
                "--checks",
                CHECKS,
                "--max-examples",
                str(args.max_examples),
                "--workers",
                str(args.workers),
                "--report",
                "ndjson",
                "--report-ndjson-path",
                str(ndjson),
                "--suppress-health-check",
                "all",
                "--no-color",
            ]
            for operation_id in sorted(EXCLUDED):
                argv += ["--exclude-operation-id", operation_id]
            if args.max_time:
                argv += ["--max-time", str(args.max_time)]
            if args.seed is not None:
                argv += ["--seed", str(args.seed)]
            started = time.monotonic()
            # schemathesis keeps its example database in .schemathesis/ of its cwd
            proc = await asyncio.create_subprocess_exec(*argv, cwd=args.report_dir)
            code = await proc.wait()
            elapsed = time.monotonic() - started
            async with hq.client(token) as api:
                still, _ = await api.get("/api/v1/me")
        finally:
            await hq.stop()
            log_file.close()

    summary = _summary(ndjson)
    errors = _server_errors(log_path)
    print("\nfuzz figures")
    print(f"  duration:            {elapsed:.0f} s (schemathesis exit {code})")
    print(f"  operations tested:   {summary['operations']}")
    print(f"  requests made:       {summary['requests']}")
    codes = ", ".join(f"{k}x{v}" for k, v in sorted(summary["codes"].items()))
    print(f"  status codes:        {codes}")
    failures = summary["failures"]
    unique = summary["unique"]
    print(f"  failed checks:       {sum(failures.values())} ({len(unique)} distinct)")
    for kind, count in sorted(failures.items()):
        distinct = sum(1 for k, _, _ in unique if k == kind)
        print(f"    {kind}: {count} ({distinct} distinct)")
    for kind, label, message in sorted(unique):
        print(f"      {kind} | {label} | {message}")
    print(f"  server errors (HQ log): {sum(errors.values())}")
    for where, count in errors.most_common():
        print(f"    {where}: {count}")
    print(f"  admin token still valid: {still == 200}")
    print(f"  report: {ndjson}, HQ log: {log_path}")
    failed = code != 0 or bool(failures) or bool(errors) or still != 200
    print("fuzz: " + ("FAILED" if failed else "clean"))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(_run(_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
