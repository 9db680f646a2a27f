"""`fieldlink kb search|show|new|publish|from-ticket` end to end, as separate
processes against a real HQ on 127.0.0.1, and the article-file reader."""

from __future__ import annotations

import json
import re
import sys

import pytest

from server.client.errors import UsageError
from server.client.kb import article_ref, parse_article
from tests.support import make_user
from tests.test_client_cli import as_user, fieldlink

ARTICLE = """Title: Receipt printer prints blank paper
Tags: printer, till
Visibility: site shop-k

## Symptom
The till's receipt printer feeds paper
but nothing is printed.

## Cause
Thermal paper upside down.

## Resolution
Turn the roll over: shiny side to the head.
"""


def test_article_file_and_refs():
    got = parse_article(ARTICLE)
    assert got == {
        "title": "Receipt printer prints blank paper",
        "tags": ["printer", "till"],
        "visibility": "site",
        "site": "shop-k",
        "symptom": "The till's receipt printer feeds paper\nbut nothing is printed.",
        "cause": "Thermal paper upside down.",
        "resolution": "Turn the roll over: shiny side to the head.",
    }
    with pytest.raises(UsageError):
        parse_article("just some text\n## Symptom\nx")
    assert article_ref("7") == "KB-7" and article_ref("kb-7") == "KB-7"
    assert article_ref("kb_abc") == "kb_abc"


async def test_kb_from_the_command_line(sqlite_hq, tmp_path):
    """new prints the number alone; search finds it (ranked, marked) once
    published; show prints its sections; bad input exits non-zero with HQ's
    field; an engineer cannot publish (exit 1), an admin can."""
    hq = sqlite_hq
    async with hq.client(hq.admin_token) as api:
        await api.ok("POST", "/api/v1/sites", json={"name": "shop-k"})
    eng = await make_user(hq, "hq_engineer", totp=True)
    env = as_user(tmp_path / "cfg", hq, eng.token)
    admin_env = as_user(tmp_path / "admin", hq, hq.admin_token)

    made = await fieldlink(
        "kb",
        "new",
        "--title",
        "Scanner beeps but no item appears",
        "--symptom",
        "beep, nothing in the sale",
        "--resolution",
        "scan the USB keyboard US barcode",
        "--tag",
        "scanner",
        env=env,
    )
    assert made.returncode == 0, made.stderr
    assert re.fullmatch(r"KB-\d+\n", made.stdout)
    number = made.stdout.strip()

    path = tmp_path / "article.md"
    path.write_text(ARTICLE, encoding="utf-8")
    filed = await fieldlink("kb", "new", "--file", str(path), env=env)
    assert filed.returncode == 0, filed.stderr
    second = filed.stdout.strip()

    # --edit: the editor gets the template filled from the options; what it saves is sent
    script = tmp_path / "editor.py"
    script.write_text(
        "import sys, pathlib\n"
        "p = pathlib.Path(sys.argv[1])\n"
        "t = p.read_text()\n"
        "assert 'Title: Drawer stuck' in t and 'Visibility: site shop-k' in t, t\n"
        "t = t.replace('## Resolution\\n', '## Resolution\\nPress the latch twice.\\n')\n"
        "p.write_text(t)\n",
        encoding="utf-8",
    )
    editor_env = {**env, "EDITOR": f"{sys.executable} {script}"}
    edited = await fieldlink(
        "kb",
        "new",
        "--edit",
        "--title",
        "Drawer stuck",
        "--visibility",
        "site",
        "--site",
        "shop-k",
        env=editor_env,
    )
    assert edited.returncode == 0, edited.stderr
    shown = await fieldlink("kb", "show", edited.stdout.strip(), "--json", env=env)
    got = json.loads(shown.stdout)
    assert (got["title"], got["resolution"], got["site"]) == (
        "Drawer stuck",
        "Press the latch twice.",
        "shop-k",
    )
    failing = await fieldlink(
        "kb", "new", "--edit", env={**env, "EDITOR": f"{sys.executable} -c 'raise SystemExit(3)'"}
    )
    assert failing.returncode == 2 and "nothing sent" in failing.stderr

    bad = await fieldlink("kb", "new", "--title", "x", "--tag", "no spaces please", env=env)
    assert bad.returncode == 1 and "tags" in bad.stderr
    untitled = await fieldlink("kb", "new", "--symptom", "x", env=env)
    assert untitled.returncode == 2 and "title" in untitled.stderr

    refused = await fieldlink("kb", "publish", number, env=env)
    assert refused.returncode == 1 and "kb:publish" in refused.stderr
    submitted = await fieldlink("kb", "submit", number, env=env)
    assert submitted.returncode == 0 and submitted.stdout == f"{number}: review\n"
    for ref in (number, second):
        published = await fieldlink("kb", "publish", ref, env=admin_env)
        assert published.returncode == 0, published.stderr
        assert published.stdout == f"{ref}: published\n"
    again = await fieldlink("kb", "publish", number, env=admin_env)
    assert again.returncode == 1 and "allowed" in again.stderr

    found = await fieldlink("kb", "search", "scanner", "beeping", env=env)
    assert found.returncode == 0, found.stderr
    assert number in found.stdout and second not in found.stdout
    as_json = await fieldlink("kb", "search", "printer", "--json", env=env)
    items = json.loads(as_json.stdout)
    assert [i["number"] for i in items] == [second] and "«" in items[0]["snippet"]
    nothing = await fieldlink("kb", "search", "zebra", env=env)
    assert nothing.returncode == 0 and "no articles match" in nothing.stderr

    shown = await fieldlink("kb", "show", second, env=env)
    assert shown.returncode == 0, shown.stderr
    for word in ("Symptom", "Thermal paper upside down", "site (shop-k)", "printer, till"):
        assert word in shown.stdout, word
    missing = await fieldlink("kb", "show", "KB-9999", env=env)
    assert missing.returncode == 1 and "not found" in missing.stderr

    # a resolved ticket becomes a draft in one step
    async with hq.client(hq.admin_token) as api:
        t = await api.ok(
            "POST", "/api/v1/tickets", json={"title": "drawer stuck", "site": "shop-k"}
        )
        await api.ok(
            "POST",
            f"/api/v1/tickets/{t['number']}/transition",
            json={"action": "resolve", "resolution_text": "cleaned the latch"},
        )
    drafted = await fieldlink("kb", "from-ticket", t["number"], env=env)
    assert drafted.returncode == 0, drafted.stderr
    article = await fieldlink("kb", "show", drafted.stdout.strip(), "--json", env=env)
    data = json.loads(article.stdout)
    assert data["state"] == "draft" and data["resolution"] == "cleaned the latch"
