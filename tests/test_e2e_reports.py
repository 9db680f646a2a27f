"""Review reports end to end: data made through the API (tickets resolved and
rated with comments, a problem with linked incidents, a change run on a real
agent and closed successful), the JSON figures checked exactly, the HTML and
the PDF (parsed back) checked, scope and bad periods, and `fieldlink report`."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pypdf
import pytest

from server.console import reportdoc
from server.itsm import review
from tests import support
from tests.support import HQHandle, make_user
from tests.test_client_cli import as_user
from tests.test_e2e_changes import exec_change, ok, state_of
from tests.test_e2e_runs_api import online_agent


def this_month() -> str:
    now = datetime.now(UTC)
    return f"{now.year}-{now.month:02d}"


async def get(hq: HQHandle, token: str, path: str, **params: str) -> tuple[int, Any, str, bytes]:
    """Status, JSON (or None), content type and raw body."""
    async with (
        hq.client(token) as api,
        api._session.get(hq.url + path, params=params, headers=api.headers()) as resp,
    ):
        raw = await resp.read()
        ctype = resp.content_type
        data = await resp.json() if ctype == "application/json" else None
    return resp.status, data, ctype, raw


async def seed(hq: HQHandle, agent_factory: Any) -> dict[str, Any]:
    """shop-1: three requests by a staff member, two resolved and rated with
    comments (5 and 2), a problem linking two of them, a change closed
    successful; shop-2: one ticket (only in the HQ report)."""
    agent = await online_agent(
        hq, agent_factory, site="shop-1", allow_exec=True, require_consent=False
    )
    await ok(hq, hq.admin_token, "POST", "/api/v1/sites", json={"name": "shop-2"})
    staff = await make_user(hq, "site_staff", "shop-1")
    numbers = []
    for title in ("till freezes at login", "scanner beeps, no item", "receipt printer jams"):
        made = await ok(
            hq, staff.token, "POST", "/api/v1/tickets", json={"title": title, "site": "shop-1"}
        )
        numbers.append(made["number"])
    await ok(
        hq, hq.admin_token, "POST", "/api/v1/tickets", json={"title": "other", "site": "shop-2"}
    )
    assert len(set(numbers)) == 3, numbers
    for n in numbers[:2]:
        await ok(
            hq,
            hq.admin_token,
            "POST",
            f"/api/v1/tickets/{n}/transition",
            json={"action": "resolve", "resolution_text": "restarted"},
        )
    await ok(
        hq,
        staff.token,
        "POST",
        f"/api/v1/tickets/{numbers[0]}/rating",
        json={"score": 5, "comment": "fixed in minutes"},
    )
    await ok(
        hq,
        staff.token,
        "POST",
        f"/api/v1/tickets/{numbers[1]}/rating",
        json={"score": 2, "comment": "took all morning"},
    )
    problem = await ok(
        hq,
        hq.admin_token,
        "POST",
        "/api/v1/problems",
        json={"title": "Tills freeze after update", "site": "shop-1", "tickets": numbers[:2]},
    )
    engineer = await make_user(hq, "hq_engineer", totp=True)
    approver = await make_user(hq, "admin", totp=True)
    change = await ok(hq, engineer.token, "POST", "/api/v1/changes", json=exec_change([agent]))
    number = change["number"]
    await ok(hq, approver.token, "POST", f"/api/v1/changes/{number}/approve", json={})
    await ok(hq, engineer.token, "POST", f"/api/v1/changes/{number}/start")
    await support.wait_until(
        lambda: state_of(hq, number, "review"), timeout=60, what="the change ran"
    )
    await ok(
        hq,
        engineer.token,
        "POST",
        f"/api/v1/changes/{number}/review",
        json={"outcome": "successful", "comment": "done"},
    )
    return {"tickets": numbers, "problem": problem["number"], "change": number}


async def test_site_report_figures_html_pdf_and_scope(hq, agent_factory):
    """The site report's figures are exact; HTML and PDF show them; another
    site's tech gets 404, a bad period 422 naming it; the HQ report adds shop-2."""
    made = await seed(hq, agent_factory)
    period = this_month()
    status, r, ctype, _ = await get(
        hq, hq.admin_token, "/api/v1/reports", site="shop-1", period=period
    )
    assert status == 200, r
    assert (r["scope"], r["site"], r["sites"]) == ("shop-1", "shop-1", ["shop-1"])
    assert r["period"]["label"] == period and r["period"]["kind"] == "month"
    k = r["kpis"]
    assert (k["tickets"], k["resolved"]) == (3, 2)
    assert k["csat"] == 0.5 and k["csat_response_rate"] == 1.0
    targets = {t["kpi"]: t for t in r["targets"]}
    assert targets["csat"]["met"] is False and targets["csat"]["target"] == 0.8
    assert targets["reopen_rate"]["value"] == 0.0 and targets["reopen_rate"]["met"] is True
    assert [p["period"] for p in r["trend"]][-1] == period and len(r["trend"]) == 6
    assert [(p["opened"], p["resolved"]) for p in r["trend"]] == [(0, 0)] * 5 + [(3, 2)]
    assert r["trend"][-1]["mttr_seconds"] == k["mttr_seconds"] and k["mttr_seconds"] > 0
    today = datetime.now(UTC).date().isoformat()
    assert [d for d in r["daily"] if d["opened"] or d["resolved"]] == [
        {"day": today, "opened": 3, "resolved": 2}
    ]
    assert r["top_problems"] == [
        {
            "number": made["problem"],
            "title": "Tills freeze after update",
            "status": "new",
            "priority": r["top_problems"][0]["priority"],
            "site": "shop-1",
            "incidents": 2,
        }
    ]
    ch = r["changes"]
    assert [c["number"] for c in ch["items"]] == [made["change"]]
    assert (ch["requested"], ch["closed"], ch["successful"], ch["success_rate"]) == (1, 1, 1, 1.0)
    cs = r["csat"]
    assert (cs["ratings"], cs["average"], cs["satisfied"]) == (2, 3.5, 0.5)
    assert [(c["ticket"], c["rating"], c["comment"]) for c in cs["comments"]] == [
        (made["tickets"][0], 5, "fixed in minutes"),
        (made["tickets"][1], 2, "took all morning"),
    ]
    assert r["deflection_rate"] == 0.0

    # HQ: both sites
    status, hq_r, _, _ = await get(hq, hq.admin_token, "/api/v1/reports", period=period)
    assert status == 200 and hq_r["scope"] == "HQ"
    assert {"shop-1", "shop-2"} <= set(hq_r["sites"]) and hq_r["kpis"]["tickets"] == 4
    rows = {row["site"]: row for row in hq_r["per_site"]}
    assert (rows["shop-1"]["opened"], rows["shop-1"]["resolved"], rows["shop-1"]["csat"]) == (
        3,
        2,
        0.5,
    )
    assert (rows["shop-2"]["opened"], rows["shop-2"]["resolved"], rows["shop-2"]["csat"]) == (
        1,
        0,
        None,
    )
    assert r["per_site"] == [{**rows["shop-1"]}]
    status, _, _, raw = await get(hq, hq.admin_token, "/api/v1/reports/html", period=period)
    assert status == 200 and 'data-site="shop-2"' in raw.decode()

    # HTML: standalone, with the figures and the plots
    status, _, ctype, raw = await get(
        hq, hq.admin_token, "/api/v1/reports/html", site="shop-1", period=period
    )
    page = raw.decode()
    assert status == 200 and ctype == "text/html"
    assert "shop-1" in page and made["problem"] in page and "took all morning" in page
    assert page.count("<svg") == 2 and "<?xml" not in page
    assert 'data-kpi="csat"' in page and ">50%<" in page

    # PDF, parsed back
    status, _, ctype, raw = await get(
        hq, hq.admin_token, "/api/v1/reports/pdf", site="shop-1", period=period
    )
    assert status == 200 and ctype == "application/pdf" and raw.startswith(b"%PDF")
    text = "\n".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(raw)).pages)
    assert "shop-1" in text and "SLA compliance" in text and made["problem"] in text
    assert "fixed in minutes" in text and made["change"] in text

    # Korean, where the font is installed
    status, _, _, raw = await get(
        hq, hq.admin_token, "/api/v1/reports/pdf", site="shop-1", period=period, lang="ko"
    )
    text = "\n".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(raw)).pages)
    if reportdoc.korean_font() is not None:
        assert "검토 보고서" in text and "shop-1" in text
    else:
        assert "Review report" in text

    # scope and bad input
    other = await make_user(hq, "site_tech", "shop-2")
    status, err, _, _ = await get(hq, other.token, "/api/v1/reports", site="shop-1", period=period)
    assert status == 404 and err["error"]["fields"] == {"site": "not found"}
    status, own, _, _ = await get(hq, other.token, "/api/v1/reports", period=period)
    assert status == 200 and own["sites"] == ["shop-2"] and own["kpis"]["tickets"] == 1
    staff = await make_user(hq, "site_staff", "shop-1")
    status, _, _, _ = await get(hq, staff.token, "/api/v1/reports", site="shop-1", period=period)
    assert status == 403
    for bad in ("2026-13", "2026-W60", "november", "2026-11-05..2026-11-01"):
        for fmt in ("", "/pdf"):
            status, err, _, _ = await get(
                hq, hq.admin_token, "/api/v1/reports" + fmt, site="shop-1", period=bad
            )
            assert status == 422 and "period" in err["error"]["fields"], (bad, err)


async def test_fieldlink_report_writes_the_pdf(sqlite_hq, tmp_path):
    """`fieldlink report --site S --period P` writes report-S-P.pdf in the current
    directory and prints its name; --format json --output - prints the JSON; a bad
    period exits non-zero naming it."""
    hq = sqlite_hq
    await ok(hq, hq.admin_token, "POST", "/api/v1/sites", json={"name": "shop-9"})
    await ok(hq, hq.admin_token, "POST", "/api/v1/tickets", json={"title": "t", "site": "shop-9"})
    env = as_user(tmp_path / "cfg", hq, hq.admin_token)
    period = this_month()

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "server.cli", *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )

    done = await asyncio.to_thread(cli, "report", "--site", "shop-9", "--period", period)
    assert done.returncode == 0, done.stderr
    name = f"report-shop-9-{period}.pdf"
    assert done.stdout.strip() == name
    pdf = pypdf.PdfReader(tmp_path / name)
    text = "\n".join(p.extract_text() for p in pdf.pages)
    assert "shop-9" in text and "SLA compliance" in text

    done = await asyncio.to_thread(
        cli, "report", "--site", "shop-9", "--period", period, "--format", "json", "--output", "-"
    )
    assert done.returncode == 0, done.stderr
    import json

    assert json.loads(done.stdout)["kpis"]["tickets"] == 1

    done = await asyncio.to_thread(cli, "report", "--period", period, "--format", "html")
    assert done.returncode == 0 and (tmp_path / f"report-HQ-{period}.html").exists()

    done = await asyncio.to_thread(cli, "report", "--help")
    assert done.returncode == 0 and "--period" in done.stdout and "2026-W47" in done.stdout

    done = await asyncio.to_thread(cli, "report", "--site", "shop-9", "--period", "2026-13")
    assert done.returncode != 0 and "period" in done.stderr


def test_periods_parse_and_chain():
    """Months, ISO weeks and day ranges; the trend walks back by the same length."""
    nov = review.parse_period("2026-11")
    assert (nov.start.isoformat(), nov.end.isoformat()) == ("2026-11-01", "2026-12-01")
    assert [p.label for p in review.trend_periods(nov)] == [
        "2026-06",
        "2026-07",
        "2026-08",
        "2026-09",
        "2026-10",
        "2026-11",
    ]
    jan = review.parse_period("2027-01").previous()
    assert jan.label == "2026-12"
    w1 = review.parse_period("2026-W01")
    assert w1.start.isoformat() == "2025-12-29" and w1.previous().label == "2025-W52"
    span = review.parse_period("2026-11-01..2026-11-15")
    assert len(span.days()) == 15 and span.previous().label == "2026-10-17..2026-10-31"
    for bad in ("2026-00", "2026-W54", "2026-11-31..2026-12-01", "x", "2026-01-01..2027-06-01"):
        try:
            review.parse_period(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def _fact(n: int, site: str, created: str, resolved: str | None = None, **kw: Any) -> Any:
    from server.itsm import kpi

    at = datetime.fromisoformat(created)
    return kpi.Fact(
        id=f"t{n}",
        site=site,
        priority="P3",
        assignee=None,
        created_at=at,
        resolved_at=datetime.fromisoformat(resolved) if resolved else None,
        **kw,
    )


def test_figures_on_fixed_facts():
    """Trend points count by creation (opened, SLA) and by resolution (resolved,
    MTTR); targets are met or missed or unknown; success rate over outcomes."""
    nov = review.parse_period("2026-11")
    facts = [
        _fact(
            1,
            "a",
            "2026-10-30T10:00:00+00:00",
            "2026-11-02T10:00:00+00:00",
            sla={"resolve": "missed"},
        ),
        _fact(
            2,
            "a",
            "2026-11-03T10:00:00+00:00",
            "2026-11-03T12:00:00+00:00",
            sla={"ack": "met", "resolve": "met"},
            rating=5,
            has_requester=True,
        ),
        _fact(3, "b", "2026-11-04T10:00:00+00:00", sla={"ack": "breached"}, rating=None),
        _fact(
            4,
            "b",
            "2026-11-05T10:00:00+00:00",
            "2026-11-05T10:00:00+00:00",
            resolution_code="self_served",
            source="help",
        ),
    ]
    oct_point, nov_point = (review.trend_point(facts, p) for p in review.trend_periods(nov, 1))
    assert (oct_point["opened"], oct_point["resolved"], oct_point["sla_compliance"]) == (1, 0, 0.0)
    # November: 2 worked tickets opened (the self-served one counts only in deflection);
    # resolved in November: #1 (3 days) and #2 (2 hours)
    assert (nov_point["opened"], nov_point["resolved"]) == (2, 2)
    assert nov_point["sla_compliance"] == 2 / 3
    assert nov_point["mttr_seconds"] == (3 * 86400 + 2 * 3600) / 2
    figures = review.period_kpis(facts, nov)
    assert figures["deflection_rate"] == 1 / 3 and figures["sla_compliance_overall"] == 2 / 3
    verdicts = {t["kpi"]: t["met"] for t in review.against_targets(figures)}
    assert verdicts["sla_compliance_overall"] is False and verdicts["deflection_rate"] is True
    assert verdicts["csat"] is True and verdicts["escalation_rate"] is True
    rows = review.per_site(facts, nov, ["a", "b", "c"])
    assert [(r["site"], r["opened"], r["resolved"]) for r in rows] == [
        ("a", 1, 2),
        ("b", 1, 0),
        ("c", 0, 0),
    ]
    assert [d["opened"] for d in review.daily(facts, nov)][1:4] == [0, 1, 1]
    assert review.success_rate(["successful", "failed", None, "successful"]) == 2 / 3
    assert review.success_rate([None]) is None


async def test_report_targets_come_from_settings(hq_factory, tmp_path):
    """HQ's `report_targets` replaces a default target; an unknown KPI or a
    value outside 0-1 is refused when the settings load."""
    from server.config.settings import load_settings

    hq = await hq_factory(
        f"sqlite+aiosqlite:///{tmp_path / 'hq.db'}", report_targets={"csat": 0.25}
    )
    await ok(hq, hq.admin_token, "POST", "/api/v1/sites", json={"name": "shop-t"})
    status, r, _, _ = await get(
        hq, hq.admin_token, "/api/v1/reports", site="shop-t", period="2026-11"
    )
    assert status == 200
    targets = {t["kpi"]: t["target"] for t in r["targets"]}
    assert targets["csat"] == 0.25 and targets["reopen_rate"] == 0.05
    for bad in ({"nps": 0.5}, {"csat": 85}):
        with pytest.raises(ValueError, match="report_targets"):
            load_settings(tmp_path / "other", report_targets=bad)


def test_pdf_takes_long_text_and_html_keeps_it_whole():
    """A rating comment of 5000 characters (the API's limit) and a long title
    still make a PDF (cut to fit one page's row) in both languages; the HTML
    keeps the text whole and escaped."""
    p = review.parse_period("2026-11")
    figures = review.period_kpis([], p)
    comment = ("slow " * 999 + "<b>end</b>")[:5000]
    korean = "계산대가 멈췄어요"
    report = {
        "scope": "shop-x",
        "site": "shop-x",
        "sites": ["shop-x"],
        "period": {"label": "2026-11", "kind": "month", "start": "2026-11-01", "end": "2026-12-01"},
        "generated_at": "2026-12-01T08:00:00Z",
        "kpis": figures,
        "targets": review.against_targets(figures),
        "trend": [review.trend_point([], q) for q in review.trend_periods(p)],
        "daily": review.daily([], p),
        "per_site": [],
        "top_problems": [
            {
                "number": "PRB-1",
                "title": "t" * 300,
                "status": "new",
                "priority": "P3",
                "site": "shop-x",
                "incidents": 2,
            }
        ],
        "changes": {
            "items": [],
            "requested": 0,
            "closed": 0,
            "successful": 0,
            "failed": 0,
            "rolled_back": 0,
            "success_rate": None,
        },
        "csat": {
            "ratings": 2,
            "average": 1.0,
            "satisfied": 0.0,
            "comments": [
                {
                    "ticket": f"FL-{n}",
                    "site": "shop-x",
                    "rating": 1,
                    "comment": comment,
                    "rated_at": "2026-11-02T00:00:00Z",
                }
                for n in (1, 2)
            ]
            + [
                {
                    "ticket": "FL-3",
                    "site": "shop-x",
                    "rating": 2,
                    "comment": korean,
                    "rated_at": "2026-11-03T00:00:00Z",
                }
            ],
        },
        "deflection_rate": None,
    }
    for lang in ("en", "ko"):
        data = reportdoc.pdf(report, lang)
        text = "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(data)).pages)
        assert "FL-2" in text and "PRB-1" in text
        if reportdoc.korean_font() is not None:  # Hangul in either language's PDF
            assert korean in text
        page = reportdoc.html(report, lang)
        assert page.count("slow slow") >= 2 and "&lt;b&gt;en<" in page and "<b>en" not in page


EDGE_PERIODS = (
    "0001-W01",
    "9999-W52",
    "0001-01-01..0001-01-10",
    "9999-12-25..9999-12-31",
    "0001-01",
    "9999-12",
    "\uff12\uff10\uff12\uff16-11",  # full-width digits
    "2026-W\uff14\uff17",
    "\uff12\uff10\uff12\uff16-11-01..2026-11-02",
)


async def test_periods_out_of_range_answer_422_naming_period(sqlite_hq):
    """Periods at the calendar's edges (their trend or end overflows a date)
    and digits other than ASCII ones answer 422 naming `period`, never 500."""
    hq = sqlite_hq
    await ok(hq, hq.admin_token, "POST", "/api/v1/sites", json={"name": "shop-e"})
    for bad in EDGE_PERIODS:
        for fmt in ("", "/html", "/pdf"):
            status, err, _, raw = await get(
                hq, hq.admin_token, "/api/v1/reports" + fmt, site="shop-e", period=bad
            )
            assert status == 422, (bad, fmt, status, raw[:300])
            assert "period" in err["error"]["fields"], (bad, err)


def test_periods_keep_to_a_sane_range_of_ascii_digits():
    """The first and last years a period may touch, both ways; ASCII digits only."""
    for bad in EDGE_PERIODS:
        with pytest.raises(ValueError, match=r"years from|expected"):
            review.parse_period(bad)
    first = review.parse_period(f"{review.MIN_YEAR}-01")
    last = review.parse_period(f"{review.MAX_YEAR}-12")
    assert review.trend_periods(first)[0].label == f"{review.MIN_YEAR - 1}-08"
    assert last.end.year == review.MAX_YEAR + 1
    review.parse_period(f"{review.MAX_YEAR}-W52")
    review.parse_period(f"{review.MIN_YEAR}-W02")
    review.parse_period(f"{review.MAX_YEAR}-12-01..{review.MAX_YEAR}-12-31")
    with pytest.raises(ValueError, match="years from"):
        review.parse_period(f"{review.MIN_YEAR - 1}-12")
    with pytest.raises(ValueError, match="years from"):
        review.parse_period(f"{review.MAX_YEAR + 1}-01")
