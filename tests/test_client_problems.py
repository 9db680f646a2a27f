"""`fieldlink problem ...` end to end, run as separate processes against a real
HQ on 127.0.0.1: open with incidents, list, illegal and incomplete moves with
their messages and exit status, the known error's workaround on `ticket show`,
link and unlink, and a proposal (an incident reopened twice) accepted."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from tests.support import HQHandle, make_user
from tests.test_client_cli import as_user, fieldlink


async def _ticket(hq: HQHandle, site: str, title: str) -> str:
    async with hq.client(hq.admin_token) as api:
        made = await api.ok("POST", "/api/v1/tickets", json={"title": title, "site": site})
    return str(made["number"])


async def test_problem_commands(sqlite_hq, tmp_path):
    """Open, list, refused and incomplete moves, known error: each does what its help
    says, with HQ's refusals on stderr; `ticket show` draws the workaround."""
    hq = sqlite_hq
    async with hq.client(hq.admin_token) as api:
        await api.ok("POST", "/api/v1/sites", json={"name": "shop-p"})
    t1 = await _ticket(hq, "shop-p", "till 1 freezes")
    t2 = await _ticket(hq, "shop-p", "till 2 freezes")
    user = await make_user(hq, "hq_engineer", totp=True)
    env = as_user(tmp_path / "cfg", hq, user.token)

    made = await fieldlink(
        "problem", "new", "--site", "shop-p", "--title", "Tills freeze",
        "--ticket", t1, "--ticket", t2.removeprefix("FL-"), "--priority", "P2", env=env,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert re.fullmatch(r"PRB-\d+\n", made.stdout)
    number = made.stdout.strip()
    assert "2 incident(s)" in made.stderr

    listed = await fieldlink("problem", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if number in line)
    for word in ("P2", "new", " 2 ", "shop-p", "Tills freeze"):
        assert word in row, (word, row)

    illegal = await fieldlink("problem", "status", number, "closed", env=env)
    assert illegal.returncode == 1
    assert "cannot become closed" in illegal.stderr
    assert "investigating, known_error, resolved" in illegal.stderr
    missing = await fieldlink("problem", "status", number, "known_error", env=env)
    assert missing.returncode == 1 and "workaround:" in missing.stderr
    typo = await fieldlink("problem", "status", number, "knwon", env=env)
    assert typo.returncode == 2 and "known_error" in typo.stderr

    known = await fieldlink(
        "problem", "status", number.lower(), "known-error",
        "--workaround", "Restart the till service", env=env,
    )  # fmt: skip
    assert known.returncode == 0, known.stderr
    assert known.stdout == f"{number}: new -> known_error\n"
    shown = await fieldlink("ticket", "show", t1, env=env)
    assert shown.returncode == 0, shown.stderr
    assert f"Known error {number}: workaround" in shown.stdout
    assert "Restart the till service" in shown.stdout


async def test_link_edit_note_resolve_and_show(sqlite_hq, tmp_path):
    """link, unlink, edit, note, status resolved with its incidents, show."""
    hq = sqlite_hq
    async with hq.client(hq.admin_token) as api:
        await api.ok("POST", "/api/v1/sites", json={"name": "shop-p"})
        t1 = await _ticket(hq, "shop-p", "till 1 freezes")
        t2 = await _ticket(hq, "shop-p", "till 2 freezes")
        t3 = await _ticket(hq, "shop-p", "till 3 freezes")
        made = await api.ok(
            "POST",
            "/api/v1/problems",
            json={"title": "Tills freeze", "site": "shop-p", "tickets": [t1, t2]},
        )
        number = made["number"]
        await api.ok(
            "POST",
            f"/api/v1/problems/{number}/transition",
            json={"status": "known_error", "workaround": "Restart the till service"},
        )
    user = await make_user(hq, "hq_engineer", totp=True)
    env = as_user(tmp_path / "cfg", hq, user.token)

    linked = await fieldlink("problem", "link", number, t3, env=env)
    assert linked.returncode == 0, linked.stderr
    assert f"{number}: 3 incident(s): {t1}, {t2}, {t3}" in linked.stdout
    unlinked = await fieldlink("problem", "unlink", number, t3, env=env)
    assert unlinked.returncode == 0 and f"{t3} unlinked" in unlinked.stdout
    edited = await fieldlink(
        "problem", "edit", number, "--root-cause", "driver 4.2 leaks handles", env=env
    )
    assert edited.returncode == 0 and "root_cause" in edited.stdout
    resolved = await fieldlink(
        "problem", "status", number, "resolved", "--resolution", "driver 4.3",
        "--resolve-incidents", env=env,
    )  # fmt: skip
    assert resolved.returncode == 0, resolved.stderr
    async with hq.client(hq.admin_token) as api:
        for ref in (t1, t2):
            ticket_now = await api.ok("GET", f"/api/v1/tickets/{ref}")
            assert ticket_now["resolution_code"] == "problem_resolved"
        still_open = await api.ok("GET", f"/api/v1/tickets/{t3}")
    assert still_open["status"] == "new"

    noted = await fieldlink(
        "problem", "note", number, "-", env=env, stdin="vendor confirms the leak\n"
    )
    assert noted.returncode == 0 and noted.stdout == f"{number}: note added\n"
    empty = await fieldlink("problem", "note", number, " ", env=env)
    assert empty.returncode != 0 and "empty" in empty.stderr
    detail = await fieldlink("problem", "show", number, env=env)
    assert detail.returncode == 0, detail.stderr
    for text in (
        "Workaround",
        "Root cause",
        "driver 4.2 leaks handles",
        "Resolution",
        "vendor confirms the leak",
        t1,
        t2,
    ):
        assert text in detail.stdout, text
    assert "History" in detail.stdout and "known_error -> resolved" in detail.stdout
    as_json = await fieldlink("problem", "show", number, "--json", env=env)
    assert json.loads(as_json.stdout)["status"] == "resolved"


async def test_proposal_commands(sqlite_hq, tmp_path):
    """An incident reopened twice from the command line shows up under
    `problem list --proposed`; dismiss asks for a reason; accept makes it new."""
    hq = sqlite_hq
    async with hq.client(hq.admin_token) as api:
        await api.ok("POST", "/api/v1/sites", json={"name": "shop-p"})
    user = await make_user(hq, "hq_engineer", totp=True)
    env = as_user(tmp_path / "cfg", hq, user.token)
    t4 = await _ticket(hq, "shop-p", "scanner drops")
    for _ in range(2):
        for action in ("resolve", "reopen"):
            step = await fieldlink("ticket", action, t4, env=env)
            assert step.returncode == 0, step.stderr
    proposed = await fieldlink("problem", "list", "--proposed", "--json", env=env)
    items = json.loads(proposed.stdout)
    assert len(items) == 1 and items[0]["origin_label"] == t4
    no_reason = await fieldlink("problem", "dismiss", items[0]["number"], env=env)
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    accepted = await fieldlink("problem", "accept", items[0]["number"], env=env)
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout == f"{items[0]['number']}: proposed -> new\n"
    opened = await fieldlink("problem", "list", "--status", "open", "--json", env=env)
    assert [p["number"] for p in json.loads(opened.stdout)] == [items[0]["number"]]


def test_problem_help_texts():
    """Every problem command explains itself."""
    commands = ("list", "show", "new", "edit", "link", "unlink", "status", "note", "accept")
    for command in (*commands, "dismiss"):
        out = subprocess.run(
            [sys.executable, "-m", "server.cli", "problem", command, "--help"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0 and f"usage: fieldlink problem {command}" in out.stdout
        description = out.stdout.split("\n\n")[1]
        assert len(description) > 30 and not description.startswith("positional")
