"""Whatever a token endpoint answers, tokend gets a usable token or a TokendError.

Property tests over the reading of token responses: any JSON value as a 200
body, token-shaped documents whose members have the wrong types, and any
status with any body. A smaller property goes through real HTTP on loopback.
"""

from __future__ import annotations

import base64
import json
import math
import string
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, quote_plus

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from tests.support.quirk_server import QuirkResponse, QuirkServer, unsigned_jwt
from tokend.errors import TokendError, TokenEndpointError
from tokend.oauth import (
    MAX_LIFETIME,
    TokenEndpoint,
    TokenRequest,
    basic_authorization,
    describe_failure,
    read_token_response,
    secret_auth,
)
from tokend.token import AccessToken, ClientCredentials

URL = "https://auth.example.test/oauth2/token"
AUDIENCE = "https://orders.example.test"
SECRET = "Zq9:s3cr+et%2F/va-lue-7f1c"
CREDENTIALS = ClientCredentials("orders-client", SecretStr(SECRET))
# Every form of the secret a server might echo: raw, form-encoded, in Basic.
SECRETS = secret_auth("client_secret_basic", CREDENTIALS).secrets
KINDS = {"retryable", "credentials", "persistent"}
MAX_MESSAGE = 600
SENT_AT = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
FUZZ = settings(max_examples=300, deadline=None)


def make_request(**changes: Any) -> TokenRequest:
    fields: dict[str, Any] = {
        "endpoint": URL,
        "client_auth": "client_secret_basic",
        "audience": AUDIENCE,
        "audience_param": "resource",
        "scopes": ("orders:read",),
        "extra_params": (),
        "default_lifetime": 300,
        "min_lifetime": 10,
    }
    fields.update(changes)
    return TokenRequest(**fields)


# --- strategies -------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner)
    ),
    max_leaves=12,
)
huge_integers = st.integers(min_value=10**300, max_value=10**400) | st.integers(
    max_value=-(10**300), min_value=-(10**400)
)
numbers = (
    st.integers(min_value=-(10**6), max_value=10**9)
    | st.floats(allow_nan=True, allow_infinity=True)
    | huge_integers
)
numeric_strings = numbers.map(str) | st.sampled_from(
    ["1e999", "-1e999", "NaN", "inf", " 3600 ", "3600.5", "0x10", "", "3_600"]
)
claims = st.fixed_dictionaries(
    {},
    optional={
        "exp": numbers | json_values,
        "iat": numbers | json_values,
        "aud": st.just(AUDIENCE)
        | st.lists(st.just(AUDIENCE) | st.text(max_size=10), max_size=3)
        | json_values,
    },
)
token_values = (
    st.text(alphabet=string.ascii_letters + string.digits + "-._~+/=", min_size=1)
    | claims.map(unsigned_jwt)
    | json_values
)
token_documents = st.fixed_dictionaries(
    {},
    optional={
        "access_token": token_values,
        "token_type": st.sampled_from(["Bearer", "bearer", "BEARER", "DPoP", ""])
        | json_values,
        "expires_in": numbers | numeric_strings | json_values,
        "scope": st.text(max_size=30) | st.lists(json_values, max_size=3) | json_values,
        "refresh_token": json_values,
    },
)
statuses = st.integers(min_value=100, max_value=599)
content_types = st.sampled_from(
    [
        "application/json",
        "application/x-www-form-urlencoded",
        "text/html",
        "text/plain",
        "",
    ]
)
# Shapes in which a badly built server echoes the client secret back.
secret_echoes = st.sampled_from(
    [
        SECRET,
        quote_plus(SECRET),
        quote(SECRET, safe=""),
        basic_authorization(CREDENTIALS),
        f"client_secret={quote_plus(SECRET)}",
    ]
)
echoing_texts = st.lists(secret_echoes | st.text(max_size=40), max_size=5).map("".join)
error_documents = st.fixed_dictionaries(
    {"error": echoing_texts | json_values},
    optional={"error_description": echoing_texts | json_values},
)
failure_bodies = (
    st.binary(max_size=300)
    | echoing_texts.map(str.encode)
    | error_documents.map(lambda d: json.dumps(d).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
)


# --- checks -----------------------------------------------------------------


def assert_publishable(token: AccessToken, request: TokenRequest) -> None:
    value = token.value.get_secret_value()
    assert isinstance(value, str) and value
    assert not any(c.isspace() for c in value)
    assert token.token_type == "Bearer"
    assert math.isfinite(token.lifetime), token.lifetime
    assert max(request.min_lifetime, 1) <= token.lifetime <= MAX_LIFETIME
    assert token.expires_at > token.issued_at


def assert_classified(error: BaseException) -> None:
    assert isinstance(error, TokendError), f"{type(error).__name__}: {error}"
    assert error.kind in KINDS


def read_document(document: Any, request: TokenRequest) -> AccessToken:
    """What ``TokenEndpoint.fetch`` does with a decoded 200 answer."""
    if isinstance(document, dict) and "error" not in document:
        return read_token_response(document, request, SENT_AT, URL)
    body = json.dumps(document).encode()
    raise describe_failure(URL, 200, "application/json", body, document, None, SECRETS)


def outcome_of(document: Any, request: TokenRequest) -> None:
    try:
        token = read_document(document, request)
    except Exception as exc:
        assert_classified(exc)
    else:
        assert_publishable(token, request)


# --- properties over parsed documents ---------------------------------------


@FUZZ
@given(document=json_values)
def test_any_json_value_as_a_200_body_is_a_token_or_a_tokend_error(
    document: Any,
) -> None:
    outcome_of(document, make_request())


@FUZZ
@given(document=token_documents, min_lifetime=st.sampled_from([0, 10, 3000]))
def test_any_token_shaped_document_is_a_token_or_a_tokend_error(
    document: dict[str, Any], min_lifetime: int
) -> None:
    outcome_of(document, make_request(min_lifetime=min_lifetime))


@pytest.mark.parametrize(
    ("expires_in", "claims"),
    [
        pytest.param(10**400, None, id="expires_in-huge-integer"),
        pytest.param(None, {"exp": 10**400}, id="jwt-exp-huge-integer"),
        pytest.param(None, {"exp": math.nan}, id="jwt-exp-nan"),
        pytest.param(None, {"iat": math.inf, "exp": math.inf}, id="jwt-exp-iat-inf"),
    ],
)
def test_odd_lifetimes_are_rejected_as_tokend_errors(
    expires_in: Any, claims: dict[str, Any] | None
) -> None:
    """Each odd lifetime, pinned alone so a failure names its case."""
    document: dict[str, Any] = {"token_type": "Bearer"}
    document["access_token"] = unsigned_jwt(claims) if claims else "opaque"
    if expires_in is not None:
        document["expires_in"] = expires_in

    outcome_of(document, make_request(audience_param="none"))


def test_deeply_nested_jwt_payload_is_a_tokend_error() -> None:
    payload = base64.urlsafe_b64encode(b"[" * 50_000).rstrip(b"=").decode()
    document = {"access_token": f"eyJhbGciOiJub25lIn0.{payload}.sig"}
    document["token_type"] = "Bearer"

    outcome_of(document, make_request())


# --- properties over failures ------------------------------------------------


def decode_like_fetch(body: bytes, content_type: str) -> Any:
    """Decode a body as the endpoint client does, for realistic documents."""
    from tokend.oauth import _decode  # the one step between body and describe

    return _decode(body, content_type)


@FUZZ
@given(status=statuses, body=failure_bodies, content_type=content_types)
def test_describe_failure_is_classified_bounded_and_secret_free(
    status: int, body: bytes, content_type: str
) -> None:
    document = decode_like_fetch(body, content_type)

    error = describe_failure(URL, status, content_type, body, document, None, SECRETS)

    assert isinstance(error, TokenEndpointError)
    assert error.kind in KINDS
    assert error.status == status
    message = str(error)
    assert len(message) <= MAX_MESSAGE, len(message)
    assert URL in message
    for shown in (message, repr(error), error.error or "", error.description or ""):
        assert SECRET not in shown
        assert quote_plus(SECRET) not in shown
    code = document.get("error") if isinstance(document, dict) else None
    if code == "invalid_client" or (not isinstance(code, str) and status == 401):
        assert error.kind == "credentials"
    elif status >= 500 or status in (429, 503):
        assert error.kind == "retryable"


@settings(max_examples=100, deadline=None)
@given(
    status=statuses,
    error=echoing_texts,
    description=echoing_texts,
)
def test_describe_failure_message_is_one_line(
    status: int, error: str, description: str
) -> None:
    """A server's error fields cannot start a new (forged) log line."""
    document = {"error": error, "error_description": description}
    body = json.dumps(document).encode()

    failure = describe_failure(
        URL, status, "application/json", body, document, None, SECRETS
    )

    assert "\n" not in str(failure) and "\r" not in str(failure)


def test_describe_failure_bounds_and_redacts_the_content_type() -> None:
    """The content type comes from the server too: bounded and redacted."""
    content_type = f"text/{SECRET}" + "x" * 2000

    error = describe_failure(URL, 400, content_type, b"", None, None, SECRETS)

    assert SECRET not in str(error)
    assert len(str(error)) <= MAX_MESSAGE


# --- through real HTTP --------------------------------------------------------

http_bodies = (
    token_documents.map(lambda d: json.dumps(d).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=200)
)


async def fetch_once(server: QuirkServer, request: TokenRequest) -> AccessToken:
    endpoint = TokenEndpoint(server.token_url, timeout=5, allow_http=True)
    try:
        return await endpoint.fetch(
            request, secret_auth(request.client_auth, CREDENTIALS), datetime.now(UTC)
        )
    finally:
        await endpoint.aclose()


def fetch_outcome(server: QuirkServer, answer: QuirkResponse) -> None:
    server.clear()
    server.reply(answer)
    request = make_request(endpoint=server.token_url)
    try:
        token = anyio.run(fetch_once, server, request)
    except Exception as exc:
        assert_classified(exc)
        assert SECRET not in str(exc)
    else:
        assert_publishable(token, request)


def test_fetch_over_http_is_a_token_or_a_tokend_error() -> None:
    with QuirkServer() as server:

        @settings(
            max_examples=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(
            status=st.sampled_from([200, 200, 200, 400, 401, 429, 500, 503]),
            body=http_bodies,
            content_type=content_types,
        )
        def check(status: int, body: bytes, content_type: str) -> None:
            answer = QuirkResponse(
                status=status, body=body, content_type=content_type or None
            )
            fetch_outcome(server, answer)

        check()


@pytest.mark.parametrize("status", [200, 400])
def test_fetch_of_a_deeply_nested_json_body_is_a_tokend_error(status: int) -> None:
    with QuirkServer() as server:
        fetch_outcome(server, QuirkResponse(status=status, body=b"[" * 100_000))
