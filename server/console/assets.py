"""Static files for the console: our own CSS and JavaScript modules, and the
front-end libraries npm installed into `node_modules/` at set-up time (`npm
ci`, from the committed lock file). Only the files named in `VENDOR` are
served; nothing is fetched from any other host.
"""

from __future__ import annotations

from pathlib import Path

import structlog
from aiohttp import web

from server.console.i18n import HERE
from server.web.routing import ApiRouter

routes = ApiRouter("console", console=True)
log = structlog.get_logger(__name__)

STATIC_DIR = HERE / "static"
# The repository's node_modules (where `make` runs `npm ci`).
NODE_MODULES = HERE.parent.parent / "node_modules"
VENDOR: dict[str, str] = {
    "xterm.js": "@xterm/xterm/lib/xterm.js",
    "xterm.css": "@xterm/xterm/css/xterm.css",
    "addon-fit.js": "@xterm/addon-fit/lib/addon-fit.js",
    "addon-canvas.js": "@xterm/addon-canvas/lib/addon-canvas.js",
    "uPlot.js": "uplot/dist/uPlot.iife.min.js",
    "uPlot.css": "uplot/dist/uPlot.min.css",
}
TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def missing_vendor_files(node_modules: Path = NODE_MODULES) -> list[str]:
    return [rel for rel in VENDOR.values() if not (node_modules / rel).is_file()]


def _file(path: Path) -> web.FileResponse:
    resp = web.FileResponse(path, headers={"Content-Type": TYPES.get(path.suffix, "text/plain")})
    resp.headers["Cache-Control"] = "public, max-age=3600"
    return resp


@routes.route("GET", "/static/vendor/{name}", public=True, summary="A front-end library file")
async def vendor(request: web.Request) -> web.StreamResponse:
    rel = VENDOR.get(request.match_info["name"])
    path = NODE_MODULES / rel if rel else None
    if path is None or not path.is_file():
        raise web.HTTPNotFound()
    return _file(path)


@routes.route(
    "GET", "/static/{kind:js|css}/{name}", public=True, summary="The console's own CSS or JS"
)
async def static(request: web.Request) -> web.StreamResponse:
    kind, name = request.match_info["kind"], request.match_info["name"]
    path = (STATIC_DIR / kind / name).resolve()
    if path.parent != (STATIC_DIR / kind).resolve() or not path.is_file():
        raise web.HTTPNotFound()
    return _file(path)


def check_vendor() -> None:
    missing = missing_vendor_files()
    if missing:
        log.warning("console_libraries_missing", missing=missing, fix="run `npm ci` (make does)")
