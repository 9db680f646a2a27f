"""Help requests are limited per machine and per asker, and a repeat of an open
request is added to it instead of opening another ticket: from the machine
(`fieldlink-agent help`, a real agent; frames of several local accounts from a
real SSH client with the agent's key) and from site staff through the API."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import asyncssh
from sqlalchemy import select

from agent.sampler import collect_facts
from server.store.models import Ticket, TicketEvent
from shared import protocol as p
from shared.version import PROTOCOL_VERSION, __version__
from tests.support import make_user, wait_until
from tests.test_e2e_help import cli, number_in


async def _tickets(hq: Any, agent_id: str) -> list[Ticket]:
    async with hq.sessions() as session:
        rows = await session.scalars(
            select(Ticket).where(Ticket.requester_agent_id == agent_id).order_by(Ticket.number)
        )
        return list(rows)


async def _repeats(hq: Any, number: int) -> list[TicketEvent]:
    async with hq.sessions() as session:
        ticket = await session.scalar(select(Ticket).where(Ticket.number == number))
        assert ticket is not None
        rows = await session.scalars(
            select(TicketEvent).where(
                TicketEvent.ticket_id == ticket.id, TicketEvent.kind == "help_repeat"
            )
        )
        return list(rows)


async def test_machine_repeats_fold_and_an_asker_is_limited(hq_factory, sqlite_url, agent_factory):
    hq = await hq_factory(sqlite_url, help_limit_per_asker=4, help_limit_per_machine=10)
    agent = await agent_factory(hq)
    await wait_until(lambda: hq.hq.parts.links.get(agent.agent_id), what="agent linked")
    rc, out, err = await cli(agent, "help", "The receipt printer", "jams on page 2")
    assert rc == 0 and "ticket FL-1" in out, (out, err)
    # the same request again, in other words' case and punctuation: no second ticket
    rc, out, err = await cli(agent, "help", "the receipt printer JAMS on page 2!")
    assert rc == 0, (out, err)
    assert "already have this request open as ticket FL-1" in out, out
    tickets = await _tickets(hq, agent.agent_id)
    assert [t.number for t in tickets] == [1]
    folded = await _repeats(hq, 1)
    assert len(folded) == 1 and "JAMS on page 2!" in folded[0].body and not folded[0].internal
    # a different request is a new ticket
    rc, out, err = await cli(agent, "help", "the screen flickers")
    assert rc == 0 and "ticket FL-2" in out, (out, err)
    # once the first is resolved, asking the same again opens a new one
    async with hq.client(hq.admin_token) as api:
        await api.ok(
            "POST",
            "/api/v1/tickets/FL-1/transition",
            json={"action": "resolve", "resolution_code": "fixed"},
        )
    rc, out, err = await cli(agent, "help", "The receipt printer jams on page 2")
    assert rc == 0 and "ticket FL-3" in out, (out, err)
    # the asker's 5th request within the hour (repeats count) is refused, saying so
    rc, out, err = await cli(agent, "help", "the network is slow")
    assert rc != 0, (out, err)
    assert "did not accept your request: too many help requests from" in out, out
    assert "(4 in the last 60 minutes); try again in" in out, out
    assert [t.number for t in await _tickets(hq, agent.agent_id)] == [1, 2, 3]


async def _frames_from(hq: Any, handle: Any, frames: list[p.Model]) -> list[p.Receipt]:
    """Send a hello then `frames` as the enrolled agent (its real key, a real
    SSH client); HQ's receipts, once one per help frame has come."""
    key = asyncssh.read_private_key(handle.dir.key_file)
    hello = p.Hello(
        protocol=PROTOCOL_VERSION,
        agent_id=handle.agent_id,
        version=__version__,
        facts=await asyncio.to_thread(collect_facts),
        spool_dropped=0,
    )
    receipts: list[p.Receipt] = []
    done = asyncio.Event()
    wanted = sum(1 for f in frames if isinstance(f, p.Help))

    async def process(proc: asyncssh.SSHServerProcess[bytes]) -> None:
        proc.stdout.write(p.encode(hello))
        for frame in frames:
            proc.stdout.write(p.encode(frame))
        decoder = p.FrameDecoder()
        while not done.is_set():
            data = await proc.stdin.read(65536)
            if not data:
                break
            for line in decoder.feed(data):
                if json.loads(line).get("type") == "receipt":
                    receipts.append(p.Receipt.model_validate_json(line))
            if len(receipts) >= wanted:
                done.set()

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return False

    conn = await asyncssh.connect_reverse(
        "127.0.0.1",
        hq.hq.parts.ssh_port,
        server_host_keys=[key],
        process_factory=process,
        server_factory=Server,
        encoding=None,
        config=None,
    )
    try:
        await asyncio.wait_for(done.wait(), 30)
    finally:
        conn.close()
    return sorted(receipts, key=lambda r: r.seq)


async def test_one_machine_is_limited_whoever_asks(hq_factory, sqlite_url, agent_factory):
    hq = await hq_factory(sqlite_url, help_limit_per_machine=4, help_limit_per_asker=2)
    handle = await agent_factory(hq, run=False)
    now = datetime.now(UTC)
    people = ["ann", "bob", "cy", "dee", "eve", "fay"]
    frames: list[p.Model] = [
        p.Help(seq=i + 1, text=f"problem number {i} of {who}", user=who, asked_at=now)
        for i, who in enumerate(people)
    ]
    receipts = await _frames_from(hq, handle, frames)
    assert [r.ok for r in receipts] == [True, True, True, True, False, False], receipts
    assert "too many help requests from this machine (4 in the last 60 minutes)" in (
        receipts[4].message
    )
    assert len(await _tickets(hq, handle.agent_id)) == 4
    # the refusal is remembered: the same frame again gets the same answer, no ticket
    again = await _frames_from(hq, handle, [frames[4]])
    assert again[0].ok is False and again[0].message == receipts[4].message


async def test_site_staff_api_requests_fold_and_are_limited(hq_factory, sqlite_url):
    hq = await hq_factory(sqlite_url, help_limit_per_asker=3)
    staff = await make_user(hq, "site_staff", "shop-1")
    async with hq.client(staff.token) as api:
        status, first = await api.post(
            "/api/v1/tickets",
            {"title": "Till freezes", "description": "since 9am", "site": "shop-1"},
        )
        assert status == 201, first
        async with api._session.post(
            api.base + "/api/v1/tickets",
            json={"title": "till freezes", "description": "Since 9am.", "site": "shop-1"},
            headers=api.headers(),
        ) as resp:
            again = await resp.json()
            assert resp.status == 200, again
            assert resp.headers["X-Fieldlink-Repeat-Of"] == first["number"]
        assert again["number"] == first["number"]
        assert any(e["kind"] == "help_repeat" for e in again["timeline"]), again["timeline"]
        status, second = await api.post(
            "/api/v1/tickets", {"title": "No receipts", "site": "shop-1"}
        )
        assert status == 201 and second["number"] != first["number"]
        async with api._session.post(
            api.base + "/api/v1/tickets",
            json={"title": "Scanner is dead", "site": "shop-1"},
            headers=api.headers(),
        ) as resp:
            err = await resp.json()
            assert resp.status == 429, err
            assert err["error"]["code"] == "rate_limited"
            assert "too many help requests" in err["error"]["message"]
            assert int(resp.headers["Retry-After"]) > 0
    # HQ's people are not held to the site's limits, nor folded
    async with hq.client(hq.admin_token) as api:
        numbers = set()
        for _ in range(5):
            made = await api.ok("POST", "/api/v1/tickets", json={"title": "t", "site": "shop-1"})
            numbers.add(made["number"])
        assert len(numbers) == 5


async def test_openapi_documents_the_repeat_and_the_limit(sqlite_hq):
    async with sqlite_hq.client() as api:
        doc = await api.ok("GET", "/api/openapi.json")
    answers = doc["paths"]["/api/v1/tickets"]["post"]["responses"]
    assert {"200", "201", "429"} <= set(answers)
    assert answers["200"]["content"] == answers["201"]["content"]
    assert answers["429"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")


def test_what_counts_as_the_same_request():
    from server.ops.helprequests import similar

    assert similar("The receipt printer jams on page 2", "the receipt printer JAMS on page 2!")
    assert similar("till freezes\nsince 9am", "Till freezes -- since 9 am")
    assert not similar("the screen flickers", "the receipt printer jams")
    assert not similar("printer 1 is down", "printer 2 is down and the scanner too")


async def _kpis(hq: Any) -> dict[str, Any]:
    async with hq.client(hq.admin_token) as api:
        body = await api.ok("GET", "/api/v1/kpis")
    return dict(body["groups"]["all"])


async def test_self_served_requests_have_their_own_limit_and_fold(
    hq_factory, sqlite_url, agent_factory
):
    """`fieldlink-agent help --solved KB-N` again with the same words is added to
    the first record, not a new closed ticket; self-served records have their own
    limit (repeats count) and never use up the machine's help quota: the next
    real request still opens a ticket. Before, 40 of them made 40 tickets, used
    up the quota and set the site's deflection rate to 1.0."""
    from tests.test_e2e_kb_help import article, cli_in

    hq = await hq_factory(
        sqlite_url, help_limit_per_machine=3, help_limit_per_asker=3, help_limit_self_served=4
    )
    agent = await agent_factory(hq)
    await wait_until(lambda: hq.hq.parts.links.get(agent.agent_id), what="agent linked")
    kb = await article(hq, {"title": "Printer blank", "resolution": "flip", "visibility": "public"})
    numbers = set()
    for _ in range(3):
        rc, out, err = await cli_in(agent, b"", "help", "x", "--solved", kb)
        assert rc == 0 and "Glad it is solved" in out, (out, err)
        numbers.add(number_in(out))
    assert len(numbers) == 1, numbers  # folded into the first record
    rc, out, err = await cli_in(agent, b"", "help", "the other printer", "--solved", kb)
    assert rc == 0 and number_in(out) not in numbers, (out, err)
    # the 5th self-served record within the hour (repeats count) is refused
    rc, out, err = await cli_in(agent, b"", "help", "yet another", "--solved", kb)
    assert rc == 1 and "too many self-served requests from this machine" in out, (out, err)
    served = [t for t in await _tickets(hq, agent.agent_id) if t.resolution_code == "self_served"]
    assert len(served) == 2
    # the machine's real-help quota is untouched
    for text in ("the scanner beeps", "screen is black", "no network at the till"):
        rc, out, err = await cli_in(agent, b"", "help", text, "--no-suggest")
        assert rc == 0 and "Your request is ticket" in out, (text, out, err)
    kpi = await _kpis(hq)
    assert kpi["self_served"] == 2 and kpi["deflection_rate"] == 0.4, kpi


async def test_site_staff_self_served_through_the_api_fold_and_are_limited(hq_factory, sqlite_url):
    """POST /api/v1/kb/{id}/solved as site staff: the same words again answer
    200 with the first record (X-Fieldlink-Repeat-Of), past
    `help_limit_self_served` 429; the staff's real requests are not refused
    for them. Before, 30 posts made 30 tickets (201 each)."""
    from tests.test_e2e_kb_help import article

    hq = await hq_factory(sqlite_url, help_limit_per_asker=2, help_limit_self_served=3)
    staff = await make_user(hq, "site_staff", "shop-1")
    kb = await article(
        hq, {"title": "Till frozen", "resolution": "restart", "visibility": "public"}
    )
    url = f"/api/v1/kb/{kb}/solved"
    async with hq.client(staff.token) as api:

        async def solved(text: str) -> tuple[int, Any, Any]:
            async with api._session.post(
                api.base + url, json={"site": "shop-1", "text": text}, headers=api.headers()
            ) as resp:
                return resp.status, await resp.json(), resp.headers

        status, first, _ = await solved("till frozen")
        assert status == 201, first
        status, again, headers = await solved("Till frozen!")
        assert status == 200 and again["ticket"] == first["ticket"], again
        assert headers["X-Fieldlink-Repeat-Of"] == first["ticket"]
        status, other, _ = await solved("scanner frozen too")
        assert status == 201 and other["ticket"] != first["ticket"]
        status, err, headers = await solved("and the printer")
        assert status == 429, err
        assert "too many self-served requests" in err["error"]["message"]
        assert int(headers["Retry-After"]) > 0
        # real requests: the asker's own limit (2) is all theirs
        for title in ("Card reader dead", "No network"):
            status, made = await api.post("/api/v1/tickets", {"title": title, "site": "shop-1"})
            assert status == 201, made
    kpi = await _kpis(hq)
    assert kpi["self_served"] == 2, kpi
    async with hq.client() as api:
        doc = await api.ok("GET", "/api/openapi.json")
    answers = doc["paths"]["/api/v1/kb/{article_id}/solved"]["post"]["responses"]
    assert {"200", "201", "429"} <= set(answers)
