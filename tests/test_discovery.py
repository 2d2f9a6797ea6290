"""Finding the token endpoint from an issuer, against a loopback quirk server."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from tests.support.quirk_server import QuirkResponse, QuirkServer, token_response
from tokend.errors import EndpointUnavailableError, TokenEndpointError
from tokend.oauth import TokenEndpoint, TokenRequest, secret_auth
from tokend.token import AccessToken, ClientCredentials

OIDC = "/.well-known/openid-configuration"
RFC8414 = "/.well-known/oauth-authorization-server"
CREDENTIALS = ClientCredentials("orders", SecretStr("discovery-secret-9d2e"))
AUTH = secret_auth("client_secret_basic", CREDENTIALS)


@pytest.fixture
async def quirk(anyio_backend: str) -> AsyncIterator[QuirkServer]:
    async with QuirkServer() as server:
        yield server


def metadata(issuer: str, **fields: Any) -> QuirkResponse:
    document = {"issuer": issuer, **fields}
    return QuirkResponse(body={k: v for k, v in document.items() if v is not None})


def make_request(issuer: str) -> TokenRequest:
    return TokenRequest(
        endpoint=issuer,
        client_auth="client_secret_basic",
        audience=None,
        audience_param="none",
        scopes=("orders:read",),
        extra_params=(),
        default_lifetime=300,
        min_lifetime=10,
    )


async def discover(issuer: str, **options: Any) -> str:
    endpoint = TokenEndpoint(issuer, discover=True, timeout=2.0, **options)
    try:
        return await endpoint.token_url()
    finally:
        await endpoint.aclose()


async def discovery_failure(issuer: str, **options: Any) -> TokenEndpointError:
    with pytest.raises(TokenEndpointError) as caught:
        await discover(issuer, **options)
    return caught.value


async def fetch_via_issuer(issuer: str, times: int = 1) -> list[AccessToken]:
    endpoint = TokenEndpoint(issuer, discover=True, timeout=2.0)
    try:
        return [
            await endpoint.fetch(make_request(issuer), AUTH, datetime.now(UTC))
            for _ in range(times)
        ]
    finally:
        await endpoint.aclose()


def paths(server: QuirkServer) -> list[str]:
    return [request.path for request in server.requests()]


@pytest.mark.anyio
async def test_discovery_without_issuer_path_tries_oidc_first(
    quirk: QuirkServer,
) -> None:
    issuer = quirk.url
    quirk.reply(metadata(issuer, token_endpoint=quirk.url_for("/oidc-token")), OIDC)
    quirk.reply(metadata(issuer, token_endpoint=quirk.url_for("/oauth-token")), RFC8414)
    quirk.reply(token_response(), "/oidc-token")
    await fetch_via_issuer(issuer)

    assert paths(quirk) == [OIDC, "/oidc-token"]


@pytest.mark.anyio
async def test_discovery_without_issuer_path_falls_back_to_rfc8414(
    quirk: QuirkServer,
) -> None:
    issuer = quirk.url
    quirk.reply(metadata(issuer, token_endpoint=quirk.token_url), RFC8414)

    assert await discover(issuer) == quirk.token_url
    assert paths(quirk) == [OIDC, RFC8414]


@pytest.mark.anyio
async def test_discovery_with_issuer_path_inserts_the_well_known_first(
    quirk: QuirkServer,
) -> None:
    """RFC 8414 §3.1 puts the well-known segment before the issuer's path."""
    issuer = quirk.url_for("/tenants/blue")
    inserted = RFC8414 + "/tenants/blue"
    quirk.reply(
        metadata(issuer, token_endpoint=quirk.url_for("/oauth-token")), inserted
    )
    quirk.reply(
        metadata(issuer, token_endpoint=quirk.url_for("/oidc-token")),
        "/tenants/blue" + OIDC,
    )

    assert await discover(issuer) == quirk.url_for("/oauth-token")
    assert paths(quirk) == [inserted]


@pytest.mark.anyio
async def test_discovery_with_issuer_path_falls_back_to_appended_oidc(
    quirk: QuirkServer,
) -> None:
    issuer = quirk.url_for("/tenants/blue")
    appended = "/tenants/blue" + OIDC
    quirk.reply(metadata(issuer, token_endpoint=quirk.token_url), appended)

    assert await discover(issuer) == quirk.token_url
    assert paths(quirk) == [RFC8414 + "/tenants/blue", appended]


@pytest.mark.anyio
@pytest.mark.parametrize("named", ["https://evil.example", "{url}/", "{url}/other"])
async def test_discovery_refuses_a_different_issuer(
    quirk: QuirkServer, named: str
) -> None:
    issuer = quirk.url
    named = named.format(url=quirk.url)
    quirk.reply(metadata(named, token_endpoint=quirk.token_url), OIDC)
    error = await discovery_failure(issuer)

    assert type(error) is TokenEndpointError
    assert error.kind == "persistent"
    assert repr(named) in str(error)
    assert repr(issuer) in str(error)
    assert quirk.url_for(OIDC) in str(error)


@pytest.mark.anyio
async def test_discovery_refuses_metadata_without_issuer(quirk: QuirkServer) -> None:
    quirk.reply(QuirkResponse(body={"token_endpoint": quirk.token_url}), OIDC)
    error = await discovery_failure(quirk.url)

    assert type(error) is TokenEndpointError
    assert error.kind == "persistent"


@pytest.mark.anyio
@pytest.mark.parametrize("token_endpoint", [None, "", 42, ["https://a.example/t"]])
async def test_discovery_refuses_metadata_without_token_endpoint(
    quirk: QuirkServer, token_endpoint: object
) -> None:
    quirk.reply(metadata(quirk.url, token_endpoint=token_endpoint), OIDC)
    error = await discovery_failure(quirk.url)

    assert type(error) is TokenEndpointError
    assert error.kind == "persistent"
    assert "token_endpoint" in str(error)
    assert quirk.url_for(OIDC) in str(error)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "token_endpoint",
    [
        "http://auth.example.com/token",
        "http://10.0.0.7/token",
        "http://127.0.0.1.nip.io/token",
        "ftp://127.0.0.1/token",
        "/token",
    ],
)
async def test_discovery_refuses_a_plain_http_token_endpoint(
    quirk: QuirkServer, token_endpoint: str
) -> None:
    """Plain http is allowed on loopback only; a DNS name is not loopback."""
    quirk.reply(metadata(quirk.url, token_endpoint=token_endpoint), OIDC)
    error = await discovery_failure(quirk.url)

    assert type(error) is TokenEndpointError
    assert error.kind == "persistent"
    assert token_endpoint in str(error)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "token_endpoint",
    [
        "https://auth.example.com/token",
        "http://127.0.0.1:1/token",
        "http://localhost:1/token",
        "http://[::1]:1/token",
    ],
)
async def test_discovery_accepts_https_or_loopback_http(
    quirk: QuirkServer, token_endpoint: str
) -> None:
    quirk.reply(metadata(quirk.url, token_endpoint=token_endpoint), OIDC)

    assert await discover(quirk.url) == token_endpoint


@pytest.mark.anyio
async def test_discovery_allows_http_when_asked(quirk: QuirkServer) -> None:
    token_endpoint = "http://auth.example.com/token"
    quirk.reply(metadata(quirk.url, token_endpoint=token_endpoint), OIDC)

    assert await discover(quirk.url, allow_http=True) == token_endpoint


@pytest.mark.anyio
async def test_discovery_404_on_both_lists_both_urls(quirk: QuirkServer) -> None:
    issuer = quirk.url_for("/realms/x")
    error = await discovery_failure(issuer)
    message = str(error)

    assert type(error) is EndpointUnavailableError
    assert error.kind == "retryable"
    assert issuer in message
    assert quirk.url_for(RFC8414 + "/realms/x") in message
    assert quirk.url_for("/realms/x" + OIDC) in message
    assert "404" in message


@pytest.mark.anyio
@pytest.mark.parametrize(
    "answer",
    [
        QuirkResponse(body=b"<html>hi</html>", content_type="text/html"),
        QuirkResponse(body=["issuer"]),
        QuirkResponse(status=301, headers={"Location": "https://evil.example/"}),
        QuirkResponse(status=500, body={"error": "server_error"}),
    ],
    ids=["html", "list", "redirect", "500"],
)
async def test_discovery_skips_a_useless_document(
    quirk: QuirkServer, answer: QuirkResponse
) -> None:
    quirk.reply(answer, OIDC)
    quirk.reply(metadata(quirk.url, token_endpoint=quirk.token_url), RFC8414)

    assert await discover(quirk.url) == quirk.token_url


@pytest.mark.anyio
async def test_discovery_reports_a_silent_server(quirk: QuirkServer) -> None:
    slow = dataclasses.replace(metadata(quirk.url, token_endpoint="x"), delay=5)
    quirk.reply(slow, OIDC)
    quirk.reply(slow, RFC8414)
    endpoint = TokenEndpoint(quirk.url, discover=True, timeout=0.3)
    try:
        with pytest.raises(EndpointUnavailableError) as caught:
            await endpoint.token_url()
    finally:
        await endpoint.aclose()

    assert caught.value.kind == "retryable"
    assert "timed out" in str(caught.value)
    assert quirk.url_for(OIDC) in str(caught.value)


@pytest.mark.anyio
async def test_discovery_is_cached_across_token_requests(quirk: QuirkServer) -> None:
    quirk.reply(metadata(quirk.url, token_endpoint=quirk.token_url), OIDC)
    quirk.reply(token_response())
    tokens = await fetch_via_issuer(quirk.url, times=2)

    assert len(tokens) == 2
    assert paths(quirk) == [OIDC, "/token", "/token"]


@pytest.mark.anyio
async def test_discovery_runs_again_after_the_endpoint_disappears(
    quirk: QuirkServer,
) -> None:
    quirk.reply(metadata(quirk.url, token_endpoint=quirk.token_url), OIDC)
    quirk.enqueue(
        token_response(),
        QuirkResponse(status=404, body=b"gone", content_type="text/plain"),
        token_response(),
    )
    endpoint = TokenEndpoint(quirk.url, discover=True, timeout=2.0)
    request = make_request(quirk.url)
    try:
        await endpoint.fetch(request, AUTH, datetime.now(UTC))
        with pytest.raises(TokenEndpointError):
            await endpoint.fetch(request, AUTH, datetime.now(UTC))
        await endpoint.fetch(request, AUTH, datetime.now(UTC))
    finally:
        await endpoint.aclose()

    assert paths(quirk) == [OIDC, "/token", "/token", OIDC, "/token"]


async def discover_mtls(issuer: str) -> tuple[str, str]:
    endpoint = TokenEndpoint(issuer, discover=True, timeout=2.0)
    try:
        return await endpoint.token_url(), await endpoint.token_url(mtls=True)
    finally:
        await endpoint.aclose()


@pytest.mark.anyio
async def test_discovery_finds_the_mtls_alias(quirk: QuirkServer) -> None:
    aliases = {"token_endpoint": "https://mtls.auth.example.test/token"}
    quirk.reply(
        metadata(
            quirk.url, token_endpoint=quirk.token_url, mtls_endpoint_aliases=aliases
        ),
        OIDC,
    )

    plain, mtls = await discover_mtls(quirk.url)

    assert plain == quirk.token_url
    assert mtls == "https://mtls.auth.example.test/token"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "alias", ["", "http://127.0.0.1:1/token", 7, "https://", None, "https://[::1"]
)
async def test_a_bad_mtls_alias_is_ignored_not_fatal(
    quirk: QuirkServer, alias: object, caplog: pytest.LogCaptureFixture
) -> None:
    """Only tls_client_auth uses the alias: it must not stop other tokens."""
    quirk.reply(
        metadata(
            quirk.url,
            token_endpoint=quirk.token_url,
            mtls_endpoint_aliases={"token_endpoint": alias},
        ),
        OIDC,
    )

    plain, mtls = await discover_mtls(quirk.url)

    assert plain == mtls == quirk.token_url
    assert "ignoring it" in caplog.text
