"""Test support for desktop sessions: a real X server (Xvfb) on a free
display, what its screen and pointer show (xdotool, xwininfo), and what an
x11vnc process holds (/proc). Tests that need these programs skip without
them, except under CI=true, where they fail."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.conftest import IN_CI
from tests.support import wait_until

X_PROGRAMS = ("Xvfb", "x11vnc", "xdotool", "xsetroot", "xmessage", "xwininfo", "xauth")
PACKAGES = "xvfb x11vnc xdotool x11-xserver-utils x11-utils xauth"


def need_x_programs() -> None:
    """Skip (fail under CI) when the programs the desktop tests drive are missing."""
    missing = [name for name in X_PROGRAMS if shutil.which(name) is None]
    if not missing:
        return
    message = f"desktop tests need {', '.join(missing)} (Debian: apt-get install {PACKAGES})"
    if IN_CI:
        pytest.fail(f"{message}; they are required under CI=true")
    pytest.skip(message)


def _free_display() -> int:
    for number in range(90, 190):
        if not (
            Path(f"/tmp/.X11-unix/X{number}").exists() or Path(f"/tmp/.X{number}-lock").exists()
        ):
            return number
    raise AssertionError("no free X display number between :90 and :189")


@dataclass
class Display:
    """A running Xvfb: its name (":93"), its authority file, and tools on it."""

    name: str
    xauthority: str
    process: asyncio.subprocess.Process

    def env(self) -> dict[str, str]:
        return {**os.environ, "DISPLAY": self.name, "XAUTHORITY": self.xauthority}

    async def run(self, *argv: str) -> str:
        """A command on this display; its stdout (it must succeed)."""
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=self.env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, f"{argv}: {err.decode()}"
        return out.decode()

    async def pointer(self) -> tuple[int, int]:
        """Where the X pointer is."""
        found = re.search(r"x:(\d+) y:(\d+)", await self.run("xdotool", "getmouselocation"))
        assert found, "xdotool said nothing useful"
        return int(found.group(1)), int(found.group(2))

    async def windows(self) -> list[dict[str, str | int]]:
        """The viewable top-level windows, with their geometry."""
        tree = await self.run("xwininfo", "-root", "-children")
        found = []
        for wid in re.findall(r"^\s+(0x[0-9a-f]+)", tree, re.M):
            try:
                info = await self.run("xwininfo", "-id", wid)
            except AssertionError:  # gone meanwhile
                continue
            if "IsViewable" not in info:
                continue
            values = {
                key: int(value)
                for key, value in re.findall(
                    r"(Absolute upper-left X|Absolute upper-left Y|Width|Height):\s+(-?\d+)", info
                )
            }
            found.append({"id": wid, **values})
        return found


@contextlib.asynccontextmanager
async def xvfb(tmp_path: Path, colour: str = "#ff0000") -> AsyncIterator[Display]:
    """Xvfb on a free display with an authority cookie (so x11vnc needs
    `desktop_xauthority`), the root painted `colour`."""
    need_x_programs()
    number = _free_display()
    name = f":{number}"
    auth = tmp_path / "Xauthority"
    auth.touch(mode=0o600)
    cookie = os.urandom(16).hex()
    xauth = await asyncio.create_subprocess_exec(
        "xauth", "-f", str(auth), "add", name, "MIT-MAGIC-COOKIE-1", cookie
    )
    assert await xauth.wait() == 0
    process = await asyncio.create_subprocess_exec(
        "Xvfb",
        name,
        "-screen", "0", "1280x800x24",
        "-nolisten", "tcp",
        "-noreset",  # keep the painted root when the last client leaves
        "-auth", str(auth),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    display = Display(name, str(auth), process)
    try:
        socket_file = Path(f"/tmp/.X11-unix/X{number}")
        await wait_until(socket_file.exists, what=f"Xvfb's socket {socket_file}")

        async def painted() -> bool:
            try:
                await display.run("xsetroot", "-solid", colour)
            except AssertionError:
                return False  # not accepting clients yet
            return True

        await wait_until(painted, what="Xvfb painting its root window")
        yield display
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 10)
        if process.returncode is None:
            process.kill()
            await process.wait()


def cmdline(pid: int) -> list[str]:
    return list(psutil.Process(pid).cmdline())


def children_running(word: str) -> list[int]:
    """Pids of this process's descendants whose command line has `word`."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and word in " ".join(child.cmdline()):
                found.append(child.pid)
        except psutil.Error:
            continue
    return found


def inet_sockets(pid: int) -> list[str]:
    """Every TCP or UDP socket (listening or not, IPv4 or IPv6) that process
    `pid` holds, from /proc: its sockets' inodes against the kernel's tables."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    held = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[9] in inodes:
                    held.append(f"{table} {fields[1]} state {fields[3]}")
    return held
