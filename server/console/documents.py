"""The console's report renderer, as the API's report routes use it: the
composition root hands an instance to the API under `server.web.keys.
REPORT_DOCS`, so the API serves HTML and PDF reports without importing the
console. The renderer (templates, fonts, plots) is imported on first use."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.console import i18n


class Documents:
    def language_of(self, request: web.Request) -> str:
        """The caller's console language (cookie, else Accept-Language)."""
        return i18n.language_of(request)

    def html(self, report: dict[str, Any], lang: str) -> str:
        from server.console import reportdoc

        return reportdoc.html(report, lang)

    def pdf(self, report: dict[str, Any], lang: str) -> bytes:
        from server.console import reportdoc

        return reportdoc.pdf(report, lang)
