"""End to end, real HQ and real agent on loopback: `fieldlink-agent help`
first shows HQ's best published articles for the machine's site; "this
solved it" records a self-served request (closed, linked, a "helped" vote,
counted in the deflection rate); otherwise the ticket opens as before."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from agent.local import SuggestAnswer, SuggestRequest
from tests.support import AgentHandle, HQHandle
from tests.test_e2e_help import ask, number_in, until_linked


async def cli_in(agent: AgentHandle, stdin: bytes, *args: str) -> tuple[int, str, str]:
    """`fieldlink-agent ARGS` as its own process, with `stdin` as the person's answers."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent.cli",
        *args,
        "--config-dir",
        str(agent.dir.path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def article(hq: HQHandle, body: dict[str, Any], publish: bool = True) -> str:
    async with hq.client(hq.admin_token) as api:
        made = await api.ok("POST", "/api/v1/kb", json=body)
        if publish:
            await api.ok(
                "POST", f"/api/v1/kb/{made['number']}/transition", json={"action": "publish"}
            )
    return str(made["number"])


async def test_help_suggests_articles_and_solved_is_self_served(hq, agent_factory):
    agent = await agent_factory(hq, site="shop-1")
    await until_linked(agent)
    async with hq.client(hq.admin_token) as api:
        await api.ok("POST", "/api/v1/sites", json={"name": "shop-2"})
    printer = await article(
        hq,
        {
            "title": "Receipt printer prints blank paper",
            "symptom": "paper comes out empty",
            "resolution": "Open the cover and turn the paper roll over.",
            "visibility": "public",
        },
    )
    # never suggested to this machine: internal, another site's, a draft
    await article(hq, {"title": "Printer driver internals", "visibility": "internal"})
    await article(hq, {"title": "Printer on shop 2", "visibility": "site", "site": "shop-2"})
    await article(hq, {"title": "Printer draft", "visibility": "public"}, publish=False)
    local = await article(
        hq,
        {
            "title": "Printer cable loose at the till",
            "resolution": "Push the printer cable in until it clicks.",
            "visibility": "site",
            "site": "shop-1",
        },
    )

    found = await ask(agent.dir.socket_file, SuggestRequest(text="printer prints blank"))
    assert isinstance(found, SuggestAnswer) and found.answered and found.connected
    assert [i.number for i in found.items] == [printer, local]

    # the person picks the first suggestion: a self-served request, no open ticket
    code, out, err = await cli_in(agent, b"1\n", "help", "my printer prints blank receipts")
    assert code == 0, err
    assert "Before you ask" in out and printer in out and "turn the paper roll" in out
    assert "Did one of these solve it?" in out and "Glad it is solved" in out
    number = number_in(out)
    async with hq.client(hq.admin_token) as api:
        ticket = await api.ok("GET", f"/api/v1/tickets/{number}")
        assert ticket["status"] == "closed" and ticket["resolution_code"] == "self_served"
        assert ticket["source"] == "help" and ticket["agents"] == [agent.agent_id]
        art = await api.ok("GET", f"/api/v1/kb/{printer}")
        assert art["helped"] == 1
        assert any(link["target"] == ticket["id"] for link in art["links"])

        # not solved: the ticket opens as before
        code, out, err = await cli_in(agent, b"\n", "help", "printer cable")
        assert code == 0, err
        assert "Then HQ's IT team gets your request." in out
        opened = await api.ok("GET", f"/api/v1/tickets/{number_in(out)}")
        assert opened["status"] == "new"

        # scripts: --solved KB-N, no question; --no-suggest opens at once
        code, out, err = await cli_in(agent, b"", "help", "blank again", "--solved", printer)
        assert code == 0, err
        assert "Before you ask" not in out and "Glad it is solved" in out
        code, out, err = await cli_in(agent, b"", "help", "printer dead", "--no-suggest")
        assert code == 0 and "Before you ask" not in out and "Your request is ticket" in out
        # an article this machine may not see is refused, nothing opens
        code, out, err = await cli_in(agent, b"", "help", "x", "--solved", "KB-9999")
        assert code == 1 and "not a published article" in out
        code, _, err = await cli_in(agent, b"", "help", "x", "--solved", "banana")
        assert code == 2 and "KB-7" in err

        kpi = await api.ok("GET", "/api/v1/kpis")
        assert kpi["groups"]["all"]["self_served"] == 2
        assert kpi["groups"]["all"]["deflection_rate"] == 0.5

    # nothing matches: no suggestions, straight to the ticket
    code, out, err = await cli_in(agent, b"", "help", "zebra", "crossing")
    assert code == 0 and "Before you ask" not in out and "Your request is ticket" in out
