"""Test support: start real HQs and agents, talk to the API over real HTTPS.

Everything here drives the real components; nothing is faked.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import random
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from agent.config import ConfigDir
from agent.daemon import Daemon
from agent.enroll import enroll
from agent.policy import Policy
from server.config.settings import Settings, load_settings
from server.control import admin
from server.hq import HQ
from server.ops import accounts, enrollment
from shared.durations import parse_duration

ADMIN_PASSWORD = "admin-password-for-tests"

# The programs tests run as plain commands. With allow_shell = false a machine
# runs only what its policy's allowed_programs lists
# (docs/agent-runs.md#plain-commands-the-allow-list).
TEST_PROGRAMS = [
    "echo", "id", "true", "false", "sleep", "ls", "yes", "printf", "cat", "date", "uname",
    "hostname", "whoami", "pwd", "head", "seq", "df", "uptime",
]  # fmt: skip


def machine_policy(**values: Any) -> Policy:
    """A test machine's policy: these values; where it allows plain commands but
    no shell and lists no programs, the programs tests run (TEST_PROGRAMS)."""
    if values.get("allow_exec") and not values.get("allow_shell"):
        values.setdefault("allowed_programs", TEST_PROGRAMS)
    return Policy(**values)


async def wait_until(
    check: Callable[[], Awaitable[Any]] | Callable[[], Any],
    timeout: float = 15.0,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll until `check()` returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def running(*argv: str, timeout: float = 30.0) -> Any:
    """Wait until a live process runs exactly `argv` (pick an argv no other test
    runs, e.g. a random sleep duration): a shell then has it in the foreground,
    so a Ctrl-C typed now reaches it rather than the shell between commands."""
    import psutil

    def find() -> list[Any]:
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            if proc.info["cmdline"] == list(argv) and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
        return found

    return await wait_until(find, timeout=timeout, what=" ".join(argv))


class ApiClient:
    """HTTPS client pinned to HQ's certificate fingerprint."""

    def __init__(self, base: str, fingerprint: str, token: str | None) -> None:
        self.base = base
        self.token = token
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(bytes.fromhex(fingerprint))),
            # HQ is reached by IP address in tests; keep its cookies like a browser does.
            cookie_jar=aiohttp.CookieJar(unsafe=True),
        )

    async def close(self) -> None:
        await self._session.close()

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        out = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        out.update(extra or {})
        return out

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> tuple[int, Any]:
        async with self._session.request(
            method,
            self.base + path,
            json=json,
            data=data,
            params=params,
            headers=self.headers(headers),
        ) as resp:
            raw = await resp.read()
            try:
                text = raw.decode(resp.charset or "utf-8")
            except UnicodeDecodeError:  # a binary answer (a PDF): as bytes
                return resp.status, raw
            try:
                import json as _json

                body = _json.loads(text) if text else None
            except ValueError:
                body = text
            return resp.status, body

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, json: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.request("POST", path, json=json, **kw)

    async def ok(self, method: str, path: str, **kw: Any) -> Any:
        status, body = await self.request(method, path, **kw)
        assert 200 <= status < 300, f"{method} {path} -> {status}: {body}"
        return body

    def ws(self, path: str, **params: Any) -> Any:
        """A WebSocket to HQ over the same pinned TLS, with this client's token:
        `async with api.ws("/api/v1/...", watch=1) as ws`."""
        return self._session.ws_connect(
            self.base + path, params=params or None, headers=self.headers()
        )


@dataclass
class HQHandle:
    settings: Settings
    hq: HQ
    admin_token: str
    admin_password: str = ADMIN_PASSWORD
    running: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.hq.url

    @property
    def fingerprint(self) -> str:
        return self.hq.parts.fingerprint

    @property
    def sessions(self) -> Any:
        return self.hq.parts.sessions

    @asynccontextmanager
    async def client(self, token: str | None = None) -> AsyncIterator[ApiClient]:
        client = ApiClient(self.url, self.fingerprint, token)
        try:
            yield client
        finally:
            await client.close()

    async def enroll_token(self, site: str = "shop-1", uses: int = 1, ttl: str = "1h") -> str:
        async with self.sessions.begin() as session:
            made = await enrollment.make_enroll_token(
                session,
                site_name=site,
                uses=uses,
                ttl=parse_duration(ttl),
                url=self.url,
                fingerprint=self.fingerprint,
                actor=admin.local_actor(),
            )
        return made.token

    async def api_token(
        self, username: str, ttl: str = "1h", origin: str = "break-glass", **kw: Any
    ) -> str:
        """A token made as `fieldlink admin api-token` makes one, unless `origin` says."""
        async with self.sessions.begin() as session:
            made = await accounts.make_api_token(
                session,
                username=username,
                name="test",
                ttl=parse_duration(ttl),
                origin=origin,
                actor=admin.local_actor(),
                **kw,
            )
        return made.token

    async def stop(self) -> None:
        if self.running:
            self.running = False
            await self.hq.stop()

    async def restart(self) -> None:
        """Stop and start again on the same ports and data."""
        http_port, ssh_port = self.hq.parts.http_port, self.hq.parts.ssh_port
        await self.stop()
        self.settings = self.settings.model_copy(
            update={"http": f"127.0.0.1:{http_port}", "ssh": f"127.0.0.1:{ssh_port}"}
        )
        self.hq = HQ(self.settings)
        await self.hq.start()
        self.running = True


async def start_hq(data_dir: Path, db: str, **settings: Any) -> HQHandle:
    settings.setdefault("keepalive_interval", 1.0)
    # ports of this process's own (see free_port), so that restart() finds them free
    settings.setdefault("http", f"127.0.0.1:{free_port()}")
    settings.setdefault("ssh", f"127.0.0.1:{free_port()}")
    cfg = load_settings(data_dir, db=db, **settings)
    await admin.init(cfg, admin_password=ADMIN_PASSWORD)
    hq = HQ(cfg)
    await hq.start()
    handle = HQHandle(cfg, hq, admin_token="")
    handle.admin_token = await handle.api_token("admin")
    return handle


@dataclass
class AgentHandle:
    dir: ConfigDir
    agent_id: str
    daemon: Daemon | None = None
    task: asyncio.Task[None] | None = None

    async def start(self, interval: float = 0.2) -> None:
        self.daemon = Daemon(self.dir, interval=interval)
        self.task = asyncio.create_task(self.daemon.run(install_signals=False))

    async def stop(self) -> None:
        if self.daemon is not None and self.task is not None:
            self.daemon.stop()
            await asyncio.wait_for(self.task, timeout=15)
            self.daemon = None
            self.task = None


async def start_agent(
    hq: HQHandle,
    path: Path,
    *,
    site: str = "shop-1",
    interval: float = 0.2,
    run: bool = True,
    **config: Any,
) -> AgentHandle:
    token = await hq.enroll_token(site)
    cdir = ConfigDir(path)
    cfg = await asyncio.to_thread(enroll, token, cdir)
    config.setdefault("keepalive_interval", 1.0)
    config.setdefault("backoff_cap", 1.0)
    cdir.save(cfg.model_copy(update=config))
    handle = AgentHandle(cdir, cfg.agent_id)
    if run:
        await handle.start(interval)
    return handle


@dataclass
class TestUser:
    """A user made for a test, with what a test needs to act as it."""

    id: str
    username: str
    password: str
    token: str
    totp_secret: str | None = None


async def make_user(
    hq: HQHandle,
    role: str | None = None,
    site: str | None = None,
    *,
    username: str | None = None,
    totp: bool = False,
) -> TestUser:
    """Create a user with one binding (role on a site, or global), optionally
    with TOTP on, and a bearer token as if it had logged in with TOTP."""
    import secrets as _secrets

    from server.auth import totp as totp_mod
    from server.auth.crypto import seal
    from server.store.models import User, utcnow

    name = username or f"{role or 'user'}-{_secrets.token_hex(3)}".replace("_", "-")
    password = "pw-" + _secrets.token_urlsafe(12)
    secret = totp_mod.new_secret() if totp else None
    async with hq.sessions.begin() as session:
        user = await accounts.create_user(
            session, username=name, password=password, actor=admin.local_actor()
        )
        if role is not None:
            await accounts.bind_role(
                session,
                user=user,
                role=role,
                site_name=site,
                actor=admin.local_actor(),
                create_site=True,
            )
        if secret is not None:
            row = await session.get(User, user.id)
            assert row is not None
            row.totp_secret_enc = seal(
                hq.hq.parts.master_key, secret.encode(), f"totp:{user.id}".encode()
            )
            row.totp_enabled = True
        user_id = user.id
    token = await hq.api_token(name, origin="login", mfa_at=utcnow() if totp else None)
    return TestUser(user_id, name, password, token, secret)


class _PortBlock:
    """Ports for the tests' servers (the HQs, `fieldlink demo`, "nowhere"
    addresses) from a block that this process holds alone.

    A port the OS hands out (bind to port 0) comes from the ephemeral range,
    where any outgoing connection on this machine can take it the moment its
    listener closes: an HQ restarted on its ports then found one taken. So the
    ports come from below that range, which the OS never hands out, in blocks
    of BLOCK: each pytest process (each xdist worker, every checkout's run on
    this machine) claims a free block with a lock file that it holds while it
    lives, and hands out the block's ports in turn, skipping any that some
    other program listens on. Without a free block, port 0 as before."""

    BLOCK = 200
    FIRST = 10_000
    LOCKS = Path(tempfile.gettempdir()) / "fieldlink-test-ports"

    def __init__(self) -> None:
        self._claimed: tuple[int, int] | None = None  # (lock fd, first port)
        self._next = 0
        self._tried = False

    @staticmethod
    def _ephemeral_low() -> int:
        try:
            low = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
            return int(low)
        except (OSError, ValueError, IndexError):
            return 32768

    def _claim(self) -> None:
        self._tried = True
        count = (self._ephemeral_low() - self.FIRST) // self.BLOCK
        if count < 1:
            return
        self.LOCKS.mkdir(exist_ok=True)
        start = random.randrange(count)
        for i in range(count):
            index = (start + i) % count
            fd = os.open(self.LOCKS / f"{index}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self._claimed = (fd, self.FIRST + index * self.BLOCK)
            return

    def take(self) -> int | None:
        if not self._tried:
            self._claim()
        if self._claimed is None:
            return None
        first = self._claimed[1]
        for _ in range(self.BLOCK):
            port = first + self._next
            self._next = (self._next + 1) % self.BLOCK
            with socket.socket() as sock:
                try:  # no SO_REUSEADDR: a port with closing connections is skipped too
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
        return None


_PORTS = _PortBlock()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, for a test's own server;
    no other test process on this machine is given it (see _PortBlock)."""
    port = _PORTS.take()
    if port is not None:
        return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def spawn(log: Path, *argv: str) -> asyncio.subprocess.Process:
    """Start one of our command lines (`fieldlink ...` or `fieldlink-agent ...`)
    as a separate process, its output appended to `log`."""
    import os
    import sys

    module = "server.cli" if argv[0] == "fieldlink" else "agent.cli"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, *argv[1:], stdout=fd, stderr=fd
        )
    finally:
        os.close(fd)
