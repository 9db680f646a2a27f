"""Rendering console pages: the Jinja2 environment (autoescaped, gettext),
what every page knows (the caller, its navigation by permission, the CSRF
token, the language, the JavaScript's strings), and the HTML error page.

Navigation only shows what the caller's permissions allow; that is a
convenience, never the protection: every page and API call is enforced.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from babel.dates import format_date, format_time
from markupsafe import Markup

from server.auth.principal import Principal
from server.console import i18n, labels, sla
from server.console.i18n import N_
from server.web.authn import PRINCIPAL_KEY

TEMPLATES = i18n.HERE / "templates"


def setup(app: web.Application) -> None:
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        extensions=["jinja2.ext.i18n"],
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_callables(  # type: ignore[attr-defined]  # added by the i18n extension
        i18n.gettext, i18n.ngettext, newstyle=True
    )
    env.filters["when"] = when
    env.filters["duration"] = duration
    env.filters["bytes"] = human_bytes
    env.filters["jsonattr"] = jsonattr
    env.globals["sla_badge"] = sla.badge
    env.globals["sla_clocks"] = sla.clock_rows
    env.filters["label"] = labels.label
    env.filters["named"] = labels.named
    env.globals["catalog_description"] = labels.catalog_description


def when(value: datetime | str | None) -> Markup:
    """A time as `<time>`, in the console's one date format: the reader's
    language's medium date and short time (CLDR), here in UTC; the page's
    script (common.js formatTime) shows the same format in local time."""
    if value is None:
        return Markup("—")
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    iso = value.isoformat()
    lang = i18n.current()
    text = "{}, {} UTC".format(
        format_date(value, "medium", locale=lang),
        format_time(value, "short", tzinfo=UTC, locale=lang),
    )
    return Markup('<time datetime="{}">{}</time>').format(iso, text)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def human_bytes(value: float | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(value)


def jsonattr(value: Any) -> str:
    """JSON for a data-* attribute (autoescaping makes it attribute-safe)."""
    return json.dumps(value, default=str, separators=(",", ":"))


# (href, label, permissions: any one of them, held on some scope)
NAV: list[tuple[str, str, tuple[str, ...]]] = [
    ("/", N_("Dashboard"), ("agents:read",)),
    ("/machines", N_("Machines"), ("agents:read",)),
    ("/jobs", N_("Jobs"), ("diag:run",)),
    ("/changes", N_("Changes"), ("changes:read",)),
    ("/tickets", N_("Tickets"), ("agents:read",)),
    ("/problems", N_("Problems"), ("problems:read",)),
    ("/help", N_("Get help"), ("tickets:write",)),
    ("/kb", N_("Knowledge base"), ("kb:read",)),
    ("/sessions", N_("Sessions"), ("agents:read",)),
    ("/consents", N_("Consents"), ("sessions:consent",)),
    ("/alert-rules", N_("Alert rules"), ("alerts:manage",)),
    ("/kpis", N_("KPIs"), ("kpi:read",)),
    ("/reports", N_("Reports"), ("kpi:read",)),
    ("/audit", N_("Audit"), ("audit:read",)),
    ("/enroll", N_("Enrollment"), ("agents:enroll",)),
    ("/admin", N_("Administration"), ("users:admin",)),
]


def nav_for(who: Principal | None, path: str) -> list[dict[str, Any]]:
    if who is None or who.needs_2fa:
        return []
    out = []
    for href, label, perms in NAV:
        if href == "/tickets" and not who.holds("tickets:read"):
            continue
        if href == "/help" and who.holds("agents:read"):
            continue  # IT staff open tickets from the tickets page
        if any(who.holds(p) for p in perms):
            current = path == href or (href != "/" and path.startswith(href + "/"))
            out.append({"href": href, "label": i18n.gettext(label), "current": current})
    return out


def page(
    request: web.Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status: int = 200,
    title: str = "",
) -> web.Response:
    """Render a page in the caller's language, with what every page needs."""
    lang = i18n.language_of(request)
    i18n.activate(lang)
    who = request.get(PRINCIPAL_KEY)
    ctx: dict[str, Any] = {
        "who": who,
        "lang": lang,
        "languages": i18n.LANGUAGES,
        "csrf": who.csrf if who is not None and who.csrf else "",
        "nav": nav_for(who, request.path),
        "path": request.path,
        # this page, to come back to after switching language (without its one-off notice)
        "here": str(
            request.rel_url.with_query([(k, v) for k, v in request.query.items() if k != "done"])
        ),
        "title": title,
        "js_strings": i18n.js_strings(),
        "js_labels": labels.translated(),
        "flash": request.query.get("done", ""),
    }
    ctx.update(context or {})
    return aiohttp_jinja2.render_template(template, request, ctx, status=status)


def error_page(request: web.Request, status: int, code: str, message: str) -> web.Response:
    i18n.activate(i18n.language_of(request))
    titles = {
        403: i18n.gettext("Not allowed"),
        404: i18n.gettext("Not found"),
        409: i18n.gettext("Conflict"),
        422: i18n.gettext("Invalid input"),
        429: i18n.gettext("Too many attempts"),
    }
    title = titles.get(status, i18n.gettext("Something went wrong"))
    return page(
        request,
        "error.html",
        {"status": status, "code": code, "message": message},
        status=status,
        title=title,
    )


def fragment(request: web.Request, template: str, context: dict[str, Any]) -> str:
    """Render a piece of a page (for live updates) in the caller's language."""
    lang = i18n.language_of(request)
    i18n.activate(lang)
    ctx = {"who": request.get(PRINCIPAL_KEY), "lang": lang, **context}
    who = ctx["who"]
    ctx.setdefault("csrf", who.csrf if who is not None and who.csrf else "")
    return aiohttp_jinja2.render_string(template, request, ctx)
