"""Every setting and every permission is documented."""

from __future__ import annotations

from pathlib import Path

from agent.config import AgentConfig
from server.auth.rbac import BUILTIN_ROLES, PERMISSIONS
from server.config.settings import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"
README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_hq_and_agent_setting_is_documented():
    """docs/configuration.md names every HQ setting and agent tunable."""
    text = (DOCS / "configuration.md").read_text()
    for name in Settings.model_fields:
        assert f"`{name}`" in text, name
    for name in AgentConfig.model_fields:
        assert f"`{name}`" in text, f"agent config key {name} is not in docs/configuration.md"


def test_every_permission_and_role_is_documented():
    """docs/access-control.md lists every permission and built-in role; README the roles."""
    text = (DOCS / "access-control.md").read_text()
    readme = README.read_text()
    for perm in PERMISSIONS:
        assert f"`{perm}`" in text, perm
    for role in BUILTIN_ROLES:
        assert f"`{role}`" in text and f"`{role}`" in readme, role


def test_every_api_route_is_in_the_api_docs():
    """docs/api.md lists every /api/v1 route with its method."""

    from server.hq import make_app
    from server.web.openapi import route_specs

    text = (DOCS / "api.md").read_text()
    missing = [
        f"{s.method} {s.path}"
        for s in route_specs(make_app())
        if s.path.startswith("/api/v1") and f"`{s.method} {s.path}`" not in text
    ]
    assert not missing, f"add to docs/api.md: {missing}"
