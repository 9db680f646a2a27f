"""Warnings from third-party libraries that Fieldlink knows and hides.

Each entry is matched by category, message and the module that raises it, so
every other warning still reaches the user (and is an error in the suite).
`install()` runs when `agent`, `server` or `shared` is first imported, that is
before any of our modules imports asyncssh, for the agent, HQ and both CLIs.
The pytest configuration in pyproject.toml repeats the same entries, since
pytest sets its own filters for every test.
"""

from __future__ import annotations

import warnings

# asyncssh still imports cryptography's DSA support, which cryptography 51
# marks deprecated at the moment it is touched (asyncssh's import). Fieldlink
# never uses DSA keys (agents and HQ hold ed25519 keys), so the notice is noise.
_ASYNCSSH_DSA = (r"DSA is deprecated", r"asyncssh\.")


def install() -> None:
    """Add the known filters once (an identical filter is not added twice)."""
    from cryptography.utils import CryptographyDeprecationWarning  # asyncssh's own dependency

    message, module = _ASYNCSSH_DSA
    warnings.filterwarnings(
        "ignore", message=message, category=CryptographyDeprecationWarning, module=module
    )
