"""Pytest fixtures around one OAuth test server shared by the whole session.

``oauth_server`` starts the server once. Tests take ``oauth``, which restarts a
server an earlier test stopped and, afterwards, puts the TTL back and cancels
pending injected failures. ``oauth_client`` registers clients with fresh random
credentials and deletes them after the test. Stats are shared by the session, so
count per client rather than in total.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import pytest

from tests.support.oauth_server import OAuthServer


@dataclass(frozen=True)
class OAuthClient:
    """A client registered with the OAuth test server."""

    client_id: str
    client_secret: str
    scopes: tuple[str, ...]
    auth_method: str = "client_secret_basic"

    @property
    def scope(self) -> str:
        """The scopes as the space-separated ``scope`` parameter."""
        return " ".join(self.scopes)


class RegisterOAuthClient(Protocol):
    def __call__(
        self,
        scopes: Sequence[str] = ...,
        auth_method: str = ...,
        client_id: str | None = None,
        client_secret: str | None = None,
    ) -> OAuthClient: ...


@pytest.fixture(scope="session")
def oauth_server() -> Iterator[OAuthServer]:
    """Start one OAuth test server for the session."""
    with OAuthServer() as server:
        yield server


@pytest.fixture
def oauth(oauth_server: OAuthServer) -> Iterator[OAuthServer]:
    """Return the session's OAuth server, running; undo TTL and fault changes after."""
    if not oauth_server.running:
        oauth_server.restart()

    yield oauth_server

    if oauth_server.running:
        oauth_server.set_ttl(oauth_server.default_ttl)
        oauth_server.fail_next(503, count=0)


@pytest.fixture
def oauth_client(oauth: OAuthServer) -> Iterator[RegisterOAuthClient]:
    """Return a function registering a client; every one is deleted afterwards.

    Credentials default to a random ``svc-<hex>`` id and a URL-safe secret; pass
    your own to test awkward characters or a secret rotation.
    """
    registered: list[str] = []

    def register(
        scopes: Sequence[str] = ("read",),
        auth_method: str = "client_secret_basic",
        client_id: str | None = None,
        client_secret: str | None = None,
    ) -> OAuthClient:
        client = OAuthClient(
            client_id=client_id or f"svc-{secrets.token_hex(6)}",
            client_secret=client_secret or secrets.token_urlsafe(24),
            scopes=tuple(scopes),
            auth_method=auth_method,
        )
        oauth.put_client(
            client.client_id, client.client_secret, client.scopes, client.auth_method
        )
        registered.append(client.client_id)

        return client

    yield register

    if oauth.running:
        for client_id in registered:
            oauth.delete_client(client_id)
