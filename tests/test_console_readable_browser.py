"""The console as a person reads it, in a real browser, in English and in
Korean, at 1366x768 and at phone width (390x844): KPI table and SLA chart
(issue 11 item 5), labelled result tables (6), every page in Korean with the
header's language switch (7), machine charts (8) and the session request
that offers only what a machine's policy allows (9).

Screenshots go to test-artifacts/screenshots/readable-*.png.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

from agent.policy import Policy, write_default
from server.store import fleet
from tests import support
from tests.browser import (
    ARTIFACTS,
    SITE,
    World,
    console_world,
    fresh_code,
    log_in,
    new_page,
    screenshot,
)
from tests.support import make_user, start_agent, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

WIDE = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}
VIEWS = [("en", WIDE), ("ko", WIDE), ("en", PHONE), ("ko", PHONE)]
VIEW_IDS = ["en-1366", "ko-1366", "en-390", "ko-390"]


@dataclass
class Data:
    """What the pages show: an admin (sees every page), a ticket with a
    machine, a result and a session, a job, a machine whose policy refuses
    every session, and the names the pages may show as they are."""

    admin: support.TestUser
    state: Any = None
    ticket: str = ""
    ticket_id: str = ""
    session_id: str = ""
    job_id: str = ""
    locked: str = ""  # agent id: allow_shell, allow_exec false, no file roots
    site_id: str = ""
    article: str = ""  # KB-N, published
    problem: str = ""  # PRB-N, a known error
    change: str = ""  # CHG-N, requested
    names: set[str] = field(default_factory=set)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with console_world(tmp_path_factory.mktemp("console")) as w:
        yield w


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def data(world: World) -> Data:
    hq = world.hq
    d = Data(admin=await make_user(hq, "admin", None, totp=True))
    # a machine that refuses shells, commands and files
    handle = await start_agent(hq, world.tmp / "locked", site=SITE, run=False)
    write_default(
        handle.dir.policy_file, Policy(allow_shell=False, allow_exec=False, file_roots=[])
    )
    world.agents.append(handle)
    await handle.start()
    d.locked = handle.agent_id
    agent_id = world.agent.agent_id

    async def reported() -> bool:
        async with hq.sessions() as session:
            found = await fleet.get_agent(session, handle.agent_id)
        h = await world.api("GET", f"/api/v1/agents/{agent_id}/health?limit=5")
        return found is not None and bool(found[0].policy) and len(h["items"]) >= 3

    await wait_until(reported, what="policy and health reported", timeout=30)

    made = await world.api(
        "POST",
        "/api/v1/tickets",
        json={"title": "프린터가 멈춤", "site": SITE, "agent_ids": [agent_id]},
    )
    d.ticket, d.ticket_id = str(made["number"]), str(made["id"])
    await world.api(
        "POST",
        f"/api/v1/agents/{agent_id}/run",
        json={"name": "disk.usage", "ticket_id": d.ticket},
    )
    job = await world.api(
        "POST", "/api/v1/jobs", json={"target": {"site": SITE}, "name": "system.summary"}
    )
    d.job_id = str(job["id"])
    async with hq.client(d.admin.token) as api:
        code = await fresh_code(str(d.admin.totp_secret))
        await api.ok("POST", "/api/v1/auth/step-up", json={"code": code})
        made_session = await api.ok(
            "POST",
            "/api/v1/sessions",
            json={"agent_id": agent_id, "ticket_id": d.ticket, "kind": "exec", "reason": "점검"},
        )
    d.session_id = str(made_session["id"])
    # the knowledge base, problem records and changes, each with one record of its own
    article = await world.api(
        "POST",
        "/api/v1/kb",
        json={
            "title": "프린터가 멈출 때",
            "symptom": "인쇄가 되지 않음",
            "cause": "대기열 멈춤",
            "resolution": "대기열을 비우고 다시 시작",
            "visibility": "public",
            "tags": ["프린터"],
        },
    )
    d.article = str(article["number"])
    for action in ("submit", "publish"):
        await world.api("POST", f"/api/v1/kb/{d.article}/transition", json={"action": action})
    problem = await world.api(
        "POST",
        "/api/v1/problems",
        json={"title": "프린터 대기열이 자꾸 멈춤", "site": SITE, "tickets": [d.ticket]},
    )
    d.problem = str(problem["number"])
    for move in ({"status": "investigating"}, {"status": "known_error", "workaround": "재시작"}):
        await world.api("POST", f"/api/v1/problems/{d.problem}/transition", json=move)
    change = await world.api(
        "POST",
        "/api/v1/changes",
        json={
            "title": "디스크 점검",
            "risk": "low",
            "plan": "모든 기계에서 점검",
            "action": {"name": "disk.usage", "params": {}},
            "target": {"sites": [SITE]},
        },
    )
    d.change = str(change["number"])
    sites = await world.api("GET", "/api/v1/sites")
    d.site_id = next(str(s["id"]) for s in sites["items"] if s["name"] == SITE)
    agents = await world.api("GET", "/api/v1/agents")
    d.names = {SITE, "shop-2", d.admin.username, world.engineer.username}
    d.names |= {world.tech_other.username, "admin", "test"}  # "test": the harness's token
    for a in agents["items"]:
        d.names |= {str(a["hostname"]), str(a["id"])}
    page = await new_page(world.browser)
    await log_in(page, hq.url, d.admin)
    d.state = await page.context.storage_state()
    await page.context.close()
    return d


async def page_for(world: World, data: Data, lang: str, viewport: dict[str, int]) -> Any:
    """The admin's browser in `lang` (the language cookie the header's switch sets)."""
    phone = viewport["width"] < 500
    page = await new_page(
        world.browser,
        storage_state=data.state,
        viewport=viewport,
        is_mobile=phone,
        has_touch=phone,
    )
    await page.context.add_cookies([{"name": "fl_lang", "value": lang, "url": world.hq.url}])
    return page


async def part(locator: Any, name: str) -> None:
    """A screenshot of one part of the page (readable at phone width too)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await locator.screenshot(path=str(ARTIFACTS / f"{name}.png"))


async def no_sideways_scroll(page: Any) -> None:
    width = await page.evaluate("document.documentElement.scrollWidth")
    inner = await page.evaluate("window.innerWidth")
    assert width <= inner, f"{page.url} is {width} px wide in a {inner} px window"


# --- item 7: the header's language switch, and every page in Korean ---------------------------


async def test_the_header_switches_language_on_every_page_and_keeps_the_url(
    world: World, data: Data
) -> None:
    """The switch is in the header of the login page and of a signed-in page;
    it keeps the page (path and query) and the choice sticks."""
    page = await new_page(world.browser)
    await page.goto(world.hq.url + "/login?next=/kpis")
    await page.click(".lang-switch a[hreflang=ko]")
    await page.wait_for_url("**/login?next=/kpis")
    assert await page.locator("h1").inner_text() == "Fieldlink 로그인"
    assert await page.locator("html").get_attribute("lang") == "ko"
    await screenshot(page, "readable-login-ko")
    await log_in(page, world.hq.url, data.admin, next_path="/kpis")
    await page.wait_for_url("**/kpis")
    assert await page.locator("html").get_attribute("lang") == "ko"
    assert await page.locator("#site-nav a[href='/tickets']").inner_text() == "티켓"
    await page.goto(world.hq.url + "/tickets?status=open&priority=P3")
    await page.click(".lang-switch a[hreflang=en]")
    await page.wait_for_url("**/tickets?status=open&priority=P3")
    assert await page.locator("h1").inner_text() == "Tickets"
    assert await page.locator(".lang-switch [aria-current]").inner_text() == "English"
    await page.goto(world.hq.url + "/machines")
    assert await page.locator("h1").inner_text() == "Machines"
    # an unknown language is a 404; `next` only ever leads back into the console
    bad = await page.request.get(world.hq.url + "/language/xx?next=/machines", max_redirects=0)
    assert bad.status == 404
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        away = await page.request.get(
            world.hq.url + "/language/ko", params={"next": target}, max_redirects=0
        )
        assert away.status == 303 and away.headers["location"] == "/", target
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()


# Words a Korean page may show in Latin letters, each for a reason:
ALLOWED = {
    # the product, and proper names of things and standards
    *[
        "Fieldlink",
        "English",
        "TOTP",
        "CPU",
        "API",
        "JSON",
        "HTML",
        "PDF",
        "ISO",
        "MAC",
        "MTU",
        "PID",
        "TCP",
        "UDP",
        "DNS",
        "ICMP",
        "NTP",
        "UTC",
        "SLA",
        "KPI",
    ],
    *[
        "OS",
        "ID",
        "IT",
        "QR",
        "HQ",
        "systemd",
        "chrony",
        "ntpd",
        "nscd",
        "apt",
        "dnf",
        "traceroute",
        "tracepath",
        "ping",
        "resolved",
    ],
    *["init", "TERM", "AAAA"],
    # units
    *["KiB", "MiB", "GiB", "TiB", "kB", "MB", "GB", "min", "ms", "rpm", "Mbit"],
    # what the agents report about themselves: OS, release and CPU names
    *[
        "Linux",
        "GNU",
        "Debian",
        "Ubuntu",
        "bookworm",
        "trixie",
        "bullseye",
        "jammy",
        "noble",
        "Intel",
        "AMD",
        "Xeon",
        "Core",
    ],
    *[
        "EPYC",
        "Processor",
        "Platinum",
        "Gold",
        "Silver",
        "Ryzen",
        "QEMU",
        "Virtual",
        "KVM",
        "Cloud",
        "Model",
        "vCPU",
    ],
    *["GenuineIntel", "AuthenticAMD", "Apple", "Neoverse", "ARM", "Graviton"],
    # identifiers people type: role names and scopes (admin, the CLI), catalog entry
    # names in select options (no code element may go there), a date pattern
    *[
        "admin",
        "hq_engineer",
        "site_tech",
        "site_staff",
        "auditor",
        "global",
        "site",
        "exec",
        "YYYY",
        "MM",
        "DD",
        # the keyword the assignee filter takes for oneself (its placeholder), and the one
        # the problems' site filter takes for HQ-wide problems
        "me",
        "hq",
        # record numbers' prefixes: knowledge-base articles, problems (and the form a link
        # to one takes), changes
        "KB",
        "PRB",
        "PR",
        "CHG",
        # the JSON example of a command's parameters on the change form (a placeholder)
        "argv",
        "echo",
        "hello",
    ],
    # the local administrator: its account and display name as HQ creates them; DNS record
    # types named in help texts
    *["root", "Administrator", "PTR", "IP"],
}
# the machine's policy settings (policy.toml keys) that help texts name
ALLOWED |= set(Policy.model_fields)
# Shown as they are: text inside code, pre, kbd and samp (identifiers,
# commands, output, audit details), anything marked translate="no" (choices an
# agent takes as they are: signals, DNS types), and values of the test's own data
# (hostnames, user and site names, ids); checked: everything else visible.
VISIBLE_TEXT = """() => {
  const out = [];
  const skip = new Set(["CODE", "PRE", "KBD", "SAMP", "SCRIPT", "STYLE", "NOSCRIPT", "TEMPLATE"]);
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    let el = n.parentElement, hidden = false;
    for (let e = el; e; e = e.parentElement) {
      if (skip.has(e.tagName) || e.getAttribute("translate") === "no") { hidden = true; break; }
    }
    if (hidden) continue;
    // a select's choices count when the select is visible (and the choice is offered)
    const choice = el.tagName === "OPTION" && !el.hidden && el.closest("select").checkVisibility();
    if (!choice && !el.checkVisibility({ checkVisibilityCSS: true })) continue;
    const closedDetails = el.closest("details:not([open]) > :not(summary)");
    if (closedDetails) continue;
    out.push(n.textContent);
  }
  for (const el of document.querySelectorAll("[placeholder], [title], [aria-label], img[alt]")) {
    if (!el.checkVisibility()) continue;
    for (const a of ["placeholder", "aria-label", "alt"]) {
      if (el.getAttribute(a)) out.push(el.getAttribute(a));
    }
  }
  for (const b of document.querySelectorAll("input[type=submit], input[type=button]")) {
    out.push(b.value);
  }
  return out.join("\\n");
}"""


def in_context(word: str, text: str) -> str:
    at = re.search(r"\b" + re.escape(word) + r"\b", text)
    start = at.start() if at else 0
    return f"{word} in {text[max(0, start - 30) : start + 30]!r}"


def english_words(text: str, names: set[str]) -> list[str]:
    for name in sorted(names, key=len, reverse=True):
        text = text.replace(name, " ")
    text = re.sub(r"https?://\S+|\S+@\S+", " ", text)  # URLs, mail addresses
    # identifiers: disk.usage, disk[/var].percent, auth.*, agents:read, cli:root
    text = re.sub(r"[A-Za-z0-9_\[\]/*-]+(?:[.:][A-Za-z0-9_\[\]/*-]+)+", " ", text)
    text = re.sub(r"/[\w./{}-]+", " ", text)  # paths
    text = re.sub(r"[A-Za-z_]+=[A-Za-z0-9_]+", " ", text)  # a parameter as typed: dry_run=false
    text = re.sub(r"\b(?:FL|fl)-\d+\b|\b\d{4}-W\d{2}\b", " ", text)  # ticket numbers, ISO weeks
    text = re.sub(r"\b[0-9a-f]{8,}\b|\b[\w]*\d[\w]*\b", " ", text)  # ids and numbered tokens
    words = re.findall(r"[A-Za-z][A-Za-z_]+", text)
    return sorted({w for w in words if w not in ALLOWED})


async def test_every_page_in_korean_has_no_untranslated_words(world: World, data: Data) -> None:
    """Every console page, in Korean, with real data (a ticket with a machine,
    a result, a session, a job, health, KPIs): no English word is left but
    the names and units ALLOWED lists and the test's own data."""
    page = await page_for(world, data, "ko", WIDE)
    agent = world.agent.agent_id
    paths = [
        "/",
        "/machines",
        f"/machines/{agent}",
        f"/machines/{data.locked}",
        "/jobs",
        f"/jobs/{data.job_id}",
        "/tickets",
        f"/tickets/{data.ticket}",
        "/sessions",
        f"/sessions/{data.session_id}",
        "/consents",
        "/alert-rules",
        "/kpis",
        "/kpis?group_by=priority",
        "/reports",
        "/audit",
        "/enroll",
        "/admin",
        f"/admin/sites/{data.site_id}",
        "/profile",
        "/totp",
        "/help",
        "/kb",
        "/kb/new",
        f"/kb/{data.article}",
        "/problems",
        f"/problems/{data.problem}",
        "/changes",
        f"/changes/{data.change}",
        "/no-such-page",
    ]
    found: dict[str, list[str]] = {}
    for path in paths:
        await page.goto(world.hq.url + path)
        await page.wait_for_load_state("load")
        if path == f"/machines/{agent}":
            entry = page.locator("details[data-entry='disk.usage']")
            await entry.locator("summary").click()
            await entry.locator("button[type=submit]").click()
            await entry.locator(".result table.result-table").wait_for()
            await page.locator("#charts canvas").first.wait_for()
            # every catalog form open: parameter labels, help and choices are checked too
            await page.eval_on_selector_all(
                "details[data-entry]", "ds => ds.forEach(d => d.open = true)"
            )
        if path == f"/tickets/{data.ticket}":
            await page.locator("[data-result]").first.click()
            await page.locator(".timeline .result table").first.wait_for()
        if path == f"/jobs/{data.job_id}":
            await page.locator("#job-items .result details").first.wait_for()
            await page.locator("#job-items .result summary").first.click()
        text = await page.evaluate(VISIBLE_TEXT)
        if words := english_words(text, data.names):
            found[path] = [in_context(w, text) for w in words]
        name = path.split("?")[0].replace(agent, "machine").replace(data.locked, "locked")
        name = name.replace(data.ticket, "ticket")
        name = name.replace(data.job_id, "job").replace(data.session_id, "session")
        name = re.sub(r"[^a-z]+", "-", name.replace(data.site_id, "site")).strip("-") or "dashboard"
        await screenshot(page, f"readable-ko-{name}")
    logout = await new_page(world.browser, locale="ko-KR")
    await logout.context.add_cookies([{"name": "fl_lang", "value": "ko", "url": world.hq.url}])
    await logout.goto(world.hq.url + "/login")
    if words := english_words(await logout.evaluate(VISIBLE_TEXT), data.names):
        found["/login"] = words
    assert not found, "\n".join(f"{p}: {w}" for p, w in found.items())
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()
    await logout.context.close()


async def test_the_word_finder_finds_english_and_skips_names() -> None:
    """The Korean check itself: it catches an English word and a raw
    identifier, and lets names, units, dotted ids and numbers through."""
    names = {"shop-1", "till-07"}
    assert english_words("상태 awaiting_consent", names) == ["awaiting_consent"]
    assert english_words("종료 코드 — Running", names) == ["Running"]
    assert english_words("disk.usage on ag_d4bc5a0da8382036: ok", names) == ["ok", "on"]
    text = "shop-1 till-07 disk.usage 12.5 GiB FL-12 CPU 2026-W49 a1b2c3d4e5f6 상태"
    assert english_words(text, names) == []


# --- item 9: session kinds follow the machine's policy; "Link a machine" ------------------------


@pytest.mark.parametrize(("lang", "viewport"), VIEWS, ids=VIEW_IDS)
async def test_session_request_offers_only_what_the_machine_allows(
    world: World, data: Data, lang: str, viewport: dict[str, int]
) -> None:
    """The first machine allows commands and files but no shell: shell is not
    offered and commands is chosen. The locked machine allows nothing: the
    form says so and cannot be sent. With every machine linked, "Link a
    machine" is a note instead of an empty select."""
    page = await page_for(world, data, lang, viewport)
    await page.goto(f"{world.hq.url}/tickets/{data.ticket}")
    form = page.locator("#session-request")
    await form.scroll_into_view_if_needed()

    async def offered() -> list[str]:
        return list(
            await page.eval_on_selector_all(
                "#s-kind option", "os => os.filter(o => !o.hidden && !o.disabled).map(o => o.value)"
            )
        )

    await page.select_option("#s-agent", world.agent.agent_id)
    assert await offered() == ["exec", "files"]
    assert await page.locator("#s-kind").input_value() == "exec"
    assert not await page.locator("#s-kind-none").is_visible()
    await part(form, f"readable-session-form-{lang}-{viewport['width']}")
    await part(page.locator("header.top"), f"readable-header-{lang}-{viewport['width']}")
    await page.select_option("#s-agent", data.locked)
    assert await offered() == []
    assert await page.locator("#s-kind-none").is_visible()
    assert await page.locator("#s-submit").is_disabled()
    await part(form, f"readable-session-none-{lang}-{viewport['width']}")
    await page.select_option("#s-agent", world.agent.agent_id)
    assert await page.locator("#s-submit").is_enabled()
    # link the last machine: the link form becomes a note
    if await page.locator("#link-agent").count():
        async with page.expect_navigation():
            await page.click("#link-agent ~ button")
    assert await page.locator("#link-agent").count() == 0
    assert await page.locator("#link-none").is_visible()
    await no_sideways_scroll(page)
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()


async def test_the_form_is_right_before_any_script_runs(world: World, data: Data) -> None:
    """HQ renders the form for the machine it picks (a linked one that allows
    a session, else the first that does): right even without session_form.js."""
    made = await world.api(
        "POST",
        "/api/v1/tickets",
        json={"title": "잠긴 기기", "site": SITE, "agent_ids": [data.locked]},
    )
    page = await page_for(world, data, "en", WIDE)
    await page.route("**/static/js/session_form.js", lambda route: route.abort())
    await page.goto(f"{world.hq.url}/tickets/{made['number']}")
    assert await page.locator("#s-agent").input_value() == world.agent.agent_id
    assert await page.locator("#s-kind").input_value() == "exec"
    assert await page.locator("#s-kind option[value=shell]").get_attribute("disabled") is not None
    await page.context.close()


# --- item 6: result tables with labels and units ------------------------------------------------


@pytest.mark.parametrize(("lang", "viewport"), VIEWS, ids=VIEW_IDS)
async def test_result_tables_show_labels_with_units(
    world: World, data: Data, lang: str, viewport: dict[str, int]
) -> None:
    """disk.usage's table on the machine page reads "Space used (%)" and
    "Inodes used (%)" (Korean in Korean), never a raw field name; sizes read
    in KiB/MiB/GiB; a finished run shows no "exit code —"."""
    page = await page_for(world, data, lang, viewport)
    await page.goto(f"{world.hq.url}/machines/{world.agent.agent_id}")
    entry = page.locator("details[data-entry='disk.usage']")
    await entry.locator("summary").click()
    await entry.locator("button[type=submit]").click()
    table = entry.locator(".result table.result-table")
    await table.wait_for()
    headers = await table.locator("th").all_inner_texts()
    expected = {
        "en": ["Mount point", "Total", "Space used (%)", "Inodes used (%)"],
        "ko": ["마운트 지점", "전체", "공간 사용률 (%)", "아이노드 사용률 (%)"],
    }[lang]
    for want in expected:
        assert want in headers, headers
    assert not [h for h in headers if re.fullmatch(r"[a-z_]+", h)], headers
    total = headers.index(expected[1])
    first = await table.locator("tbody tr").first.locator("td").nth(total).inner_text()
    assert re.fullmatch(r"[\d.]+ (B|KiB|MiB|GiB|TiB)", first), first
    head = await entry.locator(".run-result > p").first.inner_text()
    assert "—" not in head, head
    await entry.scroll_into_view_if_needed()
    await part(entry, f"readable-result-{lang}-{viewport['width']}")
    await no_sideways_scroll(page)
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()


async def test_result_labels_fallback_in_the_browser(world: World, data: Data) -> None:
    """A field no label names still reads well: words from its name, the unit
    from its suffix (results.js labelOf), and values formatted by that unit."""
    page = await page_for(world, data, "en", WIDE)
    await page.goto(f"{world.hq.url}/machines/{world.agent.agent_id}")
    labels = await page.evaluate(
        """() => ["queue_depth", "swap_in_bytes", "battery_percent", "latency_ms", "percent",
                  "cpu_percent"].map(window.FieldlinkResults.labelOf)"""
    )
    assert labels == [
        "Queue depth",
        "Swap in",
        "Battery (%)",
        "Latency (ms)",
        "Space used (%)",
        "CPU (%)",
    ]
    cells = await page.evaluate(
        """() => [window.FieldlinkResults.cell(1536, "swap_in_bytes"),
                  window.FieldlinkResults.cell(true, "connected"),
                  window.FieldlinkResults.cell(null, "x"),
                  window.FieldlinkResults.cell([], "users")]"""
    )
    assert cells == ["1.5 KiB", "yes", "—", "—"]
    await page.context.close()


# --- item 8: machine charts ---------------------------------------------------------------------


CHART_FACTS = """() => Array.from(document.querySelectorAll("#charts .chart")).map(c => {
  const u = c.fieldlinkPlot;
  const ctx = document.createElement("canvas").getContext("2d");
  ctx.font = u.axes[1].font[0];
  const ticks = (u.axes[1]._values || []).map(String);
  const widest = Math.max(0, ...ticks.map(t => ctx.measureText(t).width));
  const times = (u.axes[0]._values || []).map(String);
  return {metric: c.dataset.metric, width: u.width, box: c.getBoundingClientRect().width,
          ticks: ticks, widest: widest, axis: u.axes[1]._size, times: times};
})"""


@pytest.mark.parametrize(("lang", "viewport"), VIEWS, ids=VIEW_IDS)
async def test_machine_charts_fill_their_width_with_unit_labels(
    world: World, data: Data, lang: str, viewport: dict[str, int]
) -> None:
    """Each health chart is as wide as its box (not ~300 px on a wide page);
    the network axis reads in B/s, kB/s or MB/s and its labels fit the axis;
    the percent axes read in %; times use the console's one format."""
    page = await page_for(world, data, lang, viewport)
    await page.goto(f"{world.hq.url}/machines/{world.agent.agent_id}")
    await page.locator("#charts canvas").first.wait_for()
    # a function, not an expression: the console's CSP forbids evaluating strings
    await page.wait_for_function(
        "() => document.querySelectorAll('#charts .chart').length === 4 && "
        "Array.from(document.querySelectorAll('#charts .chart')).every(c => c.fieldlinkPlot)"
    )
    facts = await page.evaluate(CHART_FACTS)
    for f in facts:
        assert abs(f["width"] - f["box"]) <= 3, f
        assert f["ticks"], f
        assert f["widest"] + 8 <= f["axis"], f  # the tick labels are not clipped
        unit = r"(B|kB|MB|GB)/s" if f["metric"] == "net" else "%"
        assert all(re.fullmatch(r"-?[\d.]+ " + unit, t) for t in f["ticks"]), f
    if viewport["width"] >= 1366:
        assert min(f["width"] for f in facts) >= 450, facts
    else:
        assert max(f["width"] for f in facts) <= viewport["width"], facts
    # one date format: what the page's script writes for a time, the server wrote before it
    server = await page.evaluate(
        "async () => (await (await fetch(location.pathname)).text())"
        '.match(/<time datetime="([^"]+)">([^<]+)</)'
    )
    shown = await page.locator("time").first.inner_text()
    expect = await page.evaluate("(iso) => window.Fieldlink.formatTime(new Date(iso))", server[1])
    assert shown == expect
    assert server[2].endswith(" UTC") and not re.match(r"\d{4}-\d{2}-\d{2} ", server[2]), server
    await page.locator("#charts").scroll_into_view_if_needed()
    await part(page.locator("#charts"), f"readable-charts-{lang}-{viewport['width']}")
    await no_sideways_scroll(page)
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()


# --- item 5: the KPI page -----------------------------------------------------------------------


@pytest.mark.parametrize(("lang", "viewport"), VIEWS, ids=VIEW_IDS)
async def test_kpi_table_fits_or_scrolls_visibly_and_bars_align(
    world: World, data: Data, lang: str, viewport: dict[str, int]
) -> None:
    """At 1366 px the KPI table fits its box; at phone width it scrolls
    sideways with a scrollbar you can see. The bars of each chart start at
    the same x. The page explains what "—" means."""
    page = await page_for(world, data, lang, viewport)
    await page.goto(f"{world.hq.url}/kpis?group_by=priority")
    wrap = page.locator("#kpis").locator("xpath=..")
    box = await wrap.evaluate(
        "w => ({scroll: w.scrollWidth, client: w.clientWidth,"
        " bar: w.offsetHeight - w.clientHeight})"
    )
    hint = page.locator("#kpi-scroll-hint")
    if viewport["width"] >= 1366:
        assert box["scroll"] <= box["client"], box
        assert not await hint.is_visible()
    else:
        # phones draw no scrollbar until touched: the page says it scrolls
        assert box["scroll"] > box["client"] and await hint.is_visible(), box
        await wrap.evaluate("w => w.scrollBy(200, 0)")
        assert await wrap.evaluate("w => w.scrollLeft") > 0
    assert await page.locator("#kpi-dash-note").is_visible()
    for fig in await page.locator("figure.card").all():
        xs = await fig.locator("meter").evaluate_all(
            "ms => ms.map(m => Math.round(m.getBoundingClientRect().left))"
        )
        assert len(set(xs)) <= 1, xs
    rows = await page.locator("figure.card").last.locator("li label").all_inner_texts()
    assert rows, "no SLA rows"
    assert not [r for r in rows if re.search(r"\b(ack|response|resolve)$", r)] or lang == "en"
    await part(page.locator("main"), f"readable-kpis-{lang}-{viewport['width']}")
    await no_sideways_scroll(page)
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()
