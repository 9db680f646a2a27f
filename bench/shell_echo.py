"""Keystroke echo and output throughput of a shell through HQ.

    .venv/bin/python bench/shell_echo.py [--keys 500] [--gap 0.02] [--mb 200]

Starts a real HQ as its own process and a real agent as its own process
whose policy allows shells as this user without consent
(`allow_shell = true`, `require_consent = false`); the site's session policy
asks no consent for shells either. An `hq_engineer` is made the way an admin
and the engineer would: `fieldlink admin user add --role hq_engineer`, a
login for a token, then TOTP set up and confirmed through the API (which
also counts as the step-up). The engineer opens a ticket on the machine,
asks for a shell session (active at once) and opens the terminal WebSocket
(`GET /api/v1/sessions/{id}/terminal`), as the console and `fieldlink shell`
do. Everything is on loopback, and HQ records the session as it always does.

1. Echo: in the shell, `stty -icanon; cat >/dev/null`, so the machine's
   terminal echoes every byte as it arrives. Then `--keys` single bytes, one
   at a time, `--gap` seconds apart; each is timed from the moment it is sent
   on the WebSocket until its echo comes back on it: browser -> HQ -> SSH ->
   agent -> PTY -> agent -> SSH -> HQ -> browser.
2. Throughput: `head -c N /dev/zero | base64` with N chosen so that about
   `--mb` MB reach the WebSocket (base64 lines and the terminal's CRLF),
   then a marker. Figure: bytes received on the WebSocket from the first
   output byte to the marker, per second (MB = 10^6 bytes).

Goals (issue 6): echo p50 <= 10 ms on loopback; output >= 20 MB/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pwd
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from benchlib import (
    FIELDLINK,
    FIELDLINK_AGENT,
    MB,
    AgentProcess,
    Api,
    HQProcess,
    Watch,
    fmt,
    fmt_ms,
    print_table,
    raise_nofile,
    run_cli,
    summary_ms,
    write_json,
)

from server.auth import totp

GOAL_ECHO_P50_MS = 10.0
GOAL_MB_PER_S = 20.0
SITE = "bench"
ME = pwd.getpwuid(os.geteuid()).pw_name
BASE64_LINE = 76 + 2  # base64 wraps at 76; the terminal turns "\n" into "\r\n"


def make_engineer(hq: HQProcess) -> Api:
    """An hq_engineer with TOTP on, and an API client holding its freshly
    verified token."""
    name = f"bench-eng-{secrets.token_hex(3)}"
    password = "pw-" + secrets.token_urlsafe(16)
    argv = [FIELDLINK, "admin", "--data-dir", str(hq.data_dir), "user", "add", name]
    argv += ["--role", "hq_engineer", "--password-stdin"]
    done = subprocess.run(argv, input=password + "\n", capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"user add failed: {done.stderr}")
    anon = hq.api()
    login = anon.ok(
        "POST", "/api/v1/auth/login", {"username": name, "password": password, "token": True}
    )
    anon.close()
    api = hq.api(login["token"])
    setup = api.ok("POST", "/api/v1/me/totp")
    api.ok("POST", "/api/v1/me/totp/confirm", {"code": totp.code_for(setup["secret"])})
    return api


def no_consent_for_shells(admin: Api) -> None:
    sites = admin.ok("GET", "/api/v1/sites")
    [site] = [s for s in sites["items"] if s["name"] == SITE]
    policy = {**site["session_policy"]}
    policy["consent"] = {**policy.get("consent", {}), "shell": False}
    admin.ok("PATCH", f"/api/v1/sites/{site['id']}", {"session_policy": policy})


def agent_heard(agent: AgentProcess, session_id: str, state: str, timeout: float = 30) -> None:
    """Until the machine has HQ's word that the session is `state`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = run_cli([FIELDLINK_AGENT, "status", "--json", "--config-dir", str(agent.config_dir)])
        for known in json.loads(out).get("sessions") or []:
            if known.get("id") == session_id and known.get("state") == state:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the agent did not hear that {session_id} is {state}")


class Terminal:
    """The engineer's end of the terminal WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.out = bytearray()
        self.closed: str | None = None

    async def type(self, data: str | bytes) -> None:
        await self.ws.send_bytes(data.encode() if isinstance(data, str) else data)

    async def read(self, timeout: float) -> bytes:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.BINARY:
            self.out += msg.data
            return bytes(msg.data)
        if msg.type == aiohttp.WSMsgType.TEXT:
            data = json.loads(msg.data)
            if data.get("type") == "closed":
                self.closed = data.get("reason", "closed")
            return b""
        self.closed = self.closed or f"websocket {msg.type.name.lower()}"
        raise RuntimeError(f"the terminal closed: {self.closed}")

    async def expect(self, marker: bytes, timeout: float = 30) -> None:
        """Read until `marker` shows up in what the terminal showed, then forget it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while marker not in self.out:
            if self.closed is not None:
                raise RuntimeError(f"the terminal closed: {self.closed}")
            left = deadline - loop.time()
            if left <= 0:
                raise RuntimeError(f"{marker!r} not shown; saw {bytes(self.out[-300:])!r}")
            await self.read(left)
        del self.out[: self.out.index(marker) + len(marker)]


async def drive(
    url: str, fingerprint: str, token: str, session_id: str, args: argparse.Namespace, watch: Any
) -> dict[str, Any]:
    """Both measurements in one terminal; `watch(phase)` opens and closes the
    CPU windows ("echo", "output", "done")."""
    connector = aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(bytes.fromhex(fingerprint)))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.ws_connect(
            f"{url}/api/v1/sessions/{session_id}/terminal",
            params={"cols": "200", "rows": "50"},
            headers={"Authorization": f"Bearer {token}"},
            max_msg_size=0,
        ) as ws,
    ):
        term = Terminal(ws)
        await term.type("echo READY$((40+2))\r")
        await term.expect(b"READY42")

        # 1. echo: the machine's terminal echoes every byte while cat reads them
        await term.type("stty -icanon -ixon; echo CAT$((6*7)); cat >/dev/null\r")
        await term.expect(b"CAT42")
        await asyncio.sleep(0.3)
        await term.type(b"#")
        await term.expect(b"#")
        alphabet = b"abcdefghijklmnopqrstuvwxyz"
        echoes: list[float] = []
        watch("echo")
        for i in range(args.warmup_keys + args.keys):
            key = alphabet[i % len(alphabet) : i % len(alphabet) + 1]
            term.out.clear()
            started = time.perf_counter()
            await term.type(key)
            while key not in term.out:
                await term.read(10)
            if i >= args.warmup_keys:
                echoes.append(time.perf_counter() - started)
            if args.gap:
                await asyncio.sleep(args.gap)
        await term.type(b"\x03")  # Ctrl-C ends cat; what is typed before the prompt is lost
        await asyncio.sleep(0.5)
        await term.type("stty sane; echo SANE$((6*7))\r")
        await term.expect(b"SANE42")

        # 2. throughput
        size = int(args.mb * MB * 57 / BASE64_LINE)  # input bytes for ~args.mb MB shown
        await term.type(f"head -c {size} /dev/zero | base64; echo END$((6*7))\r")
        await term.expect(b"END$((6*7))\r\n")  # the command line's own echo
        term.out.clear()
        marker = b"END42"
        received = 0
        first: float | None = None
        tail = b""
        watch("output")
        started = time.perf_counter()
        while True:
            chunk = await term.read(120)
            if not chunk:
                continue
            if first is None:
                first = time.perf_counter()
            received += len(chunk)
            term.out.clear()
            window = tail + chunk
            if marker in window:
                break
            tail = window[-len(marker) :]
        done = time.perf_counter()
        watch("done")
        await term.type("exit\r")
        with contextlib.suppress(RuntimeError, TimeoutError):
            while term.closed is None:
                await term.read(10)
        assert first is not None
        return {
            "echoes": echoes,
            "input_bytes": size,
            "received_bytes": received,
            "seconds": done - first,
            "seconds_with_start": done - started,
        }


def open_session(api: Api, agent_id: str, ticket: str) -> str:
    rs = api.ok(
        "POST",
        "/api/v1/sessions",
        {"agent_id": agent_id, "ticket_id": ticket, "kind": "shell", "reason": "benchmark"},
    )
    if rs["state"] != "active":
        raise RuntimeError(f"the session is {rs['state']}, not active: {rs}")
    return str(rs["id"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    with tempfile.TemporaryDirectory(prefix="fl-bench-shell-") as tmp:
        root = Path(tmp)
        hq = HQProcess(root / "hq")
        agent = AgentProcess(root / "agent")
        admin = engineer = None
        try:
            hq.init()
            hq.start()
            admin = hq.api(hq.admin_token())
            agent.enroll(hq, SITE)
            agent.write_policy(allow_shell=True, require_consent=False, shell_user=ME)
            agent.start(interval=15)
            agent.wait_ready(admin)
            no_consent_for_shells(admin)
            engineer = make_engineer(hq)
            ticket = engineer.ok(
                "POST",
                "/api/v1/tickets",
                {"title": "benchmark", "site": SITE, "agent_ids": [agent.agent_id]},
            )["number"]
            url = f"https://127.0.0.1:{hq.http_port}"
            token = engineer.token or ""
            print(
                f"HQ pid {hq.pid}, agent pid {agent.pid}; {args.keys} keystrokes "
                f"({args.gap * 1000:g} ms apart), then ~{args.mb:g} MB of output ...",
                flush=True,
            )

            sid = open_session(engineer, agent.agent_id, ticket)
            agent_heard(agent, sid, "active")
            windows: dict[str, tuple[Watch, Watch]] = {}

            def watch(phase: str) -> None:
                for watches in windows.values():
                    if watches[0].wall_seconds == 0:
                        for w in watches:
                            w.stop()
                if phase != "done":
                    windows[phase] = (Watch(hq.pid), Watch(agent.pid))
                    for w in windows[phase]:
                        w.start()

            out = asyncio.run(drive(url, hq.fingerprint, token, sid, args, watch))
            keys = len(out["echoes"])
            (hq_w, agent_w), (hq_t, agent_t) = windows["echo"], windows["output"]
            recording = sorted((hq.data_dir / "recordings").glob(f"{sid}*"))
            rec_bytes = sum(p.stat().st_size for p in recording)
        finally:
            for api in (admin, engineer):
                if api is not None:
                    api.close()
            agent.stop()
            hq.stop()

    es = summary_ms(out["echoes"])
    result: dict[str, Any] = {
        "keys": keys,
        "gap_ms": args.gap * 1000,
        "echo_ms": es,
        "echo_hq_cpu_ms_per_key": 1000 * hq_w.cpu_seconds / max(keys, 1),
        "echo_agent_cpu_ms_per_key": 1000 * agent_w.cpu_seconds / max(keys, 1),
        "output_bytes": out["received_bytes"],
        "output_seconds": out["seconds"],
        "output_mb_per_s": out["received_bytes"] / MB / out["seconds"],
        "output_mb_per_s_with_start": out["received_bytes"] / MB / out["seconds_with_start"],
        "output_hq_cpu_percent": hq_t.cpu_percent,
        "output_agent_cpu_percent": agent_t.cpu_percent,
        "recording_bytes": rec_bytes,
        "goal_echo_p50_ms": GOAL_ECHO_P50_MS,
        "goal_mb_per_s": GOAL_MB_PER_S,
    }
    result["echo_ok"] = es["p50"] is not None and es["p50"] <= GOAL_ECHO_P50_MS
    result["output_ok"] = result["output_mb_per_s"] >= GOAL_MB_PER_S
    return result


def report(r: dict[str, Any]) -> None:
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print_table(
        "Shell through HQ (real HQ, real agent, PTY shell, terminal WebSocket, loopback, recorded)",
        [
            (
                f"echo p50 / p99 / mean ({r['keys']} keys)",
                fmt_ms(r["echo_ms"], 2) + f"  ({r['gap_ms']:g} ms apart)",
            ),
            (
                "CPU per keystroke",
                f"HQ {r['echo_hq_cpu_ms_per_key']:.2f} ms, agent "
                f"{r['echo_agent_cpu_ms_per_key']:.2f} ms",
            ),
            (
                "output throughput",
                f"{r['output_mb_per_s']:.1f} MB/s ({r['output_bytes'] / MB:,.0f} MB in "
                f"{r['output_seconds']:.1f} s; {r['output_mb_per_s_with_start']:.1f} MB/s "
                "from Enter)",
            ),
            (
                "CPU while streaming",
                f"HQ {r['output_hq_cpu_percent']:.0f} %, "
                f"agent {r['output_agent_cpu_percent']:.0f} % of one core",
            ),
            ("recording on disk", fmt(r["recording_bytes"] / MB, " MB (encrypted)")),
            (f"goal echo p50 <= {GOAL_ECHO_P50_MS:g} ms", verdict(r["echo_ok"])),
            (f"goal output >= {GOAL_MB_PER_S:g} MB/s", verdict(r["output_ok"])),
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="shell_echo.py",
        description="Keystroke echo round trip and output throughput of a PTY shell through "
        "HQ's terminal WebSocket, with a real HQ and a real agent on loopback.",
        epilog="Goals (issue 6): echo p50 <= 10 ms; output >= 20 MB/s.",
    )
    parser.add_argument("--keys", type=int, default=500, help="timed keystrokes (default 500)")
    parser.add_argument(
        "--warmup-keys", type=int, default=20, help="untimed keystrokes first (default 20)"
    )
    parser.add_argument(
        "--gap", type=float, default=0.02, help="seconds between keystrokes (default 0.02)"
    )
    parser.add_argument(
        "--mb", type=float, default=200.0, help="MB of output for the throughput test (200)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = parser.parse_args(argv)
    if args.keys < 1 or args.mb <= 0 or args.gap < 0:
        parser.error("--keys and --mb must be positive, --gap not negative")
    result = run(args)
    report(result)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
