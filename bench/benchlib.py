"""Helpers the benchmarks share: a real HQ in its own process, pinned HTTPS
reads of its endpoints, a kept-alive API client, a real enrolled agent in its
own process, Prometheus text parsing and process measurements.

Not a benchmark itself; the scripts in this directory import it.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from shared.enrolltoken import cert_fingerprint

BIN = Path(sys.executable).parent
FIELDLINK = str(BIN / "fieldlink")
FIELDLINK_AGENT = str(BIN / "fieldlink-agent")
MB = 1_000_000


def raise_nofile() -> tuple[int, int]:
    """Raise this process's open-file limit to its hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1_048_576
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def run_cli(
    argv: list[str],
    env: dict[str, str] | None = None,
    timeout: float = 120,
    cwd: Path | None = None,
) -> str:
    """Run a fieldlink command to completion; its stdout, or an error with its stderr."""
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} ... failed ({done.returncode}): {done.stderr}")
    return done.stdout


# --- HQ as a separate process ---------------------------------------------------------


@dataclass
class HQProcess:
    """`fieldlink init` + `fieldlink serve` on OS-chosen loopback ports."""

    data_dir: Path
    db: str | None = None
    command: list[str] = field(default_factory=lambda: [FIELDLINK])
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    http_port: int = 0
    ssh_port: int = 0
    fingerprint: str = ""
    log_path: Path | None = None

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def init(self) -> None:
        argv = [FIELDLINK, "--log-format", "json", "init", "--data-dir", str(self.data_dir)]
        if self.db:
            argv += ["--db", self.db]
        run_cli(argv, env=self._env())
        self.fingerprint = run_cli(
            [FIELDLINK, "admin", "--data-dir", str(self.data_dir), "fingerprint"], env=self._env()
        ).strip()

    def start(self, timeout: float = 60) -> None:
        serve_file = self.data_dir / "run" / "serve.json"
        serve_file.unlink(missing_ok=True)
        self.log_path = self.data_dir / "serve.log"
        argv = [
            *self.command,
            "--log-format",
            "json",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--http",
            "127.0.0.1:0",
            "--ssh",
            "127.0.0.1:0",
        ]
        if self.db:
            argv += ["--db", self.db]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=self._env(), start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fieldlink serve exited early; see {self.log_path}")
            try:
                info = json.loads(serve_file.read_text())
            except (OSError, ValueError):
                info = None
            if info and info.get("pid") == self.proc.pid:
                self.http_port = int(info["http_port"])
                self.ssh_port = int(info["ssh_port"])
                self.get("/healthz")
                return
            time.sleep(0.1)
        raise RuntimeError(f"fieldlink serve did not come up in {timeout}s; see {self.log_path}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def get(self, path: str, timeout: float = 30) -> str:
        """GET over HTTPS, trusting only the certificate `fieldlink init` made."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # pinned by fingerprint below instead of by a CA
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.http_port, timeout=timeout, context=ctx
        )
        try:
            conn.connect()
            assert isinstance(conn.sock, ssl.SSLSocket)
            if cert_fingerprint(conn.sock.getpeercert(binary_form=True) or b"") != self.fingerprint:
                raise RuntimeError("HQ presented an unexpected TLS certificate")
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read().decode()
            if resp.status != 200:
                raise RuntimeError(f"GET {path} -> {resp.status}: {body[:200]}")
            return body
        finally:
            conn.close()

    def metrics(self) -> Metrics:
        return Metrics.parse(self.get("/metrics"))

    def cli(self, *args: str) -> str:
        """`fieldlink admin --data-dir DIR ARGS...`; its stdout, stripped."""
        argv = [FIELDLINK, "admin", "--data-dir", str(self.data_dir), *args]
        return run_cli(argv, env=self._env()).strip()

    def admin_token(self) -> str:
        """A bearer token for the `admin` user that `fieldlink init` made."""
        return self.cli("api-token", "--user", "admin", "--ttl", "1d")

    def api(self, token: str | None = None, timeout: float = 60) -> Api:
        return Api("127.0.0.1", self.http_port, self.fingerprint, token, timeout)

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# --- the HTTPS API over one kept-alive connection ---------------------------------------


class ApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        super().__init__(f"{method} {path} -> {status}: {str(body)[:300]}")
        self.status = status
        self.body = body


class Api:
    """HQ's HTTPS API on one kept-alive connection, TLS pinned to HQ's
    certificate fingerprint, with a bearer token. Synchronous (http.client), so
    what it measures is HQ and the wire, not a client event loop.

    `reconnects` counts connections opened after the first: a benchmark that
    times requests checks it stayed 0 (the connection really was kept alive).
    """

    def __init__(
        self, host: str, port: int, fingerprint: str, token: str | None, timeout: float = 60
    ) -> None:
        self.host, self.port, self.fingerprint = host, port, fingerprint
        self.token = token
        self.timeout = timeout
        self.conn: http.client.HTTPSConnection | None = None
        self.connects = 0

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)

    def _connect(self) -> http.client.HTTPSConnection:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # pinned by fingerprint below instead of by a CA
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=ctx)
        conn.connect()
        assert isinstance(conn.sock, ssl.SSLSocket)
        if cert_fingerprint(conn.sock.getpeercert(binary_form=True) or b"") != self.fingerprint:
            conn.close()
            raise RuntimeError("HQ presented an unexpected TLS certificate")
        self.connects += 1
        return conn

    def _headers(self, has_body: bool) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if has_body:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def send(self, method: str, path: str, body: Any = None) -> http.client.HTTPResponse:
        """Send a request and return the response unread (for streams)."""
        data = None if body is None else json.dumps(body).encode()
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = self._connect()
            try:
                self.conn.request(method, path, body=data, headers=self._headers(data is not None))
                return self.conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # HQ closed an idle kept-alive connection: open a new one once
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        resp = self.send(method, path, body)
        raw = resp.read()
        if resp.will_close:
            self.close()
        try:
            parsed: Any = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return resp.status, parsed

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, parsed = self.request(method, path, body)
        if not 200 <= status < 300:
            raise ApiError(method, path, status, parsed)
        return parsed

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# --- a real agent as a separate process --------------------------------------------------


@dataclass
class AgentProcess:
    """A real agent: enrolled with `fieldlink admin enroll-token` and
    `fieldlink-agent enroll`, then `fieldlink-agent run` as its own process."""

    config_dir: Path
    agent_id: str = ""
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def policy_file(self) -> Path:
        return self.config_dir / "policy.toml"

    def enroll(self, hq: HQProcess, site: str) -> str:
        token = hq.cli("enroll-token", "--site", site)
        out = run_cli(
            [FIELDLINK_AGENT, "enroll", token, "--config-dir", str(self.config_dir)],
            cwd=self.config_dir.parent,
        )
        for word in out.split():
            if word.startswith("ag_"):
                self.agent_id = word
        if not self.agent_id:
            raise RuntimeError(f"no agent id in the enroll output: {out!r}")
        return self.agent_id

    def write_policy(self, **values: Any) -> None:
        """Replace the agent's policy.toml (the agent's own template) with these values."""
        from agent.policy import Policy, write_default

        write_default(self.policy_file, Policy(**values))

    def start(self, interval: float = 15.0) -> None:
        self.log_path = self.config_dir.parent / f"{self.config_dir.name}.log"
        argv = [FIELDLINK_AGENT, "run", "--config-dir", str(self.config_dir)]
        argv += ["--interval", str(interval), "--log-format", "json"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.config_dir.parent
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, api: Api, timeout: float = 60) -> None:
        """Until HQ has the agent's hello: its catalog is listed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the agent exited early; see {self.log_path}")
            status, body = api.request("GET", f"/api/v1/agents/{self.agent_id}/catalog")
            if status == 200 and body.get("items"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the agent did not say hello in {timeout}s; see {self.log_path}")

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# --- Prometheus text ------------------------------------------------------------------


@dataclass
class Metrics:
    """Samples of one /metrics scrape: (name, sorted label pairs) -> value."""

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    @classmethod
    def parse(cls, text: str) -> Metrics:
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            name, _, rest = head.partition("{")
            labels: list[tuple[str, str]] = []
            for part in rest.rstrip("}").split(","):
                if "=" in part:
                    key, _, val = part.partition("=")
                    labels.append((key.strip(), val.strip().strip('"')))
            samples[(name, tuple(sorted(labels)))] = float(value)
        return cls(samples)

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def buckets(self, name: str) -> list[tuple[float, float]]:
        """Cumulative histogram buckets (upper bound, count), ascending."""
        out = [
            (float(dict(lbl)["le"]), v)
            for (n, lbl), v in self.samples.items()
            if n == f"{name}_bucket"
        ]
        return sorted(out)


def histogram_quantile(
    q: float, before: list[tuple[float, float]], after: list[tuple[float, float]]
) -> float | None:
    """Quantile of the observations made between two scrapes, interpolated
    linearly inside a bucket as Prometheus' histogram_quantile() does."""
    start = dict(before)
    cum = [(le, count - start.get(le, 0.0)) for le, count in after]
    if not cum or cum[-1][1] <= 0:
        return None
    rank = q * cum[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in cum:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def summary_ms(values: list[float]) -> dict[str, float | None]:
    """p50 / p99 / mean / min / max of durations in seconds, as milliseconds."""
    if not values:
        return {"p50": None, "p99": None, "mean": None, "min": None, "max": None}
    ms = [v * 1000 for v in values]
    return {
        "p50": percentile(ms, 0.5),
        "p99": percentile(ms, 0.99),
        "mean": sum(ms) / len(ms),
        "min": min(ms),
        "max": max(ms),
    }


def fmt_ms(s: dict[str, float | None], digits: int = 1) -> str:
    """`p50 / p99 / mean (min-max) ms` from `summary_ms`."""
    if s["p50"] is None:
        return "n/a"
    return (
        f"{fmt(s['p50'], '', digits)} / {fmt(s['p99'], '', digits)} / {fmt(s['mean'], '', digits)}"
        f" ms  (min {fmt(s['min'], '', digits)}, max {fmt(s['max'], '', digits)})"
    )


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1)."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))
    return ordered[index]


# --- measuring a process ---------------------------------------------------------------


class Watch:
    """CPU time and memory of one process over a window.

    `start()` opens the window; `sample()` records memory now; `stop()` closes
    it. CPU percent is of one core: (user+system CPU seconds) / wall seconds.
    """

    def __init__(self, pid: int, *, uss: bool = False) -> None:
        self.proc = psutil.Process(pid)
        self.uss = uss
        self.rss: list[int] = []
        self.uss_values: list[int] = []
        self._cpu0 = 0.0
        self._t0 = 0.0
        self.cpu_seconds = 0.0
        self.wall_seconds = 0.0

    def _cpu(self) -> float:
        t = self.proc.cpu_times()
        return float(t.user + t.system)

    def start(self) -> None:
        self._cpu0 = self._cpu()
        self._t0 = time.monotonic()
        self.rss.clear()
        self.uss_values.clear()
        self.sample()

    def sample(self) -> None:
        if self.uss:
            info = self.proc.memory_full_info()
            self.uss_values.append(int(info.uss))
            self.rss.append(int(info.rss))
        else:
            self.rss.append(int(self.proc.memory_info().rss))

    def stop(self) -> None:
        self.sample()
        self.cpu_seconds = self._cpu() - self._cpu0
        self.wall_seconds = time.monotonic() - self._t0

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_seconds / self.wall_seconds if self.wall_seconds else 0.0


def fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}")
    print("-" * len(title))
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str))
