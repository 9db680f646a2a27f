"""The console's pure parts: form fields from catalog schemas, language
choice, and catalogs complete (every string in templates, JavaScript and
console code has a Korean translation)."""

from __future__ import annotations

from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from agent.catalog import advertise
from server.console import i18n
from server.console.forms import fields_of

CONSOLE = Path(i18n.__file__).resolve().parent


def _extracted() -> set[str]:
    method_map = [
        ("**/templates/**.html", "jinja2"),
        ("**/static/js/**.js", "javascript"),
        ("**.py", "python"),
    ]
    options = {"**/templates/**.html": {"extensions": "jinja2.ext.i18n"}}
    keywords = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}
    found = set()
    for _, _, message, _, _ in extract_from_dir(
        str(CONSOLE), method_map, options, keywords=keywords
    ):
        found.add(message if isinstance(message, str) else message[0])
    return found


def test_every_console_string_has_a_korean_translation():
    """Every translatable string of the console is in the Korean catalog, translated."""
    with (CONSOLE / "locale" / "ko" / "LC_MESSAGES" / "messages.po").open("rb") as fh:
        catalog = read_po(fh, locale="ko")
    translated = {m.id for m in catalog if m.id and m.string and "fuzzy" not in m.flags}
    missing = sorted(_extracted() - translated)
    assert not missing, f"run `make i18n` and translate: {missing}"


def test_translations_load_and_the_javascript_gets_its_strings():
    """The Korean catalog loads from its .po file; JS strings come translated."""
    i18n.activate("ko")
    assert i18n.gettext("Dashboard") == "대시보드"
    strings = i18n.js_strings()
    assert "The request failed." in strings and strings["The request failed."] != ""
    i18n.activate("en")
    assert i18n.gettext("Dashboard") == "Dashboard"


def test_accept_language_is_ordered_by_weight():
    """Accept-Language entries come most wanted first; q=0 is dropped."""
    assert i18n.parse_accept_language("en;q=0.5, ko-KR, fr;q=0") == ["ko-kr", "en"]
    assert i18n.parse_accept_language("") == []


def test_form_fields_follow_each_catalog_schema():
    """Every advertised entry's schema makes fields; types, enums and optionals map."""
    by_name = {e.name: fields_of(e.params_schema) for e in advertise()}
    assert by_name["disk.usage"] == []
    top = {f.name: f for f in by_name["process.top"]}
    assert top["sort"].input == "select" and top["sort"].options == ("cpu", "memory")
    assert top["n"].input == "number" and top["n"].data_type == "int"
    assert top["n"].attrs["min"] == "1" and not top["n"].required
    tcp = {f.name: f for f in by_name["net.tcp_check"]}
    assert tcp["host"].required and tcp["port"].required
    assert tcp["timeout"].data_type == "float"
    largest = {f.name: f for f in by_name["disk.largest"]}
    assert largest["path"].input == "text" and not largest["path"].required
    cleanup = {f.name: f for f in by_name["disk.cleanup"]}
    assert cleanup["dry_run"].input == "checkbox" and cleanup["dry_run"].default is True
    argv = {f.name: f for f in by_name["exec"]}["argv"]
    assert argv.data_type == "list"


def test_login_only_redirects_to_our_own_paths():
    """After login, `next` may only name a path on HQ itself."""
    from server.console.account import safe_next

    assert safe_next("/tickets?status=open&priority=P1") == "/tickets?status=open&priority=P1"
    assert safe_next("/machines/ag_1") == "/machines/ag_1"
    for bad in (
        None,
        "",
        "//evil.example",
        "/\\evil.example",
        "https://evil.example/",
        "/\t/evil.example",
        "/\n/evil.example",
        "/ /evil",
        "javascript:alert(1)",
        "evil",
    ):
        assert safe_next(bad) == "/", bad


def test_console_dates_become_utc_times_for_the_api():
    """Date and datetime-local inputs turn into RFC 3339 UTC times; an end date
    counts its whole day; what cannot be read is left for the API to refuse."""
    from server.console.reports import _utc

    assert _utc("2026-03-01") == "2026-03-01T00:00:00+00:00"
    assert _utc("2026-03-01", next_day=True) == "2026-03-02T00:00:00+00:00"
    assert _utc("2026-03-01T09:30") == "2026-03-01T09:30:00+00:00"
    assert _utc(None) is None and _utc("soon") == "soon"


def test_the_machines_list_highlights_full_cpu_memory_and_disk():
    """100 % CPU stands out in the machines list (90 % and up: red, 75 % and up:
    amber); ordinary values stay plain."""
    import re

    import aiohttp_jinja2
    from aiohttp import web

    from server.console import render

    app = web.Application()
    render.setup(app)
    env = aiohttp_jinja2.get_env(app)
    i18n.activate("en")
    row = {
        "id": "ag_1",
        "hostname": "till-1",
        "site": "shop-1",
        "status": "online",
        "health": {"cpu_percent": 100.0, "memory_percent": 40.0, "disk_percent": 80.0},
        "last_seen": None,
        "tags": [],
    }
    html = env.get_template("machines_rows.html").render(rows=[row])
    cells = re.findall(r'<td class="num">(.*?)</td>', html)
    assert len(cells) == 3, html
    assert 'class="bad hot"' in cells[0] and "data-hot" in cells[0] and "100%" in cells[0]
    assert cells[1] == "<span>40%</span>"
    assert 'class="warn"' in cells[2] and "80%" in cells[2]
