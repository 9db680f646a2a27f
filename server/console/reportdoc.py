"""Review reports as documents: a standalone printable HTML page (Jinja2,
plots inline as SVG) and a PDF (fpdf2, plots as PNG), in English or Korean.
Plots are drawn with matplotlib's Agg canvas (no display, no pyplot state).

Korean needs a CJK font: the Nanum fonts (Debian's fonts-nanum) when present;
without them a Korean report falls back to English. Both take the JSON form
of `server.api.reports.ReportOut` (a dict), so they render exactly what the
API answers.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from server.console import i18n, labels
from server.console.render import duration

TEMPLATES = i18n.HERE / "templates"
FONT_DIRS = (Path("/usr/share/fonts/truetype/nanum"), Path("/usr/share/fonts/truetype/dejavu"))
NANUM = ("NanumGothic.ttf", "NanumGothicBold.ttf")
DEJAVU = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf")
PLOT_MM = 70.0  # a plot's height in the PDF (7.2 x 2.8 inches at 180 mm wide)
_plot_lock = threading.Lock()
# fontTools reports each TrueType table it leaves out of a font subset: not news
logging.getLogger("fontTools.subset").setLevel(
    logging.ERROR
)  # matplotlib's font cache is shared state


def N_(text: str) -> str:
    return text


KPI_LABELS = {
    "sla_compliance_overall": N_("SLA compliance"),
    "csat": N_("Satisfied (4-5)"),
    "tier1_resolution_rate": N_("Tier-1 resolution"),
    "escalation_rate": N_("Escalations"),
    "reopen_rate": N_("Reopened"),
    "deflection_rate": N_("Self-served (deflection)"),
}
TIME_LABELS = {
    "time_to_acknowledge": N_("Time to acknowledge"),
    "time_to_first_response": N_("Time to first response"),
    "time_to_resolve": N_("Time to resolve"),
}


def _font_pair(names: tuple[str, str]) -> tuple[Path, Path] | None:
    for folder in FONT_DIRS:
        regular, bold = folder / names[0], folder / names[1]
        if regular.exists() and bold.exists():
            return regular, bold
    return None


def korean_font() -> tuple[Path, Path] | None:
    return _font_pair(NANUM)


def language(lang: str) -> str:
    """The language a document can be made in: Korean needs its font."""
    if lang == "ko" and korean_font() is None:
        return i18n.DEFAULT
    return lang if lang in i18n.LANGUAGES else i18n.DEFAULT


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f}%"


def _(text: str) -> str:
    return i18n.gettext(text)


def _texts() -> dict[str, str]:
    return {
        "opened": _("Tickets opened"),
        "resolved": _("Resolved"),
        "sla": _("SLA compliance"),
        "tickets": _("Tickets"),
    }


# --- plots ---------------------------------------------------------------------------------


@cache
def _plot_font() -> str | None:
    """Register the Korean font with matplotlib once; its family name."""
    from matplotlib import font_manager

    pair = korean_font()
    if pair is None:
        return None
    font_manager.fontManager.addfont(str(pair[0]))
    return str(font_manager.FontProperties(fname=str(pair[0])).get_name())


def _figure(draw: Callable[[Any], None], fmt: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    with _plot_lock:
        family = _plot_font()
        rc: dict[Any, Any] = {"font.size": 9, "svg.fonttype": "none"}
        if family:
            rc["font.family"] = [family, "DejaVu Sans"]
        with matplotlib.rc_context(rc):
            fig = Figure(figsize=(7.2, 2.8), dpi=110)
            draw(fig)
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    return buf.getvalue()


def trend_plot(report: dict[str, Any], fmt: str) -> bytes:
    """Tickets opened and resolved per period (bars) and SLA compliance (line)."""
    t = _texts()
    points = report["trend"]
    names = [p["period"] for p in points]

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        xs = range(len(points))
        ax.bar([x - 0.2 for x in xs], [p["opened"] for p in points], 0.4, label=t["opened"])
        ax.bar([x + 0.2 for x in xs], [p["resolved"] for p in points], 0.4, label=t["resolved"])
        ax.set_xticks(list(xs), names)
        ax.set_ylabel(t["tickets"])
        ax.yaxis.get_major_locator().set_params(integer=True)
        sla = ax.twinx()
        ys = [None if p["sla_compliance"] is None else p["sla_compliance"] * 100 for p in points]
        sla.plot(list(xs), [float("nan") if y is None else y for y in ys], "o-", color="#2a7d2e")
        sla.set_ylim(0, 105)
        sla.set_ylabel(t["sla"] + " %")
        ax.legend(loc="upper left", fontsize=8)

    return _figure(draw, fmt)


def daily_plot(report: dict[str, Any], fmt: str) -> bytes:
    """Tickets opened and resolved on each day of the period."""
    t = _texts()
    days = report["daily"]

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        xs = list(range(len(days)))
        ax.bar([x - 0.2 for x in xs], [d["opened"] for d in days], 0.4, label=t["opened"])
        ax.bar([x + 0.2 for x in xs], [d["resolved"] for d in days], 0.4, label=t["resolved"])
        step = max(1, len(days) // 10)
        ax.set_xticks(xs[::step], [d["day"][5:] for d in days][::step])
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.legend(loc="best", fontsize=8)

    return _figure(draw, fmt)


def _svg(data: bytes) -> Markup:
    text = data.decode()
    # matplotlib's own SVG (our figures, text escaped by it), without its XML prolog
    return Markup(text[text.index("<svg") :])  # noqa: S704


# --- HTML ----------------------------------------------------------------------------------


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        extensions=["jinja2.ext.i18n"],
    )
    env.install_gettext_callables(  # type: ignore[attr-defined]  # added by the i18n extension
        i18n.gettext, i18n.ngettext, newstyle=True
    )
    env.filters["duration"] = duration
    env.filters["pct"] = pct
    env.filters["label"] = labels.label
    return env


def html(report: dict[str, Any], lang: str) -> str:
    """The report as one standalone HTML page (inline CSS and SVG, printable)."""
    lang = language(lang)
    i18n.activate(lang)
    return (
        _env()
        .get_template("report_doc.html")
        .render(
            r=report,
            lang=lang,
            kpi_labels={k: _(v) for k, v in KPI_LABELS.items()},
            time_labels={k: _(v) for k, v in TIME_LABELS.items()},
            trend_svg=_svg(trend_plot(report, "svg")),
            daily_svg=_svg(daily_plot(report, "svg")),
        )
    )


# --- PDF -----------------------------------------------------------------------------------


PDF_CELL_CHARS = 1000  # a table row must fit on one page: longer text is cut (HTML has it whole)


def clip(text: str, limit: int = PDF_CELL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _latin(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1")


def pdf(report: dict[str, Any], lang: str) -> bytes:
    """The report as an A4 PDF."""
    from fpdf import FPDF
    from fpdf.fonts import FontFace

    lang = language(lang)
    i18n.activate(lang)
    doc = FPDF(format="A4")
    doc.set_auto_page_break(True, margin=15)
    doc.set_creator("Fieldlink")
    fonts = korean_font() if lang == "ko" else None
    fonts = fonts or _font_pair(DEJAVU) or korean_font()
    if fonts is not None:
        doc.add_font("body", "", str(fonts[0]))
        doc.add_font("body", "B", str(fonts[1]))
        family = "body"
        clean: Callable[[str], str] = str
        cjk = korean_font()
        if cjk is not None and cjk != fonts:
            # Hangul in an English report (a site's name, a comment) from the Korean font
            doc.add_font("cjk", "", str(cjk[0]))
            doc.add_font("cjk", "B", str(cjk[1]))
            doc.set_fallback_fonts(["cjk"])
    else:  # no TrueType font at all: the core font, Latin-1 only
        family, clean = "helvetica", _latin
    title = f"{_('Review report')}: {report['scope']} · {report['period']['label']}"
    doc.set_title(clean(title))
    doc.add_page()

    def heading(text: str, size: int = 13, keep: float = 25) -> None:
        """A heading, on a new page when what follows it (`keep` mm) would not fit."""
        if doc.get_y() + keep > doc.page_break_trigger:
            doc.add_page()
        doc.ln(2)
        doc.set_font(family, "B", size)
        doc.cell(0, 8, clean(text), new_x="LMARGIN", new_y="NEXT")
        doc.set_font(family, "", 9)

    def line(text: str) -> None:
        doc.multi_cell(0, 5, clean(text), new_x="LMARGIN", new_y="NEXT")

    def table(head: list[str], rows: list[list[str]], widths: tuple[int, ...]) -> None:
        if not rows:
            line(_("None in this period."))
            return
        bold = FontFace(emphasis="BOLD", fill_color=(232, 236, 242))
        with doc.table(
            col_widths=widths, headings_style=bold, line_height=5.5, text_align="LEFT"
        ) as t:
            for cells in [head, *rows]:
                row = t.row()
                for cell in cells:
                    row.cell(clean(clip(cell)))
        doc.ln(1)

    heading(title, 16)
    period = report["period"]
    line(
        f"{_('Period')}: {period['start']} - {period['end']} ({_('end not included')}) · "
        f"{_('Sites')}: {', '.join(report['sites']) or '—'} · "
        f"{_('Generated')}: {report['generated_at'][:16].replace('T', ' ')} UTC"
    )

    k = report["kpis"]
    heading(_("KPIs against targets"))
    table(
        [_("KPI"), _("Value"), _("Target value"), _("Status")],
        [
            [
                _(KPI_LABELS[t["kpi"]]),
                pct(t["value"]),
                f"{t['comparison']} {pct(t['target'])}",
                _("met") if t["met"] else (_("missed") if t["met"] is False else "—"),
            ]
            for t in report["targets"]
        ],
        (70, 35, 35, 40),
    )
    table(
        [_("Tickets"), _("Resolved"), _("MTTR")]
        + [_(v) + f" ({_('median')})" for v in TIME_LABELS.values()],
        [
            [str(k["tickets"]), str(k["resolved"]), duration(k.get("mttr_seconds"))]
            + [duration(k[key]["median"]) for key in TIME_LABELS]
        ],
        (20, 20, 25, 38, 38, 38),
    )

    if len(report["per_site"]) > 1:
        heading(_("Sites"))
        table(
            [
                _("Site"),
                _("Tickets opened"),
                _("Resolved"),
                _("SLA compliance"),
                _("MTTR"),
                _("Satisfied (4-5)"),
            ],
            [
                [
                    s["site"],
                    str(s["opened"]),
                    str(s["resolved"]),
                    pct(s["sla_compliance"]),
                    duration(s["mttr_seconds"]),
                    pct(s["csat"]),
                ]
                for s in report["per_site"]
            ],
            (45, 27, 27, 27, 27, 27),
        )

    heading(_("Trend"), keep=PLOT_MM + 12)
    doc.image(io.BytesIO(trend_plot(report, "png")), w=180, h=PLOT_MM)
    table(
        [_("Period"), _("Tickets opened"), _("Resolved"), _("SLA compliance"), _("MTTR")],
        [
            [
                p["period"],
                str(p["opened"]),
                str(p["resolved"]),
                pct(p["sla_compliance"]),
                duration(p["mttr_seconds"]),
            ]
            for p in report["trend"]
        ],
        (50, 30, 30, 35, 35),
    )
    heading(_("Tickets per day"), keep=PLOT_MM + 12)
    doc.image(io.BytesIO(daily_plot(report, "png")), w=180, h=PLOT_MM)

    heading(_("Top problems"))
    table(
        [_("Problem"), _("Title"), _("Status"), _("Incidents")],
        [
            [
                p["number"],
                p["title"],
                labels.label(p["status"], "problem_status"),
                str(p["incidents"]),
            ]
            for p in report["top_problems"]
        ],
        (25, 95, 35, 25),
    )

    ch = report["changes"]
    heading(_("Changes"))
    line(
        f"{_('Requested')}: {ch['requested']} · {_('Closed')}: {ch['closed']} · "
        f"{_('Successful')}: {ch['successful']} · {_('Failed')}: {ch['failed']} · "
        f"{_('Rolled back')}: {ch['rolled_back']} · {_('Success rate')}: {pct(ch['success_rate'])}"
    )
    table(
        [_("Change"), _("Title"), _("Risk"), _("State")],
        [
            [
                c["number"],
                c["title"],
                labels.label(c["risk"], "risk"),
                labels.label(c["state"], "change_state"),
            ]
            for c in ch["items"]
        ],
        (25, 95, 25, 35),
    )

    cs = report["csat"]
    heading(_("Customer satisfaction"))
    average = "—" if cs["average"] is None else f"{cs['average']:.2f} / 5"
    line(
        f"{_('Ratings')}: {cs['ratings']} · {_('Average')}: {average} · "
        f"{_('Satisfied (4-5)')}: {pct(cs['satisfied'])} · "
        f"{_('Self-served (deflection)')}: {pct(report['deflection_rate'])}"
    )
    table(
        [_("Ticket"), _("Site"), _("Rating"), _("Comment")],
        [[c["ticket"], c["site"], str(c["rating"]), c["comment"]] for c in cs["comments"]],
        (22, 30, 18, 110),
    )
    return bytes(doc.output())
