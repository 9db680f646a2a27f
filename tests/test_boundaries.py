"""The package boundaries hold: shared imports neither side, agent and server
never import each other, and the agent imports no HQ-only library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HQ_ONLY = {
    "aiohttp",
    "sqlalchemy",
    "alembic",
    "aiosqlite",
    "asyncpg",
    "argon2",
    "pyotp",
    "prometheus_client",
    "pydantic_settings",
    "rich",
    "jinja2",
    "aiohttp_jinja2",
}


def imports_of(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("shared", {"agent", "server"} | HQ_ONLY),
        ("agent", {"server"} | HQ_ONLY),
        ("server", {"agent"}),
    ],
)
def test_package_imports_stay_inside_their_boundary(package, forbidden):
    """No module of a package imports across its boundary."""
    bad = {
        path: sorted(names & forbidden)
        for path, names in imports_of(package).items()
        if names & forbidden
    }
    assert not bad, f"forbidden imports: {bad}"


BLOCKER = """
import importlib, importlib.abc, pkgutil, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is HQ-only")
        return None

sys.meta_path.insert(0, Block())
import agent
for m in pkgutil.walk_packages(agent.__path__, "agent."):
    importlib.import_module(m.name)
from agent.cli import main
try:
    main(["--help"])
except SystemExit as exc:
    assert exc.code == 0
"""


def test_agent_runs_without_hq_libraries():
    """Every agent module imports, and the agent CLI runs, with HQ-only libraries unavailable."""
    code = f"BLOCKED = {sorted(HQ_ONLY)!r}\n" + BLOCKER
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "fieldlink-agent" in out.stdout


def test_import_contracts_hold():
    """HQ's layers point downwards only and its edges never import each other:
    the import-linter contracts in pyproject.toml (also run by `make lint`)."""
    code = (
        "import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(no_cache=True, no_logo=True))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
