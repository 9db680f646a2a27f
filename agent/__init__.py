"""The Fieldlink site agent: samples health, dials out to HQ over reverse SSH,
keeps unacknowledged reports in an on-disk spool.

Imports only the light dependencies (asyncssh, psutil, pydantic, structlog)
and `shared`; never `server` or an HQ-only library.
"""

from shared import knownwarnings

knownwarnings.install()
