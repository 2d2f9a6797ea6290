"""The ``stack`` fixture: a tokend deployment per test, daemons killed after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.bao_server import BaoServer
from tests.support.oauth_server import OAuthServer
from tests.support.stack import Stack


@pytest.fixture
def stack(bao: BaoServer, oauth: OAuthServer, tmp_path: Path) -> Iterator[Stack]:
    """A Vault role, OAuth clients and a config dir for one test."""
    deployment = Stack(bao, oauth, tmp_path)
    try:
        yield deployment
    finally:
        deployment.close()
