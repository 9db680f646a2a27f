"""Network diagnostics: interfaces, connections, ping, DNS, a TCP connect
check and traceroute.

Host names are validated (`Host`, `DnsName`: letters, digits, dots, colons,
hyphens; never a leading `-`) and passed as one argv word to ping, dig, host,
traceroute or tracepath, or used by Python's own socket calls. Where a tool is
missing, ping falls back to a TCP connect probe and says so; the others say
what they need.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import socket
import time
from typing import Any, Literal

import psutil
from pydantic import Field

from agent.catalog.base import (
    KIB,
    Context,
    DnsName,
    Entry,
    Host,
    NoParams,
    Outcome,
    Params,
    Problem,
    render_table,
    table,
    which,
)
from agent.runner import describe_exit

# --- net.interfaces -----------------------------------------------------------

_IF_COLUMNS = [
    "name",
    "up",
    "speed_mbps",
    "mtu",
    "mac",
    "addresses",
    "rx_bytes",
    "tx_bytes",
    "errors_in",
    "errors_out",
    "drops_in",
    "drops_out",
]


def _interfaces() -> list[list[Any]]:
    addrs = psutil.net_if_addrs()
    stats = psutil.net_if_stats()
    counters = psutil.net_io_counters(pernic=True)
    rows: list[list[Any]] = []
    for name in sorted(set(addrs) | set(stats)):
        st = stats.get(name)
        io = counters.get(name)
        mac = None
        ips: list[str] = []
        for a in addrs.get(name, []):
            if a.family == psutil.AF_LINK:
                mac = a.address
            elif a.family in (socket.AF_INET, socket.AF_INET6):
                ip = a.address.split("%", 1)[0]
                prefix = _prefix(a.netmask)
                ips.append(f"{ip}/{prefix}" if prefix is not None else ip)
        rows.append(
            [
                name,
                bool(st and st.isup),
                st.speed if st else None,
                st.mtu if st else None,
                mac,
                ips,
                io.bytes_recv if io else None,
                io.bytes_sent if io else None,
                io.errin if io else None,
                io.errout if io else None,
                io.dropin if io else None,
                io.dropout if io else None,
            ]
        )
    return rows


def _prefix(netmask: str | None) -> int | None:
    if not netmask:
        return None
    try:
        return ipaddress.ip_network(f"0.0.0.0/{netmask}").prefixlen
    except ValueError:
        try:
            return bin(int(ipaddress.IPv6Address(netmask))).count("1")
        except ValueError:
            return None


async def net_interfaces(ctx: Context, _params: NoParams) -> Outcome:
    rows = await ctx.thread(_interfaces)
    await ctx.write(render_table(_IF_COLUMNS[:6], [r[:6] for r in rows]))
    return Outcome(data=table(_IF_COLUMNS, rows))


# --- net.connections ----------------------------------------------------------

State = Literal[
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NONE",
]
_CONN_COLUMNS = ["proto", "local", "remote", "state", "pid", "process"]


class ConnectionsParams(Params):
    state: State | None = Field(default=None, description="only connections in this state")
    kind: Literal["inet", "inet4", "inet6", "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6"] = "inet"
    n: int = Field(default=200, ge=1, le=2000)


def _addr(a: Any) -> str | None:
    if not a:
        return None
    return f"[{a.ip}]:{a.port}" if ":" in a.ip else f"{a.ip}:{a.port}"


def _connections(kind: str, state: str | None, n: int) -> tuple[list[list[Any]], int]:
    names: dict[int, str] = {}
    rows: list[list[Any]] = []
    for c in psutil.net_connections(kind=kind):
        if state is not None and c.status != state:
            continue
        proto = "tcp" if c.type == socket.SOCK_STREAM else "udp"
        if c.family == socket.AF_INET6:
            proto += "6"
        name = None
        if c.pid:
            if c.pid not in names:
                try:
                    names[c.pid] = psutil.Process(c.pid).name()
                except psutil.Error:
                    names[c.pid] = "?"
            name = names[c.pid]
        rows.append([proto, _addr(c.laddr), _addr(c.raddr), c.status, c.pid, name])
    # Listening sockets first, then by state, protocol and address.
    rows.sort(key=lambda r: (r[3] != "LISTEN", r[3], r[0], r[1] or "", r[2] or ""))
    return rows[:n], len(rows)


async def net_connections(ctx: Context, params: ConnectionsParams) -> Outcome:
    rows, total = await ctx.thread(_connections, params.kind, params.state, params.n)
    await ctx.write(render_table(_CONN_COLUMNS, rows, "(no matching connections)"))
    if total > len(rows):
        await ctx.line(f"... {total - len(rows)} more not shown (raise n to see them)")
    return Outcome(data={**table(_CONN_COLUMNS, rows), "total": total})


# --- net.tcp_check ------------------------------------------------------------


class TcpCheckParams(Params):
    host: Host
    port: int = Field(ge=1, le=65535)
    timeout: float = Field(default=5.0, gt=0, le=30)


async def _connect(host: str, port: int, timeout: float) -> tuple[str | None, float, str | None]:
    """Try one TCP connection: (peer address, seconds, error or None)."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return None, time.monotonic() - started, f"no answer within {timeout:g}s"
    except OSError as exc:
        error = os.strerror(exc.errno) if exc.errno else str(exc)
        return None, time.monotonic() - started, error
    seconds = time.monotonic() - started
    peer = writer.get_extra_info("peername")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return (str(peer[0]) if peer else None), seconds, None


async def net_tcp_check(ctx: Context, params: TcpCheckParams) -> Outcome:
    address, seconds, error = await _connect(params.host, params.port, params.timeout)
    data = {
        "host": params.host,
        "port": params.port,
        "address": address,
        "connected": error is None,
        "seconds": round(seconds, 4),
        "error": error,
    }
    if error is not None:
        await ctx.line(f"{params.host}:{params.port}: cannot connect: {error}")
        return Outcome(
            data=data,
            status="failed",
            reason=f"could not connect to {params.host} port {params.port}: {error}",
        )
    await ctx.line(
        f"{params.host}:{params.port}: connected to {address} in {1000 * seconds:.1f} ms"
    )
    return Outcome(data=data)


# --- net.ping -----------------------------------------------------------------


class PingParams(Params):
    host: Host
    count: int = Field(default=4, ge=1, le=20)
    port: int = Field(
        default=443, ge=1, le=65535, description="for the TCP probe, used only without ping"
    )


_SENT = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)")


async def _tcp_probe(ctx: Context, params: PingParams) -> Outcome:
    await ctx.line(
        f"ping is not installed on this machine: probing TCP port {params.port} of "
        f"{params.host} instead (a refused connection still shows the host answers)"
    )
    replies: list[list[Any]] = []
    times: list[float] = []
    for seq in range(1, params.count + 1):
        _, seconds, error = await _connect(params.host, params.port, 2.0)
        answered = error is None or error.lower().startswith("connection refused")
        result = "open" if error is None else ("refused" if answered else "no answer")
        ms = round(1000 * seconds, 2) if answered else None
        if ms is not None:
            times.append(ms)
        replies.append([seq, result, ms])
        await ctx.line(f"seq={seq} {result}" + (f" time={ms} ms" if ms is not None else ""))
        if seq < params.count:
            await asyncio.sleep(0.2)
    return _ping_outcome(params, "tcp", len(replies), len(times), times, replies)


def _ping_outcome(
    params: PingParams,
    method: str,
    sent: int,
    received: int,
    times: list[float],
    replies: list[list[Any]] | None = None,
) -> Outcome:
    rtt = (
        {"min": min(times), "avg": round(sum(times) / len(times), 3), "max": max(times)}
        if times
        else None
    )
    data: dict[str, Any] = {
        "host": params.host,
        "method": method,
        "sent": sent,
        "received": received,
        "loss_percent": round(100.0 * (sent - received) / sent, 1) if sent else None,
        "rtt_ms": rtt,
    }
    if method == "tcp":
        data["port"] = params.port
        data["replies"] = table(["seq", "result", "ms"], replies or [])
    if received == 0:
        return Outcome(
            data=data, status="failed", reason=f"no reply from {params.host} ({sent} sent)"
        )
    return Outcome(data=data)


async def net_ping(ctx: Context, params: PingParams) -> Outcome:
    if which("ping") is None:
        return await _tcp_probe(ctx, params)
    res = await ctx.exec(["ping", "-c", str(params.count), "-W", "2", "--", params.host])
    sent_m = _SENT.search(res.stdout)
    if sent_m is None:
        reason = _last_line(res.stderr) or describe_exit(res.exit_code)
        raise Problem(f"ping {params.host} failed: {reason}", exit_code=res.exit_code)
    sent, received = int(sent_m.group(1)), int(sent_m.group(2))
    rtt_m = _RTT.search(res.stdout)
    times = [float(x) for x in rtt_m.groups()] if rtt_m else []
    outcome = _ping_outcome(params, "icmp", sent, received, times)
    if rtt_m and isinstance(outcome.data, dict):
        outcome.data["rtt_ms"] = {
            "min": float(rtt_m.group(1)),
            "avg": float(rtt_m.group(2)),
            "max": float(rtt_m.group(3)),
        }
    outcome.exit_code = res.exit_code
    return outcome


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --- net.dns ------------------------------------------------------------------

RecordType = Literal["A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "CAA"]


class DnsParams(Params):
    name: DnsName = Field(description="a name, or an IP address for PTR")
    type: RecordType = "A"


def _nameservers() -> list[str]:
    try:
        with open("/etc/resolv.conf") as fh:
            return [
                line.split()[1]
                for line in fh
                if line.startswith("nameserver") and len(line.split()) > 1
            ]
    except OSError:
        return []


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


async def _system_lookup(params: DnsParams) -> list[str]:
    """A, AAAA and PTR through the system resolver (hosts file, DNS, ...)."""
    loop = asyncio.get_running_loop()
    if params.type == "PTR":
        name, aliases, _ = await loop.run_in_executor(None, socket.gethostbyaddr, params.name)
        return [name, *aliases]
    family = socket.AF_INET if params.type == "A" else socket.AF_INET6
    infos = await loop.getaddrinfo(params.name, None, family=family, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def _tool_lookup(ctx: Context, params: DnsParams) -> tuple[str, list[str]]:
    if which("dig") is not None:
        if params.type == "PTR" and _is_ip(params.name):
            argv = ["dig", "+noall", "+answer", "+time=2", "+tries=2", "-x", params.name]
        else:
            argv = ["dig", "+noall", "+answer", "+time=2", "+tries=2"]
            argv += ["-t", params.type, "-q", params.name]
        res = await ctx.exec(argv, stream=False)
        if res.exit_code != 0:
            raise Problem(f"dig failed: {_last_line(res.stdout + res.stderr)}")
        answers = []
        for line in res.stdout.splitlines():
            cols = line.split(None, 4)
            if len(cols) == 5 and not line.startswith(";"):
                answers.append(cols[4].strip())
        return "dig", answers
    if which("host") is not None:
        argv = ["host", "-W", "2", "-t", params.type, "--", params.name]
        res = await ctx.exec(argv, stream=False)
        lines = [line for line in res.stdout.splitlines() if line.strip()]
        if res.exit_code != 0:
            text = _last_line(res.stdout + res.stderr)
            if "not found" in text or "has no" in text:
                return "host", []
            raise Problem(f"host failed: {text}")
        return "host", lines
    raise Problem(
        f"looking up {params.type} records needs dig or host (packages bind9-dnsutils or "
        "bind9-host), and neither is installed on this machine; A, AAAA and PTR lookups of "
        "an address work without them"
    )


async def net_dns(ctx: Context, params: DnsParams) -> Outcome:
    servers = _nameservers()
    system = params.type in ("A", "AAAA") or (params.type == "PTR" and _is_ip(params.name))
    if system:
        resolver = "system"
        try:
            answers = await _system_lookup(params)
        except (socket.gaierror, socket.herror) as exc:
            data = {
                "name": params.name,
                "type": params.type,
                "answers": [],
                "resolver": resolver,
                "nameservers": servers,
            }
            await ctx.line(f"{params.name} {params.type}: {exc.strerror or exc}")
            return Outcome(
                data=data,
                status="failed",
                reason=f"{params.name} did not resolve ({params.type}): {exc.strerror or exc}",
            )
    else:
        resolver, answers = await _tool_lookup(ctx, params)
    data = {
        "name": params.name,
        "type": params.type,
        "answers": answers,
        "resolver": resolver,
        "nameservers": servers,
    }
    for answer in answers:
        await ctx.line(f"{params.name} {params.type} {answer}")
    if not answers:
        await ctx.line(f"no {params.type} records for {params.name}")
    await ctx.line(f"(resolver: {resolver}; nameservers: {', '.join(servers) or 'none listed'})")
    return Outcome(data=data)


# --- net.traceroute -----------------------------------------------------------


class TracerouteParams(Params):
    host: Host
    max_hops: int = Field(default=20, ge=1, le=64)


_HOP = re.compile(r"^\s*(\d+)\??:?\s+(\S+)(?:.*?([\d.]+)\s*ms)?")


async def net_traceroute(ctx: Context, params: TracerouteParams) -> Outcome:
    hops = str(params.max_hops)
    if which("traceroute") is not None:
        tool = "traceroute"
        # The host cannot start with "-" (validated), so it cannot be read as an option.
        argv = ["traceroute", "-n", "-q", "1", "-w", "2", "-m", hops, params.host]
    elif which("tracepath") is not None:
        tool = "tracepath"
        argv = ["tracepath", "-n", "-m", hops, "--", params.host]
    else:
        raise Problem(
            "net.traceroute needs traceroute or tracepath, and neither is installed on this machine"
        )
    res = await ctx.exec(argv)
    rows: list[list[Any]] = []
    for line in res.stdout.splitlines():
        found = _HOP.match(line)
        if found and found.group(2) != "[LOCALHOST]":
            ms = float(found.group(3)) if found.group(3) else None
            rows.append([int(found.group(1)), found.group(2), ms])
    data = {"host": params.host, "tool": tool, **table(["hop", "address", "ms"], rows)}
    if res.exit_code != 0:
        reason = _last_line(res.stderr) or describe_exit(res.exit_code)
        return Outcome(
            data=data, status="failed", reason=f"{tool} failed: {reason}", exit_code=res.exit_code
        )
    return Outcome(data=data, exit_code=res.exit_code)


ENTRIES = [
    Entry(
        "net.interfaces",
        "Network interfaces: state, speed, MTU, addresses, traffic and error counters",
        NoParams,
        "diagnostic",
        timeout=15,
        output_cap=128 * KIB,
        run=net_interfaces,
    ),
    Entry(
        "net.connections",
        "Open TCP/UDP connections and listening sockets with their processes",
        ConnectionsParams,
        "diagnostic",
        timeout=20,
        output_cap=512 * KIB,
        run=net_connections,
    ),
    Entry(
        "net.ping",
        "Ping a host (ICMP; a TCP connect probe where ping is not installed)",
        PingParams,
        "diagnostic",
        timeout=60,
        output_cap=64 * KIB,
        run=net_ping,
    ),
    Entry(
        "net.dns",
        "Look a name up in DNS (A and AAAA through the system resolver)",
        DnsParams,
        "diagnostic",
        timeout=20,
        output_cap=64 * KIB,
        run=net_dns,
    ),
    Entry(
        "net.tcp_check",
        "Can this machine open a TCP connection to host:port, and how fast?",
        TcpCheckParams,
        "diagnostic",
        timeout=40,
        output_cap=16 * KIB,
        run=net_tcp_check,
    ),
    Entry(
        "net.traceroute",
        "The route to a host, hop by hop (where traceroute or tracepath is installed)",
        TracerouteParams,
        "diagnostic",
        timeout=120,
        output_cap=64 * KIB,
        run=net_traceroute,
    ),
]
