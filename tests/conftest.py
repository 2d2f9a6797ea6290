"""Shared fixtures: real OpenBao and oidc-provider servers on loopback."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.support.bao_fixtures",
    "tests.support.oauth_fixtures",
    "tests.support.stack_fixtures",
]


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, as the daemon does."""
    return "asyncio"
