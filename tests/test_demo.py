"""``make demo`` runs clean, and the example resource service checks tokens."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from docs.examples.resource_service import make_app
from tests.support.oauth_fixtures import OAuthClient, RegisterOAuthClient
from tests.support.oauth_server import OAuthServer, encode_basic_auth

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
AUDIENCE = "https://orders.example.test"
SCOPE = "orders:read"
# Three base64url segments joined by dots, long enough to be a real JWT.
WHOLE_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


@pytest.mark.e2e
def test_demo_runs_to_the_end_without_showing_a_token(tmp_path: Path) -> None:
    # Its own directory, so a demo a developer keeps running in .demo/ survives.
    env = {**os.environ, "TOKEND_DEMO_DIR": str(tmp_path / "demo")}
    env.pop("TOKEND_DEMO_KEEP", None)
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
    )
    output = result.stdout + result.stderr

    assert result.returncode == 0, output
    mode = re.search(r"mode (0[0-7]{3}): ok", result.stdout)
    assert mode is not None, output
    assert int(mode.group(1), 8) & ~0o640 == 0
    assert re.search(r"refreshed after [\d.]+ s: generation 1 → 2", result.stdout)
    assert '→ 200 {"hello": "orders-client"' in result.stdout
    assert "→ 401 WWW-Authenticate: Bearer" in result.stdout
    whole_tokens = [m for m in WHOLE_JWT.findall(output) if len(m) > 100]
    assert whole_tokens == []


async def fetch_token(
    server: OAuthServer, client: OAuthClient, resource: str = AUDIENCE
) -> str:
    form = {"grant_type": "client_credentials", "resource": resource, "scope": SCOPE}
    headers = {
        "Authorization": encode_basic_auth(client.client_id, client.client_secret)
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.token_url, data=form, headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()

    return str(body["access_token"])


async def start_service(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]

    return runner, f"http://{host}:{port}/orders"


async def get_orders(
    url: str, token: str | None = None
) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers) as response,
    ):
        return response.status, dict(response.headers), await response.json()


@pytest.fixture
async def orders_url(oauth: OAuthServer) -> AsyncIterator[str]:
    runner, url = await start_service(make_app(oauth.issuer, AUDIENCE, SCOPE))
    yield url
    await runner.cleanup()


@pytest.fixture
def orders_client(oauth_client: RegisterOAuthClient) -> OAuthClient:
    return oauth_client(scopes=[SCOPE, "orders:write"])


def sign_with_other_key(claims: dict[str, Any], kid: str) -> str:
    """Return a well-formed access token signed with a key the issuer never had."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    headers = {"typ": "at+jwt", "kid": kid}

    return jwt.encode(claims, key, algorithm="RS256", headers=headers)


def encode_segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def reencode_header(token: str, alg: str, signature: bytes = b"") -> str:
    """Return the token's claims under a header claiming ``alg``."""
    header = {**jwt.get_unverified_header(token), "alg": alg}
    encoded_header = encode_segment(json.dumps(header).encode())
    payload = token.split(".")[1]

    return f"{encoded_header}.{payload}.{encode_segment(signature)}"


def read_claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})

    return claims


@pytest.mark.anyio
async def test_resource_service_accepts_valid_token(
    oauth: OAuthServer, orders_client: OAuthClient, orders_url: str
) -> None:
    token = await fetch_token(oauth, orders_client)

    status, _, body = await get_orders(orders_url, token)

    assert status == 200
    assert body == {"hello": orders_client.client_id, "scope": SCOPE}


@pytest.mark.anyio
async def test_resource_service_without_token_is_challenged(orders_url: str) -> None:
    """RFC 6750 §3.1: no credentials, so a challenge without an error code."""
    status, headers, _ = await get_orders(orders_url)

    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="orders"'


@pytest.mark.anyio
async def test_resource_service_rejects_token_for_other_audience(
    oauth: OAuthServer, orders_client: OAuthClient, orders_url: str
) -> None:
    token = await fetch_token(oauth, orders_client, "https://billing.example.test")

    status, headers, body = await get_orders(orders_url, token)

    assert status == 401
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert body["error_description"] == "token is for another audience"


@pytest.mark.anyio
async def test_resource_service_rejects_expired_token(
    oauth: OAuthServer, orders_client: OAuthClient
) -> None:
    runner, url = await start_service(make_app(oauth.issuer, AUDIENCE, leeway=0))
    try:
        oauth.set_ttl(1)
        token = await fetch_token(oauth, orders_client)
        await asyncio.sleep(2.1)

        status, headers, body = await get_orders(url, token)
    finally:
        await runner.cleanup()

    assert status == 401
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert body["error_description"] == "token has expired"


@pytest.mark.anyio
async def test_resource_service_rejects_missing_scope(
    oauth: OAuthServer, orders_client: OAuthClient
) -> None:
    """RFC 6750 §3.1: a valid token without the scope gets 403 insufficient_scope."""
    runner, url = await start_service(make_app(oauth.issuer, AUDIENCE, "orders:admin"))
    try:
        token = await fetch_token(oauth, orders_client)

        status, headers, _ = await get_orders(url, token)
    finally:
        await runner.cleanup()

    assert status == 403
    assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]


def forge_garbage(token: str, kid: str) -> str:
    return "not-a-jwt"


def forge_alg_none(token: str, kid: str) -> str:
    return reencode_header(token, "none")


def forge_alg_hs256(token: str, kid: str) -> str:
    # Whatever the MAC, an HS* token must be refused for its algorithm alone.
    return reencode_header(token, "HS256", b"x" * 32)


def forge_tampered_signature(token: str, kid: str) -> str:
    return token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")


def forge_foreign_key_same_kid(token: str, kid: str) -> str:
    return sign_with_other_key(read_claims(token), kid)


def forge_unknown_kid(token: str, kid: str) -> str:
    return sign_with_other_key(read_claims(token), "made-up-kid")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (forge_garbage, "malformed token"),
        (forge_alg_none, "signing algorithm not allowed"),
        (forge_alg_hs256, "signing algorithm not allowed"),
        (forge_tampered_signature, "signature does not verify"),
        (forge_foreign_key_same_kid, "signature does not verify"),
        (forge_unknown_kid, "unknown signing key"),
    ],
    ids=["garbage", "alg-none", "alg-hs256", "tampered", "foreign-key", "unknown-kid"],
)
async def test_resource_service_rejects_forged_token(
    oauth: OAuthServer,
    orders_client: OAuthClient,
    orders_url: str,
    forge: Callable[[str, str], str],
    reason: str,
) -> None:
    token = await fetch_token(oauth, orders_client)
    kid = str(jwt.get_unverified_header(token)["kid"])

    status, headers, body = await get_orders(orders_url, forge(token, kid))

    assert status == 401
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert body["error_description"] == reason
