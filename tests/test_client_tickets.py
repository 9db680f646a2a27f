"""The engineer CLI's ticket and KPI commands end to end: `fieldlink tickets`,
`ticket new|show|ACTION|comment` and `kpi`, run as the issue writes them, as
separate processes, against a real HQ (and a real agent) on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from tests.support import make_user
from tests.test_client_cli import as_user, fieldlink, ready_agent


# dozens of CLI processes, each a Python start-up: on a loaded machine (a
# parallel run) far past the default 120 s budget
@pytest.mark.timeout(300)
async def test_ticket_lifecycle_from_the_command_line(sqlite_hq, agent_factory, tmp_path):
    """new prints the number alone; the list shows priority, status and an SLA badge;
    every action moves the ticket, an illegal one exits 1 naming the allowed actions;
    comments and a run with its result id land on the timeline `ticket show` prints."""
    hq = sqlite_hq
    agent = await ready_agent(hq, agent_factory, "shop-t")
    user = await make_user(hq, "hq_engineer", totp=True)
    env = as_user(tmp_path / "cfg", hq, user.token)

    made = await fieldlink(
        "ticket",
        "new",
        "--site",
        "shop-t",
        "--title",
        "Till 3 freezes",
        "--agent",
        os.uname().nodename,
        "--priority",
        "P2",
        "--type",
        "incident",
        env=env,
    )
    assert made.returncode == 0, made.stderr
    assert re.fullmatch(r"FL-\d+\n", made.stdout)
    number = made.stdout.strip()

    listed = await fieldlink("tickets", env=env)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if number in line)
    for word in ("P2", "new", "ok", "left", "shop-t", "Till 3 freezes"):
        assert word in row, (word, row)

    mine = await fieldlink("tickets", "--status", "open", "--mine", "--json", env=env)
    assert mine.returncode == 0, mine.stderr
    found = json.loads(mine.stdout)
    assert [t["number"] for t in found] == [number]
    assert found[0]["agents"] == [agent.agent_id]
    none = await fieldlink("tickets", "--status", "resolved,closed", "--json", env=env)
    assert json.loads(none.stdout) == []
    typo = await fieldlink("tickets", "--status", "opne", env=env)
    assert typo.returncode == 2 and "not a status" in typo.stderr

    acked = await fieldlink("ticket", "ack", number, env=env)
    assert acked.returncode == 0, acked.stderr
    assert acked.stdout == f"{number}: new -> acknowledged\n"

    illegal = await fieldlink("ticket", "close", number, env=env)
    assert illegal.returncode == 1
    assert "cannot close a ticket that is acknowledged" in illegal.stderr
    assert "allowed: start, wait, resolve, cancel" in illegal.stderr

    no_reason = await fieldlink("ticket", "wait", number, env=env)
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    waiting = await fieldlink(
        "ticket", "wait", number, "--reason", "on_vendor", "--note", "RMA 4411", env=env
    )
    assert waiting.returncode == 0, waiting.stderr
    assert waiting.stdout == f"{number}: acknowledged -> waiting\n"
    paused = await fieldlink("tickets", "--site", "shop-t", env=env)
    row = next(line for line in paused.stdout.splitlines() if number in line)
    assert "waiting (on_vendor)" in row and "paused" in row

    started = await fieldlink("ticket", "start", number, env=env)
    assert started.stdout == f"{number}: waiting -> in_progress\n"
    ran = await fieldlink(
        "run", agent.agent_id, "disk.usage", "--ticket", number, "--json", env=env
    )
    assert ran.returncode == 0, ran.stderr
    result_id = json.loads(ran.stdout)["result_id"]
    public = await fieldlink("ticket", "comment", number, "new cable is on its way", env=env)
    assert public.returncode == 0 and public.stdout == f"{number}: comment added\n"
    internal = await fieldlink(
        "ticket", "comment", number, "vendor is slow again", "--internal", env=env
    )
    assert internal.stdout == f"{number}: internal note added\n"

    resolved = await fieldlink(
        "ticket", "resolve", number, "--note", "replaced the cable", "--code", "fixed", env=env
    )
    assert resolved.returncode == 0, resolved.stderr
    assert resolved.stdout == f"{number}: in_progress -> resolved\n"

    shown = await fieldlink("ticket", "show", number, env=env)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    for expected in (
        f"{number} P2 resolved",
        "Till 3 freezes",
        f"{os.uname().nodename} ({agent.agent_id})",  # the machine by its host name
        "fixed: replaced the cable",
        "acknowledge",
        "met",
        "new -> acknowledged",
        "acknowledged -> waiting (on_vendor): RMA 4411",
        f"disk.usage on {agent.agent_id}: ok (result {result_id})",
        "new cable is on its way",
        "in_progress -> resolved [fixed]: replaced the cable",
    ):
        assert expected in text, (expected, text)
    lines = text.splitlines()
    assert any("internal note" in line and "vendor is slow again" in line for line in lines)
    assert any(line.split()[:1] == ["next"] and "close, reopen" in line for line in lines)

    reopened = await fieldlink("ticket", "reopen", "--reason", "froze again", number, env=env)
    assert reopened.stdout == f"{number}: resolved -> in_progress\n"
    detail = await fieldlink("ticket", "show", number.lower(), "--json", env=env)
    body = json.loads(detail.stdout)
    assert body["status"] == "in_progress" and body["reopen_count"] == 1
    assert body["timeline"][-1]["body"] == "froze again"

    missing = await fieldlink("ticket", "show", "FL-99999", env=env)
    assert missing.returncode == 1 and "not found" in missing.stderr


async def test_ticket_show_prints_the_health_snapshot_of_a_help_request(
    sqlite_hq, agent_factory, tmp_path
):
    """A help request's snapshot (CPU, load, memory, disks, top processes) is
    printed by `ticket show`, with the machine by its host name."""
    from tests.test_e2e_help import cli as agent_cli
    from tests.test_e2e_help import number_in, until_linked

    hq = sqlite_hq
    agent = await agent_factory(hq)
    await until_linked(agent)
    code, out, err = await agent_cli(agent, "help", "the till is very slow")
    assert code == 0, err
    number = number_in(out)
    user = await make_user(hq, "hq_engineer", totp=True)
    env = as_user(tmp_path / "cfg", hq, user.token, COLUMNS="160")
    shown = await fieldlink("ticket", "show", number, env=env)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "Health snapshot (when help was asked" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line.split()}
    assert re.search(r"CPU\s+\d+% of \d+ cores", rows["CPU"]), rows["CPU"]
    assert re.search(r"load\s+\d+\.\d\d / \d+\.\d\d / \d+\.\d\d", rows["load"])
    assert re.search(r"memory\s+\d+% \(.+iB of .+iB\)", rows["memory"])
    assert re.search(r"│ / +│ .+iB │ .+iB │ +\d+% │", text), text
    assert "pid" in text and "process" in text
    assert f"{os.uname().nodename} ({agent.agent_id})" in text


def table_rows(text: str) -> dict[str, str]:
    """A two-column table as printed: first cell -> last cell."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│") if c.strip()]
        if len(cells) >= 2:
            rows[cells[0]] = cells[-1]
    return rows


async def test_kpis_print_times_and_rates(sqlite_hq, tmp_path):
    """kpi prints counts, times as h/m and rates as %, for a site and a period given as
    dates; --group-by and --json give HQ's report; a period without tickets has none."""
    hq = sqlite_hq
    await make_user(hq, "site_tech", "shop-k")  # creates the site
    engineer = await make_user(hq, "hq_engineer", totp=True)
    env = as_user(tmp_path / "cfg", hq, engineer.token)
    numbers = []
    for title in ("printer offline", "scanner beeps"):
        made = await fieldlink("ticket", "new", "--site", "shop-k", "--title", title, env=env)
        assert made.returncode == 0, made.stderr
        numbers.append(made.stdout.strip())
    for action in ("ack", "resolve"):
        done = await fieldlink("ticket", action, numbers[0], env=env)
        assert done.returncode == 0, done.stderr

    today = datetime.now(UTC).date().isoformat()
    report = await fieldlink("kpi", "--site", "shop-k", "--from", today, "--to", today, env=env)
    assert report.returncode == 0, report.stderr
    text = report.stdout
    assert "on site shop-k" in text and f"from {today}T00:00:00Z" in text
    rows = table_rows(text)
    assert rows["tickets"] == "2" and rows["resolved"] == "1"
    ack = rows["time to acknowledge, mean / median / p90"]
    assert re.fullmatch(r"\d+s / \d+s / \d+s \(n=1\)", ack), ack
    assert rows["SLA met: acknowledge"] == "100%"
    assert rows["escalation rate"] == "0%" and rows["CSAT (ratings of 4-5)"] == "-"

    grouped = await fieldlink("kpi", "--from", "1d", "--group-by", "site", "--json", env=env)
    assert grouped.returncode == 0, grouped.stderr
    data = json.loads(grouped.stdout)
    assert data["group_by"] == "site" and data["groups"]["shop-k"]["tickets"] == 2

    empty = await fieldlink("kpi", "--from", "2001-01-01", "--to", "2001-01-31", "--json", env=env)
    assert json.loads(empty.stdout)["groups"]["all"]["tickets"] == 0
    bad = await fieldlink("kpi", "--from", "last tuesday", env=env)
    assert bad.returncode == 2 and "a date (2026-11-01)" in bad.stderr

    staff = await make_user(hq, "site_staff", "shop-k")
    refused = await fieldlink("kpi", env=as_user(tmp_path / "staff", hq, staff.token))
    assert refused.returncode == 1 and "kpi:read" in refused.stderr


def test_help_texts_of_the_work_commands():
    """Every ticket, KPI, session and file command explains itself."""
    for argv in (
        ["tickets"],
        ["ticket", "show"],
        ["ticket", "new"],
        ["ticket", "wait"],
        ["ticket", "resolve"],
        ["ticket", "comment"],
        ["kpi"],
        ["shell"],
        ["session", "list"],
        ["session", "watch"],
        ["session", "end"],
        ["session", "replay"],
        ["files", "get"],
        ["files", "put"],
    ):
        out = subprocess.run(
            [sys.executable, "-m", "server.cli", *argv, "--help"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0 and f"usage: fieldlink {' '.join(argv)}" in out.stdout
        description = out.stdout.split("\n\n")[1]
        assert len(description) > 40 and not description.startswith("positional"), argv
    replay = subprocess.run(
        [sys.executable, "-m", "server.cli", "session", "replay", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "Idle gaps longer than" in replay.stdout and "(default 2)" in replay.stdout
