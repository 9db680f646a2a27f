"""`fieldlink demo` (what `make run` runs), as a real process: the banner is the
last thing on the terminal, logs go to a file, it listens on loopback, and a
busy port gets a plain message naming it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.support import free_port

FIELDLINK = str(Path(sys.executable).parent / "fieldlink")
BANNER_END = "Ctrl-C stops HQ and the agent."


def _demo(data_dir: Path, http: int, ssh: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            FIELDLINK,
            "demo",
            "--data-dir",
            str(data_dir),
            "--http",
            f"127.0.0.1:{http}",
            "--ssh",
            f"127.0.0.1:{ssh}",
            "--interval",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FIELDLINK_LOG_LEVEL": "info"},
    )


def _read_banner(proc: subprocess.Popen[str], deadline: float) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.strip() == BANNER_END:
            return lines
    raise AssertionError(f"no banner; got {lines!r}, stderr {proc.stderr and proc.stderr.read()}")


def _listening(pid: int) -> set[tuple[str, int]]:
    found: set[tuple[str, int]] = set()
    for conn in psutil.Process(pid).net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN:
            found.add((conn.laddr.ip, conn.laddr.port))
    return found


def test_demo_prints_the_banner_last_logs_to_a_file_and_binds_loopback(tmp_path):
    http, ssh = free_port(), free_port()
    data_dir = tmp_path / "demo"
    proc = _demo(data_dir, http, ssh)
    try:
        lines = _read_banner(proc, time.monotonic() + 120)
        text = "\n".join(lines)
        # plain words, no JSON log lines on the terminal, no misleading agent hint
        assert f"web console:      https://127.0.0.1:{http}/" in text
        assert re.search(r"admin password:   \S{12,}", text)
        assert re.search(r"TLS fingerprint:  [0-9a-f]{64}", text)
        assert re.search(r"local agent id:   ag_[0-9a-f]+", text)
        assert f"logs:             {data_dir / 'demo.log'}" in text
        assert not any(line.lstrip().startswith("{") for line in lines)
        assert "start it with" not in text
        assert lines[-1].strip() == BANNER_END
        # only loopback addresses, on the ports asked for
        listening = _listening(proc.pid)
        assert ("127.0.0.1", http) in listening and ("127.0.0.1", ssh) in listening
        assert all(ip == "127.0.0.1" for ip, port in listening if port in (http, ssh))
        # the logs (HQ's and the agent's) are in the file; the agent connects
        log = data_dir / "demo.log"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "agent_hello" not in log.read_text():
            time.sleep(0.2)
        content = log.read_text()
        assert '"event": "hq_started"' in content and "agent_hello" in content
        assert "start it with" in content  # the enroll command's own words stay in the log
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == "Fieldlink demo stopped."
    assert err == ""  # nothing else reached the terminal


@pytest.mark.parametrize("busy", ["HTTPS", "SSH"])
def test_demo_names_a_busy_port_and_how_to_choose_another(tmp_path, busy):
    http, ssh = free_port(), free_port()
    taken = http if busy == "HTTPS" else ssh
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", taken))
        blocker.listen()
        proc = _demo(tmp_path / "demo", http, ssh)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert f"the {busy} port 127.0.0.1:{taken} is already in use" in err
    assert "make run HTTP_PORT=" in err and "--http 127.0.0.1:" in err
    assert "Errno" not in err and "Traceback" not in err
    assert "Fieldlink demo is running" not in out


def test_make_run_passes_ports_and_address_to_the_demo():
    """`make run HTTP_PORT=... SSH_PORT=... BIND=...` runs the demo on them; by
    default on 127.0.0.1:8443 and :8022."""
    root = Path(__file__).resolve().parent.parent

    def planned(*assignments: str) -> str:
        done = subprocess.run(
            ["make", "-n", "run", *assignments], cwd=root, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return next(line for line in done.stdout.splitlines() if "fieldlink demo" in line)

    assert planned().endswith(
        "fieldlink demo --data-dir .demo --http 127.0.0.1:8443 --ssh 127.0.0.1:8022"
    )
    assert planned("HTTP_PORT=9443", "SSH_PORT=9022", "BIND=0.0.0.0").endswith(
        "--http 0.0.0.0:9443 --ssh 0.0.0.0:9022"
    )
