"""The token endpoint client against a loopback server that answers badly on purpose."""

from __future__ import annotations

import base64
import dataclasses
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote_plus, urlencode

import anyio
import pytest
from pydantic import SecretStr

from tests.support.quirk_server import (
    QuirkResponse,
    QuirkServer,
    RecordedRequest,
    error_response,
    token_response,
    unsigned_jwt,
)
from tokend.errors import (
    EndpointUnavailableError,
    ErrorKind,
    InvalidClientError,
    TokenEndpointError,
    TokenRejectedError,
)
from tokend.oauth import MAX_LIFETIME, TokenEndpoint, TokenRequest, secret_auth
from tokend.token import AccessToken, ClientCredentials

AUDIENCE = "https://orders.example.internal"
# RFC 6749 §2.3.1: both parts are form-encoded before Basic, so pick the
# characters that encoding changes.
CLIENT_ID = "orders:client+blue%41 /x"
SECRET = "Zq9:s3cr+et%2F va/lue-7f1c"
CREDENTIALS = ClientCredentials(CLIENT_ID, SecretStr(SECRET))


@pytest.fixture
async def quirk(anyio_backend: str) -> AsyncIterator[QuirkServer]:
    async with QuirkServer() as server:
        yield server


def make_request(url: str, **changes: Any) -> TokenRequest:
    request = TokenRequest(
        endpoint=url,
        client_auth="client_secret_basic",
        audience=AUDIENCE,
        audience_param="resource",
        scopes=("orders:read", "orders:write"),
        extra_params=(),
        default_lifetime=300,
        min_lifetime=10,
    )
    return dataclasses.replace(request, **changes)


async def fetch_token(
    url: str,
    *,
    endpoint_timeout: float = 2.0,
    credentials: ClientCredentials = CREDENTIALS,
    **changes: Any,
) -> AccessToken:
    endpoint = TokenEndpoint(url, timeout=endpoint_timeout)
    try:
        request = make_request(url, **changes)
        auth = secret_auth(request.client_auth, credentials)
        return await endpoint.fetch(request, auth, datetime.now(UTC))
    finally:
        await endpoint.aclose()


async def fetch_failure(url: str, **options: Any) -> TokenEndpointError:
    with pytest.raises(TokenEndpointError) as caught:
        await fetch_token(url, **options)
    return caught.value


def assert_classified(
    error: TokenEndpointError, cls: type[TokenEndpointError], kind: ErrorKind, url: str
) -> None:
    assert type(error) is cls, f"{type(error).__name__}: {error}"
    assert error.kind == kind, f"{error.kind}: {error}"
    assert url in str(error)


def only_request(server: QuirkServer) -> RecordedRequest:
    (request,) = server.requests("/token")
    return request


def jwt_for(lifetime: int, **claims: Any) -> str:
    now = int(time.time())
    return unsigned_jwt({"iat": now, "exp": now + lifetime, "aud": AUDIENCE, **claims})


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --- successful answers ---------------------------------------------------


@pytest.mark.anyio
async def test_fetch_reads_the_token_and_integer_expires_in(quirk: QuirkServer) -> None:
    quirk.reply(token_response(access_token="tok-1", expires_in=3600))
    before = datetime.now(UTC)
    token = await fetch_token(quirk.token_url)

    assert token.value.get_secret_value() == "tok-1"
    assert token.token_type == "Bearer"
    assert token.lifetime == 3600
    assert token.audience == AUDIENCE
    assert before <= token.issued_at <= datetime.now(UTC)
    assert token.expires_at == token.issued_at + timedelta(seconds=3600)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("expires_in", "lifetime"), [("3600", 3600.0), (" 900 ", 900.0), (3599.5, 3599.5)]
)
async def test_fetch_accepts_expires_in_as_string_or_float(
    quirk: QuirkServer, expires_in: object, lifetime: float
) -> None:
    quirk.reply(token_response(expires_in=expires_in))
    token = await fetch_token(quirk.token_url)

    assert token.lifetime == lifetime


@pytest.mark.anyio
async def test_fetch_without_expires_in_uses_the_jwt_lifetime(
    quirk: QuirkServer,
) -> None:
    quirk.reply(token_response(access_token=jwt_for(600), expires_in=None))
    token = await fetch_token(quirk.token_url)

    assert token.lifetime == 600


@pytest.mark.anyio
async def test_fetch_without_expires_in_or_jwt_uses_default_lifetime(
    quirk: QuirkServer,
) -> None:
    quirk.reply(token_response(expires_in=None))
    token = await fetch_token(quirk.token_url, default_lifetime=420)

    assert token.lifetime == 420


@pytest.mark.anyio
@pytest.mark.parametrize(("expires_in", "jwt_lifetime"), [(7200, 600), (600, 7200)])
async def test_fetch_trusts_the_shorter_of_expires_in_and_jwt(
    quirk: QuirkServer, expires_in: int, jwt_lifetime: int
) -> None:
    token_value = jwt_for(jwt_lifetime)
    quirk.reply(token_response(access_token=token_value, expires_in=expires_in))
    token = await fetch_token(quirk.token_url)

    assert token.lifetime == 600


@pytest.mark.anyio
@pytest.mark.parametrize("expires_in", [1e12, "1e12", "Infinity"])
async def test_fetch_caps_an_absurd_expires_in(
    quirk: QuirkServer, expires_in: object
) -> None:
    quirk.reply(token_response(expires_in=expires_in))
    token = await fetch_token(quirk.token_url)

    assert token.lifetime == MAX_LIFETIME
    assert token.expires_at > token.issued_at


@pytest.mark.anyio
@pytest.mark.parametrize("expires_in", [0, -60, 5, "0"])
async def test_fetch_rejects_a_token_below_min_lifetime(
    quirk: QuirkServer, expires_in: object
) -> None:
    quirk.reply(token_response(expires_in=expires_in))
    error = await fetch_failure(quirk.token_url)

    assert_classified(error, TokenRejectedError, "retryable", quirk.token_url)
    assert "min_lifetime" in str(error)


@pytest.mark.anyio
@pytest.mark.parametrize("expires_in", ["abc", "", [3600], {"s": 1}])
async def test_fetch_rejects_a_non_numeric_expires_in(
    quirk: QuirkServer, expires_in: object
) -> None:
    quirk.reply(token_response(expires_in=expires_in))
    error = await fetch_failure(quirk.token_url)

    assert_classified(error, TokenRejectedError, "retryable", quirk.token_url)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        b'{"access_token": "tok", "token_type": "Bearer", "expires_in": "NaN"}',
        b'{"access_token": "tok", "token_type": "Bearer", "expires_in": NaN}',
    ],
    ids=["string", "json-literal"],
)
async def test_fetch_rejects_nan_expires_in(quirk: QuirkServer, body: bytes) -> None:
    """float() and Python's json both accept NaN; a NaN lifetime must not pass."""
    quirk.reply(QuirkResponse(body=body))
    error = await fetch_failure(quirk.token_url)

    assert_classified(error, TokenRejectedError, "retryable", quirk.token_url)


@pytest.mark.anyio
@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "BEARER"])
async def test_fetch_accepts_bearer_in_any_case(
    quirk: QuirkServer, token_type: str
) -> None:
    quirk.reply(token_response(token_type=token_type))
    token = await fetch_token(quirk.token_url)

    assert token.token_type == "Bearer"


@pytest.mark.anyio
@pytest.mark.parametrize("token_type", ["DPoP", "mac", None, "", 1])
async def test_fetch_rejects_other_token_types(
    quirk: QuirkServer, token_type: object
) -> None:
    quirk.reply(token_response(token_type=token_type))
    error = await fetch_failure(quirk.token_url)

    assert_classified(error, TokenRejectedError, "persistent", quirk.token_url)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("orders:read  extra", ("orders:read", "extra")),
        (["orders:read", "extra"], ("orders:read", "extra")),
        (None, ("orders:read", "orders:write")),
    ],
    ids=["string", "list", "missing"],
)
async def test_fetch_reads_scope(
    quirk: QuirkServer, scope: object, expected: tuple[str, ...]
) -> None:
    quirk.reply(token_response(scope=scope))
    token = await fetch_token(quirk.token_url)

    assert token.scope == expected


@pytest.mark.anyio
async def test_fetch_ignores_a_refresh_token(quirk: QuirkServer) -> None:
    quirk.reply(token_response(refresh_token="refresh-me-not-4b1d"))
    token = await fetch_token(quirk.token_url)

    assert "refresh-me-not-4b1d" not in repr(vars(token))
    assert "refresh-me-not-4b1d" not in repr(token.value.get_secret_value())


@pytest.mark.anyio
async def test_fetch_accepts_a_form_encoded_answer(quirk: QuirkServer) -> None:
    """Some servers (GitHub's, old Facebook's) answer form-encoded."""
    body = urlencode(
        {
            "access_token": "form-tok",
            "token_type": "bearer",
            "expires_in": "1800",
            "scope": "orders:read",
        }
    )
    quirk.reply(
        QuirkResponse(body=body, content_type="application/x-www-form-urlencoded")
    )
    token = await fetch_token(quirk.token_url)

    assert token.value.get_secret_value() == "form-tok"
    assert token.lifetime == 1800
    assert token.scope == ("orders:read",)


@pytest.mark.anyio
@pytest.mark.parametrize("access_token", [None, "", "   ", 42])
async def test_fetch_rejects_200_without_access_token(
    quirk: QuirkServer, access_token: object
) -> None:
    quirk.reply(token_response(access_token=access_token))
    error = await fetch_failure(quirk.token_url)

    assert_classified(error, TokenRejectedError, "retryable", quirk.token_url)


@pytest.mark.anyio
async def test_fetch_classifies_200_with_an_error_member(quirk: QuirkServer) -> None:
    quirk.reply(error_response(200, "invalid_scope", "no such scope"))
    error = await fetch_failure(quirk.token_url)

    assert_classified(error, TokenEndpointError, "persistent", quirk.token_url)
    assert error.error == "invalid_scope"
    assert error.description == "no such scope"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'["access_token", "tok"]', "application/json"),
        (b'"access_token"', "application/json"),
        (b"null", "application/json"),
        (b"", "application/json"),
        (b"{not json", "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (b"<html>logged out</html>", "text/html"),
    ],
    ids=["list", "string", "null", "empty", "broken", "not-utf8", "html"],
)
async def test_fetch_rejects_200_that_is_not_a_json_object(
    quirk: QuirkServer, body: bytes, content_type: str
) -> None:
    quirk.reply(QuirkResponse(body=body, content_type=content_type))
    error = await fetch_failure(quirk.token_url)

    assert_classified(error, TokenRejectedError, "retryable", quirk.token_url)


@pytest.mark.anyio
@pytest.mark.parametrize("aud", ["https://other.example", ["a", "b"]])
async def test_fetch_rejects_a_jwt_for_another_audience(
    quirk: QuirkServer, aud: object
) -> None:
    quirk.reply(token_response(access_token=jwt_for(600, aud=aud)))
    error = await fetch_failure(quirk.token_url)

    assert_classified(error, TokenRejectedError, "persistent", quirk.token_url)
    assert AUDIENCE in str(error)


@pytest.mark.anyio
@pytest.mark.parametrize("aud", [AUDIENCE, ["https://other.example", AUDIENCE]])
async def test_fetch_accepts_a_jwt_whose_aud_names_the_audience(
    quirk: QuirkServer, aud: object
) -> None:
    quirk.reply(token_response(access_token=jwt_for(600, aud=aud)))
    token = await fetch_token(quirk.token_url)

    assert token.claims["aud"] == aud


@pytest.mark.anyio
@pytest.mark.parametrize("access_token", ["two words", "tab\there", "line\nbreak"])
async def test_fetch_rejects_an_access_token_with_whitespace(
    quirk: QuirkServer, access_token: str
) -> None:
    quirk.reply(token_response(access_token=access_token))
    error = await fetch_failure(quirk.token_url)

    assert isinstance(error, TokenRejectedError)
    assert quirk.token_url in str(error)


# --- the request ------------------------------------------------------------


@pytest.mark.anyio
async def test_fetch_sends_a_client_credentials_form(quirk: QuirkServer) -> None:
    quirk.reply(token_response())
    await fetch_token(quirk.token_url)
    sent = only_request(quirk)

    assert sent.method == "POST"
    assert sent.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    assert sent.headers["Accept"] == "application/json"
    assert sent.form == {
        "grant_type": "client_credentials",
        "scope": "orders:read orders:write",
        "resource": AUDIENCE,
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("audience_param", "expected"),
    [("resource", {"resource": AUDIENCE}), ("audience", {"audience": AUDIENCE})],
)
async def test_fetch_sends_the_audience_as_configured(
    quirk: QuirkServer, audience_param: str, expected: dict[str, str]
) -> None:
    quirk.reply(token_response())
    await fetch_token(quirk.token_url, audience_param=audience_param)
    form = only_request(quirk).form

    assert {k: form[k] for k in ("resource", "audience") if k in form} == expected


@pytest.mark.anyio
async def test_fetch_sends_no_audience_with_audience_param_none(
    quirk: QuirkServer,
) -> None:
    quirk.reply(token_response())
    await fetch_token(quirk.token_url, audience_param="none", scopes=())
    form = only_request(quirk).form

    assert form == {"grant_type": "client_credentials"}


@pytest.mark.anyio
async def test_fetch_sends_extra_params(quirk: QuirkServer) -> None:
    quirk.reply(token_response())
    extra = (("tenant", "blue team"), ("x-odd", "a&b=c"))
    await fetch_token(quirk.token_url, extra_params=extra)
    form = only_request(quirk).form

    assert form["tenant"] == "blue team"
    assert form["x-odd"] == "a&b=c"
    assert form["grant_type"] == "client_credentials"


@pytest.mark.anyio
async def test_fetch_form_encodes_basic_credentials(quirk: QuirkServer) -> None:
    """RFC 6749 §2.3.1: id and secret are form-encoded, then joined by a colon."""
    quirk.reply(token_response())
    await fetch_token(quirk.token_url, client_auth="client_secret_basic")
    sent = only_request(quirk)
    pair = f"{quote_plus(CLIENT_ID)}:{quote_plus(SECRET)}"

    assert sent.headers["Authorization"] == "Basic " + base64.b64encode(
        pair.encode()
    ).decode("ascii")
    assert sent.basic_auth() == (CLIENT_ID, SECRET)
    assert "client_secret" not in sent.form
    assert SECRET.encode() not in sent.body
    assert quote_plus(SECRET).encode() not in sent.body


@pytest.mark.anyio
async def test_fetch_posts_credentials_with_client_secret_post(
    quirk: QuirkServer,
) -> None:
    quirk.reply(token_response())
    await fetch_token(quirk.token_url, client_auth="client_secret_post")
    sent = only_request(quirk)

    assert "Authorization" not in sent.headers
    assert sent.form["client_id"] == CLIENT_ID
    assert sent.form["client_secret"] == SECRET


@pytest.mark.anyio
async def test_fetch_does_not_follow_a_redirect(quirk: QuirkServer) -> None:
    moved = quirk.url_for("/elsewhere")
    quirk.reply(QuirkResponse(status=302, headers={"Location": moved}, body=b""))
    quirk.reply(token_response(), path="/elsewhere")
    error = await fetch_failure(quirk.token_url)

    assert_classified(error, TokenEndpointError, "persistent", quirk.token_url)
    assert "302" in str(error)
    assert quirk.requests("/elsewhere") == []


# --- error answers ----------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "code", ["invalid_scope", "invalid_target", "unauthorized_client"]
)
async def test_fetch_classifies_configuration_errors_as_persistent(
    quirk: QuirkServer, code: str
) -> None:
    quirk.reply(error_response(400, code, "scope orders:write is not allowed"))
    error = await fetch_failure(quirk.token_url)

    assert_classified(error, TokenEndpointError, "persistent", quirk.token_url)
    assert error.error == code
    assert error.description == "scope orders:write is not allowed"
    assert error.status == 400
    assert code in str(error)
    assert "scope orders:write is not allowed" in str(error)


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 401])
async def test_fetch_classifies_invalid_client_as_credentials(
    quirk: QuirkServer, status: int
) -> None:
    quirk.reply(
        error_response(status, "invalid_client", **{"WWW-Authenticate": "Basic"})
    )
    error = await fetch_failure(quirk.token_url)

    assert_classified(error, InvalidClientError, "credentials", quirk.token_url)
    assert error.error == "invalid_client"


@pytest.mark.anyio
async def test_fetch_classifies_a_bare_401_as_credentials(quirk: QuirkServer) -> None:
    quirk.reply(
        QuirkResponse(status=401, body="Unauthorized", content_type="text/plain")
    )
    error = await fetch_failure(quirk.token_url)

    assert_classified(error, InvalidClientError, "credentials", quirk.token_url)


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 503])
async def test_fetch_classifies_temporarily_unavailable_as_retryable(
    quirk: QuirkServer, status: int
) -> None:
    quirk.reply(error_response(status, "temporarily_unavailable", "maintenance"))
    error = await fetch_failure(quirk.token_url)

    assert_classified(error, EndpointUnavailableError, "retryable", quirk.token_url)
    assert error.error == "temporarily_unavailable"


@pytest.mark.anyio
@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_fetch_classifies_an_html_5xx_as_unavailable(
    quirk: QuirkServer, status: int
) -> None:
    page = "<html><body><h1>Bad Gateway</h1>" + "<p>nginx</p>" * 500 + "</body></html>"
    quirk.reply(QuirkResponse(status=status, body=page, content_type="text/html"))
    error = await fetch_failure(quirk.token_url)
    message = str(error)

    assert_classified(error, EndpointUnavailableError, "retryable", quirk.token_url)
    assert error.status == status
    assert str(status) in message
    assert "text/html" in message
    assert "Bad Gateway" in message
    assert len(message) - len(quirk.token_url) < 300


@pytest.mark.anyio
async def test_fetch_reads_retry_after_seconds(quirk: QuirkServer) -> None:
    quirk.reply(QuirkResponse(status=429, headers={"Retry-After": "7"}, body=b""))
    error = await fetch_failure(quirk.token_url)

    assert_classified(error, EndpointUnavailableError, "retryable", quirk.token_url)
    assert error.retry_after == 7


@pytest.mark.anyio
async def test_fetch_classifies_429_with_an_error_code_as_unavailable(
    quirk: QuirkServer,
) -> None:
    """Auth0 answers rate limits with 429 and error "too_many_requests"."""
    quirk.reply(
        error_response(429, "too_many_requests", "slow down", **{"Retry-After": "3"})
    )
    error = await fetch_failure(quirk.token_url)

    assert_classified(error, EndpointUnavailableError, "retryable", quirk.token_url)
    assert error.retry_after == 3


@pytest.mark.anyio
async def test_fetch_reads_retry_after_as_an_http_date(quirk: QuirkServer) -> None:
    moment = datetime.now(UTC) + timedelta(seconds=10)
    header = format_datetime(moment, usegmt=True)
    quirk.reply(QuirkResponse(status=503, headers={"Retry-After": header}, body=b""))
    error = await fetch_failure(quirk.token_url)

    assert_classified(error, EndpointUnavailableError, "retryable", quirk.token_url)
    assert error.retry_after is not None
    assert 8 <= error.retry_after <= 10.5


@pytest.mark.anyio
@pytest.mark.parametrize("header", ["soon", "-5", "7.5", "Mon, 99 Foo 2024"])
async def test_fetch_ignores_a_garbage_retry_after(
    quirk: QuirkServer, header: str
) -> None:
    quirk.reply(QuirkResponse(status=503, headers={"Retry-After": header}, body=b""))
    error = await fetch_failure(quirk.token_url)

    assert_classified(error, EndpointUnavailableError, "retryable", quirk.token_url)
    assert error.retry_after is None


# --- transport failures -----------------------------------------------------


@pytest.mark.anyio
async def test_fetch_reports_connection_refused_as_retryable(
    anyio_backend: str,
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/token"
    error = await fetch_failure(url)

    assert_classified(error, EndpointUnavailableError, "retryable", url)
    assert "cannot reach" in str(error)


@pytest.mark.anyio
async def test_fetch_reports_a_silent_server_as_a_timeout(quirk: QuirkServer) -> None:
    quirk.reply(dataclasses.replace(token_response(), delay=5))
    started = time.monotonic()
    error = await fetch_failure(quirk.token_url, endpoint_timeout=0.5)

    assert_classified(error, EndpointUnavailableError, "retryable", quirk.token_url)
    assert "did not answer" in str(error)
    assert time.monotonic() - started < 2.5


@pytest.mark.anyio
async def test_fetch_reports_a_stalled_body_as_a_timeout(quirk: QuirkServer) -> None:
    quirk.reply(dataclasses.replace(token_response(), body_delay=5))
    started = time.monotonic()
    error = await fetch_failure(quirk.token_url, endpoint_timeout=0.5)

    assert_classified(error, EndpointUnavailableError, "retryable", quirk.token_url)
    assert "did not answer" in str(error)
    assert time.monotonic() - started < 2.5


@pytest.mark.anyio
async def test_fetch_reads_a_slow_body_to_the_end(quirk: QuirkServer) -> None:
    """A body that arrives in two pieces within the timeout is one answer."""
    quirk.reply(
        dataclasses.replace(token_response(access_token="slow-tok"), body_delay=0.2)
    )
    token = await fetch_token(quirk.token_url, endpoint_timeout=3)

    assert token.value.get_secret_value() == "slow-tok"


@pytest.mark.anyio
async def test_fetch_reports_tls_to_a_plain_http_port(quirk: QuirkServer) -> None:
    url = quirk.token_url.replace("http://", "https://")
    error = await fetch_failure(url)

    assert_classified(error, EndpointUnavailableError, "retryable", url)
    assert "TLS" in str(error) or "cannot reach" in str(error)


# --- secrets ----------------------------------------------------------------


def assert_secret_absent(error: TokenEndpointError, *forms: str) -> None:
    shown = [str(error), repr(error), repr(error.args), repr(vars(error))]
    for form in (SECRET, *forms):
        for text in shown:
            assert form not in text, f"{form!r} leaked in {text!r}"


@pytest.mark.anyio
async def test_fetch_redacts_a_secret_echoed_in_error_description(
    quirk: QuirkServer,
) -> None:
    quirk.reply(error_response(401, "invalid_client", f"bad secret {SECRET!s}"))
    error = await fetch_failure(quirk.token_url)

    assert_classified(error, InvalidClientError, "credentials", quirk.token_url)
    assert_secret_absent(error)


@pytest.mark.anyio
async def test_fetch_redacts_a_secret_echoed_in_an_html_page(
    quirk: QuirkServer,
) -> None:
    def echo_form(request: RecordedRequest) -> QuirkResponse:
        page = f"<pre>{request.form}</pre>"
        return QuirkResponse(status=500, body=page, content_type="text/html")

    quirk.reply(echo_form)
    error = await fetch_failure(quirk.token_url, client_auth="client_secret_post")

    assert_classified(error, EndpointUnavailableError, "retryable", quirk.token_url)
    assert CLIENT_ID in str(error) or "client_id" in str(error)
    assert_secret_absent(error)


@pytest.mark.anyio
async def test_fetch_redacts_a_secret_echoed_form_encoded(quirk: QuirkServer) -> None:
    """A debug page that echoes the raw request body shows the secret encoded."""

    def echo_body(request: RecordedRequest) -> QuirkResponse:
        return QuirkResponse(status=400, body=request.body, content_type="text/plain")

    quirk.reply(echo_body)
    error = await fetch_failure(
        quirk.token_url,
        client_auth="client_secret_post",
        scopes=(),
        audience_param="none",
    )
    assert quote_plus(SECRET).encode() in only_request(quirk).body

    assert_classified(error, TokenEndpointError, "persistent", quirk.token_url)
    assert_secret_absent(error, quote_plus(SECRET))


@pytest.mark.anyio
async def test_fetch_redacts_an_echoed_authorization_header(
    quirk: QuirkServer,
) -> None:
    """The Basic header is the secret in base64; an echo of it is a leak."""

    def echo_headers(request: RecordedRequest) -> QuirkResponse:
        lines = "\n".join(f"{k}: {v}" for k, v in request.headers.items())
        return QuirkResponse(status=502, body=lines, content_type="text/plain")

    quirk.reply(echo_headers)
    error = await fetch_failure(quirk.token_url, client_auth="client_secret_basic")
    encoded = only_request(quirk).headers["Authorization"].split()[1]

    assert_classified(error, EndpointUnavailableError, "retryable", quirk.token_url)
    assert_secret_absent(error, encoded, encoded[:40])


@pytest.mark.anyio
async def test_fetch_redacts_a_secret_cut_by_the_snippet_limit(
    quirk: QuirkServer,
) -> None:
    """The page is cut to a snippet; a secret across the cut must not leak in part."""
    page = "x" * 190 + SECRET + "y" * 100
    quirk.reply(QuirkResponse(status=500, body=page, content_type="text/plain"))
    error = await fetch_failure(quirk.token_url)

    assert_classified(error, EndpointUnavailableError, "retryable", quirk.token_url)
    assert_secret_absent(error, SECRET[:10])


@pytest.mark.anyio
async def test_fetch_redacts_a_secret_echoed_in_the_error_code(
    quirk: QuirkServer,
) -> None:
    quirk.reply(error_response(400, f"invalid_request:{SECRET}"))
    error = await fetch_failure(quirk.token_url)

    assert_classified(error, TokenEndpointError, "persistent", quirk.token_url)
    assert_secret_absent(error)


def test_client_credentials_repr_hides_the_secret() -> None:
    assert SECRET not in repr(CREDENTIALS)
    assert SECRET not in str(CREDENTIALS)
    assert CLIENT_ID in repr(CREDENTIALS)


@pytest.mark.anyio
async def test_access_token_repr_shows_a_fingerprint_only(quirk: QuirkServer) -> None:
    value = jwt_for(600)
    quirk.reply(token_response(access_token=value))
    token = await fetch_token(quirk.token_url)

    for text in (repr(token), str(token), f"{token}"):
        assert value not in text
        assert value.split(".")[1] not in text
        assert token.fingerprint in text
    assert len(token.fingerprint) < 20


def test_fetch_against_a_quirk_server_in_a_thread() -> None:
    """The quirk server also runs in its own thread, for sync callers."""
    with QuirkServer() as server:
        server.enqueue(error_response(503, "temporarily_unavailable"))
        server.reply(token_response(access_token="threaded-tok"))
        with pytest.raises(EndpointUnavailableError):
            anyio.run(fetch_token, server.token_url)
        token = anyio.run(fetch_token, server.token_url)
        sent = server.requests()

    assert token.value.get_secret_value() == "threaded-tok"
    assert [request.path for request in sent] == ["/token", "/token"]
    assert sent[1].basic_auth() == (CLIENT_ID, SECRET)


@pytest.mark.anyio
async def test_many_concurrent_fetches_share_one_session(quirk: QuirkServer) -> None:
    """Keepers starting together must not each build a session (and leak it)."""
    import anyio

    quirk.reply(token_response())
    endpoint = TokenEndpoint(quirk.token_url, timeout=5)
    request = make_request(quirk.token_url)
    sessions = set()

    async def one() -> None:
        await endpoint.fetch(
            request, secret_auth(request.client_auth, CREDENTIALS), datetime.now(UTC)
        )
        sessions.add(id(await endpoint.session()))

    try:
        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(one)
    finally:
        await endpoint.aclose()

    assert len(sessions) == 1
