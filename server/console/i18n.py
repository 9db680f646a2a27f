"""The console's languages: gettext catalogs (Babel `.po` files under
`locale/`, read at start-up, so no compiled file is kept in the repository),
the caller's language (the `fl_lang` cookie set from the profile page, else the
browser's Accept-Language), and the strings the JavaScript modules need, which
the pages hand them in a data attribute.

Adding a language: `pybabel init -i server/console/locale/messages.pot
-d server/console/locale -l xx`, translate, add it to `LANGUAGES`.
"""

from __future__ import annotations

import io
from contextvars import ContextVar
from functools import cache
from pathlib import Path

from aiohttp import web
from babel.messages.extract import extract_javascript
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

HERE = Path(__file__).resolve().parent
LOCALE_DIR = HERE / "locale"
JS_DIR = HERE / "static" / "js"
LANG_COOKIE = "fl_lang"
DEFAULT = "en"
# code -> the language's own name, for the picker
LANGUAGES = {"en": "English", "ko": "한국어"}

_current: ContextVar[NullTranslations] = ContextVar("console_translations")
_lang: ContextVar[str] = ContextVar("console_language", default=DEFAULT)


@cache
def translations(lang: str) -> NullTranslations:
    """The catalog for `lang` (English is the source text: no catalog)."""
    po = LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po"
    if lang == DEFAULT or not po.exists():
        return NullTranslations()
    with po.open("rb") as fh:
        catalog = read_po(fh, locale=lang)
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return Translations(buf)


def parse_accept_language(header: str) -> list[str]:
    """Language codes from an Accept-Language header, most wanted first."""
    weighted: list[tuple[float, int, str]] = []
    for i, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if tag and q > 0:
            weighted.append((-q, i, tag.strip().lower()))
    return [tag for _, _, tag in sorted(weighted)]


def language_of(request: web.Request) -> str:
    chosen = request.cookies.get(LANG_COOKIE)
    if chosen in LANGUAGES:
        return chosen
    for tag in parse_accept_language(request.headers.get("Accept-Language", "")):
        base = tag.split("-")[0]
        if base in LANGUAGES:
            return base
    return DEFAULT


def activate(lang: str) -> None:
    """Use `lang` for what this task renders next (each request is its own task)."""
    _current.set(translations(lang))
    _lang.set(lang)


def current() -> str:
    """The language this task renders in."""
    return _lang.get()


def gettext(message: str) -> str:
    return _current.get(translations(DEFAULT)).gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return _current.get(translations(DEFAULT)).ngettext(singular, plural, n)


@cache
def js_messages() -> tuple[str, ...]:
    """Every `gettext("...")` in the console's JavaScript modules."""
    found: set[str] = set()
    for path in sorted(JS_DIR.glob("*.js")):
        with path.open("rb") as fh:
            for _, funcname, message, _ in extract_javascript(fh, {"gettext": None}, [], {}):
                if funcname == "gettext" and isinstance(message, str):
                    found.add(message)
    return tuple(sorted(found))


def js_strings() -> dict[str, str]:
    """The JavaScript's strings in the active language, keyed by their English text."""
    return {message: gettext(message) for message in js_messages()}


def N_(text: str) -> str:
    """Marks a string for extraction (`pybabel extract -k N_`); translated when shown."""
    return text
