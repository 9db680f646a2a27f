"""Third-party warnings Fieldlink hides, and only those: asyncssh's DSA notice
under cryptography 51+ is silent for the agent, HQ and both CLIs, while every
other warning still reaches the user (and fails the suite)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from cryptography.utils import CryptographyDeprecationWarning

from shared import knownwarnings


def _warn(message: str, category: type[Warning], module: str) -> None:
    warnings.warn_explicit(message, category, filename="x.py", lineno=1, module=module)


def test_only_asyncssh_dsa_notice_is_hidden() -> None:
    """The DSA notice raised from asyncssh is ignored; the same from elsewhere,
    or another cryptography deprecation from asyncssh, is still an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        knownwarnings.install()
        _warn(
            "DSA is deprecated and support ...",
            CryptographyDeprecationWarning,
            "asyncssh.crypto.dsa",
        )
        with pytest.raises(CryptographyDeprecationWarning):
            _warn("DSA is deprecated and support ...", CryptographyDeprecationWarning, "server.x")
        with pytest.raises(CryptographyDeprecationWarning):
            _warn("TripleDES is deprecated", CryptographyDeprecationWarning, "asyncssh.crypto")
        with pytest.raises(DeprecationWarning):
            _warn("DSA is deprecated", DeprecationWarning, "asyncssh.crypto.dsa")


@pytest.mark.parametrize(
    "code",
    [
        "import agent.link, asyncssh",
        "import server.gateway.listener, asyncssh",
        "import shared, asyncssh",
    ],
)
def test_importing_our_packages_first_keeps_asyncssh_quiet(code: str) -> None:
    """With every warning an error (-W error), our packages still import asyncssh."""
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""


@pytest.mark.parametrize("script", ["fieldlink", "fieldlink-agent"])
def test_clis_print_no_warning(script: str) -> None:
    """The installed `fieldlink` and `fieldlink-agent` show no warning, even with
    every warning shown (PYTHONWARNINGS=always)."""
    path = Path(sys.executable).parent / script
    env = {**os.environ, "PYTHONWARNINGS": "always"}
    out = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout
    assert "Warning" not in out.stderr, out.stderr
