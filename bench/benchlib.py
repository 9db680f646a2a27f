"""Helpers the benchmarks share: a real HQ in its own process, pinned HTTPS
reads of its endpoints, Prometheus text parsing and process measurements.

Not a benchmark itself; `agent_footprint.py` and `hq_scale.py` import it.
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

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
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
