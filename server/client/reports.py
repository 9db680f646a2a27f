"""`fieldlink report`: a review report fetched from HQ and written to a file."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from server.client.config import Login
from server.client.errors import ClientError
from server.client.http import Api

ACCEPT = {"pdf": "application/pdf", "html": "text/html"}
REPORT_TIMEOUT = 300.0  # a big HQ report takes a while to compute and draw


@dataclass(frozen=True)
class ReportSpec:
    site: str | None
    period: str
    format: str  # pdf | html | json
    output: str | None
    lang: str = "en"


def default_name(spec: ReportSpec) -> str:
    """report-SITE-PERIOD.EXT (HQ for the HQ report), safe as a file name. Pure."""
    scope = spec.site or "HQ"
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{scope}-{spec.period}")
    return f"report-{safe}.{spec.format}"


async def report(login: Login, spec: ReportSpec) -> int:
    params = {"period": spec.period, "lang": spec.lang}
    if spec.site:
        params["site"] = spec.site
    async with Api(login.url, login.fingerprint, login.token) as api:
        if spec.format == "json":
            data = (json.dumps(await api.get("/api/v1/reports", params), indent=2) + "\n").encode()
        else:
            data = await api.read(
                f"/api/v1/reports/{spec.format}",
                accept=ACCEPT[spec.format],
                idle=REPORT_TIMEOUT,
                params=params,
            )
    if spec.output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return 0
    target = Path(spec.output or default_name(spec))
    try:
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except OSError as exc:
        raise ClientError(f"cannot write {target}: {exc.strerror or exc}") from None
    print(target)
    return 0
