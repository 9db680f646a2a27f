"""Review reports in a real browser (Debian's Chromium through Playwright)
against a real HQ on loopback, in English and Korean: the Reports page picks a
site and a period, downloads the PDF and opens the standalone HTML report in
the console's language. One HQ and one browser for the module."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pypdf
import pytest
import pytest_asyncio

from tests.browser import SITE, World, axe_violations, console_world, new_page, screenshot
from tests.browser import log_in as browser_log_in

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with console_world(tmp_path_factory.mktemp("reports")) as w:
        await w.api("POST", "/api/v1/tickets", json={"title": "till freezes", "site": SITE})
        yield w


async def test_reports_page_downloads_pdf_and_opens_html(world: World) -> None:
    """Pick shop-1 and this month: the PDF downloads under its report name and
    holds the site; the HTML report opens in a new tab with the site's figures."""
    page = await world.page_as(world.engineer, bypass_csp=True)  # axe runs in the page
    await page.goto(f"{world.hq.url}/reports")
    assert await page.locator("h1").inner_text() == "Review reports"
    assert await page.locator("#site-nav a[href='/reports']").inner_text() == "Reports"
    period = await page.locator("#report-period").input_value()
    await page.select_option("#report-site", SITE)
    async with page.expect_download() as info:
        await page.click("#report-pdf")
    download = await info.value
    assert download.suggested_filename == f"report-{SITE}-{period}.pdf"
    saved = Path(await download.path())
    text = "\n".join(p.extract_text() for p in pypdf.PdfReader(saved).pages)
    assert SITE in text and "KPIs against targets" in text
    async with page.expect_download() as info:
        await page.click("#report-html-file")
    download = await info.value
    assert download.suggested_filename == f"report-{SITE}-{period}.html"
    saved_html = await asyncio.to_thread(Path(await download.path()).read_text, "utf-8")
    assert f"Review report: {SITE} · {period}" in saved_html
    await screenshot(page, "reports")
    assert not await axe_violations(page)

    async with page.context.expect_page() as opened:
        await page.click("#report-html")
    report = await opened.value
    await report.wait_for_load_state()
    title = await report.locator("#report-title").inner_text()
    assert title == f"Review report: {SITE} · {period}"
    assert await report.locator("#kpis tbody tr").count() >= 6
    assert await report.locator("#trend svg").count() == 2
    await screenshot(report, "report-html")
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()


async def test_reports_in_korean(world: World) -> None:
    """A Korean browser gets the Reports page and the report itself in Korean."""
    page = await new_page(
        world.browser,
        locale="ko-KR",
        extra_http_headers={"Accept-Language": "ko-KR,ko;q=0.9"},
        bypass_csp=True,  # for axe
    )
    await browser_log_in(page, world.hq.url, world.engineer, next_path="/reports")
    await page.goto(f"{world.hq.url}/reports")
    assert await page.locator("h1").inner_text() == "검토 보고서"
    assert await page.locator("#site-nav a[href='/reports']").inner_text() == "보고서"
    assert await page.locator("#report-pdf").inner_text() == "PDF 다운로드"
    assert not await axe_violations(page)
    period = await page.locator("#report-period").input_value()
    await page.select_option("#report-site", SITE)
    async with page.context.expect_page() as opened:
        await page.click("#report-html")
    report = await opened.value
    await report.wait_for_load_state()
    assert await report.locator("#report-title").inner_text() == f"검토 보고서: {SITE} · {period}"
    assert await report.locator("#kpis h2").inner_text() == "목표 대비 KPI"
    await screenshot(report, "report-html-ko")
    assert not page.fieldlink_errors, page.fieldlink_errors
    await page.context.close()
