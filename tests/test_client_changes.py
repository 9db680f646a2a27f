"""`fieldlink change ...` end to end, as separate processes against a real HQ
and real agents: new prints the number alone, approve is refused to the
requester and done by another, start runs the stages, show and list print
them, review closes it; help texts name every step."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.support import make_user, wait_until
from tests.test_client_cli import as_user, fieldlink, ready_agent


async def test_change_from_request_to_review_on_the_command_line(
    sqlite_hq, agent_factory, tmp_path
):
    hq = sqlite_hq
    agents = [
        await ready_agent(hq, agent_factory, "shop-c", allow_exec=True, require_consent=False)
        for _ in range(2)
    ]
    engineer = await make_user(hq, "hq_engineer", totp=True)
    approver = await make_user(hq, "admin", totp=True)
    env = as_user(tmp_path / "eng", hq, engineer.token)
    env_approver = as_user(tmp_path / "cab", hq, approver.token)

    made = await fieldlink(
        "change",
        "new",
        "--command",
        "echo from-cli",
        "--site",
        "shop-c",
        "--title",
        "Say hello",
        "--risk",
        "low",
        "--gate",
        "0",
        "--plan",
        "echo on every till",
        "--backout-command",
        "echo undo",
        "--pilot-agent",
        agents[0].agent_id,
        env=env,
    )
    assert made.returncode == 0, made.stderr
    assert re.fullmatch(r"CHG-\d+\n", made.stdout)
    number = made.stdout.strip()

    # the requester holds no changes:approve; the error names the reason, exit 1
    own = await fieldlink("change", "approve", number, env=env)
    assert own.returncode == 1 and "changes:approve" in own.stderr
    early = await fieldlink("change", "start", number, env=env)
    assert early.returncode == 1 and "requested" in early.stderr
    bad = await fieldlink("change", "reject", number, env=env_approver)
    assert bad.returncode == 2 and "--comment" in bad.stderr
    ok = await fieldlink("change", "approve", number, "--comment", "fine", env=env_approver)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"{number}: approved"

    upcoming = await fieldlink("change", "list", "--upcoming", env=env)
    row = next(line for line in upcoming.stdout.splitlines() if number in line)
    for word in ("approved", "low", "shop-c", "Say hello"):
        assert word in row, (word, row)

    started = await fieldlink("change", "start", number, env=env)
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith(f"{number}: in_progress")

    async def in_review() -> dict[str, Any] | None:
        shown = await fieldlink("change", "show", number, "--json", env=env)
        change = json.loads(shown.stdout)
        return change if change["state"] == "review" else None

    change = await wait_until(in_review, timeout=60, what="review")
    assert [s["stage"] for s in change["stages"]] == ["pilot", "rest"]
    shown = await fieldlink("change", "show", number, env=env)
    for text in ("echo on every till", "exec: echo from-cli", "pilot", "rest", "ok 1", "fine"):
        assert text in shown.stdout, (text, shown.stdout)

    wrong = await fieldlink("change", "review", number, "--outcome", "great", env=env)
    assert wrong.returncode == 2
    closed = await fieldlink(
        "change", "review", number, "--outcome", "successful", "--comment", "done", env=env
    )
    assert closed.returncode == 0, closed.stderr
    assert closed.stdout.strip() == f"{number}: successful"
    done = await fieldlink("change", "list", "--state", "successful", "--json", env=env)
    assert [c["number"] for c in json.loads(done.stdout)] == [number]


async def test_change_help_texts(tmp_path):
    out = await fieldlink("change", "--help", env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0
    for step in ("list", "show", "new", "approve", "reject", "start", "cancel", "review"):
        assert step in out.stdout
    new = await fieldlink("change", "new", "--help", env={"PATH": "/usr/bin:/bin"})
    for flag in ("--risk", "--pilot", "--gate", "--threshold", "--backout", "--planned"):
        assert flag in new.stdout
