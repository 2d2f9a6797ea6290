"""Shared fixtures: real OpenBao and oidc-provider servers on loopback."""

from __future__ import annotations

pytest_plugins = [
    "tests.support.bao_fixtures",
    "tests.support.oauth_fixtures",
    "tests.support.stack_fixtures",
]
