"""The OAuth test server behaves the way tokend's tests rely on."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.support import oauth_server as oauth_server_module
from tests.support.oauth_fixtures import OAuthClient, RegisterOAuthClient
from tests.support.oauth_server import (
    OAuthServer,
    OAuthServerError,
    encode_basic_auth,
)

pytestmark = pytest.mark.integration

RESOURCE = "https://api.example.test/"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class TokenResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def request_token(
    server: OAuthServer,
    client: OAuthClient,
    *,
    resource: str | None = None,
    scope: str | None = None,
    secret: str | None = None,
    authorization: str | None = None,
) -> TokenResponse:
    """POST a client_credentials request, authenticating as the client registered.

    ``secret`` overrides the client's secret; ``authorization`` replaces the
    Authorization header that client_secret_basic would send.
    """
    form = {"grant_type": "client_credentials"}
    if resource is not None:
        form["resource"] = resource
    if scope is not None:
        form["scope"] = scope
    client_secret = client.client_secret if secret is None else secret
    headers = {}
    if client.auth_method == "client_secret_post":
        form.update(client_id=client.client_id, client_secret=client_secret)
    else:
        headers["Authorization"] = authorization or encode_basic_auth(
            client.client_id, client_secret
        )

    data = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(server.token_url, data=data, headers=headers)
    try:
        with _OPENER.open(request, timeout=5) as response:
            return TokenResponse(
                response.status, json.load(response), dict(response.headers)
            )
    except urllib.error.HTTPError as exc:
        with exc:
            return TokenResponse(exc.code, json.load(exc), dict(exc.headers))


def test_discovery_names_the_endpoints(oauth: OAuthServer) -> None:
    assert oauth.issuer == f"http://127.0.0.1:{oauth.port}"
    assert oauth.token_url == f"{oauth.issuer}/token"
    assert oauth.jwks_uri == f"{oauth.issuer}/jwks"
    assert oauth.introspection_url == f"{oauth.issuer}/token/introspection"


def test_token_with_resource_is_jwt_for_that_audience(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient
) -> None:
    """Requested scopes the client may not have are dropped, not refused."""
    client = oauth_client(scopes=["read", "write"])

    response = request_token(oauth, client, resource=RESOURCE, scope="read admin")

    assert response.status == 200
    assert response.body["token_type"] == "Bearer"
    assert response.body["expires_in"] == oauth.default_ttl
    assert response.body["scope"] == "read"
    token = response.body["access_token"]
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    claims = oauth.decode_access_token(token, audience=RESOURCE)
    assert claims["aud"] == RESOURCE
    assert claims["client_id"] == claims["sub"] == client.client_id
    assert claims["scope"] == "read"
    assert claims["exp"] - claims["iat"] == oauth.default_ttl


def test_token_signature_fails_against_another_audience(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient
) -> None:
    client = oauth_client()
    token = request_token(oauth, client, resource=RESOURCE).body["access_token"]

    with pytest.raises(jwt.InvalidAudienceError):
        oauth.decode_access_token(token, audience="https://other.example.test/")


def test_set_ttl_applies_to_the_next_token(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient
) -> None:
    client = oauth_client()
    oauth.set_ttl(7)

    response = request_token(oauth, client, resource=RESOURCE)

    assert response.body["expires_in"] == 7
    claims = oauth.decode_access_token(response.body["access_token"], RESOURCE)
    assert claims["exp"] - claims["iat"] == 7


def test_token_without_resource_is_opaque_and_introspects_active(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient
) -> None:
    client = oauth_client()

    response = request_token(oauth, client)

    assert response.status == 200
    token = response.body["access_token"]
    with pytest.raises(jwt.DecodeError):
        jwt.get_unverified_header(token)
    details = oauth.introspect(token, client.client_id, client.client_secret)
    assert details["active"] is True
    assert details["client_id"] == client.client_id
    assert details["exp"] - details["iat"] == oauth.default_ttl


def test_introspection_of_unknown_token_is_inactive(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient
) -> None:
    client = oauth_client()

    details = oauth.introspect("not-a-token", client.client_id, client.client_secret)

    assert details == {"active": False}


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
def test_token_accepts_the_registered_auth_method(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient, auth_method: str
) -> None:
    client = oauth_client(auth_method=auth_method)

    response = request_token(oauth, client, resource=RESOURCE)

    assert response.status == 200
    assert oauth.auth_methods(client.client_id) == {auth_method: 1}


@pytest.mark.parametrize(
    ("registered", "used"),
    [
        ("client_secret_basic", "client_secret_post"),
        ("client_secret_post", "client_secret_basic"),
    ],
)
def test_token_rejects_another_auth_method(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient, registered: str, used: str
) -> None:
    client = oauth_client(auth_method=registered)
    impostor = OAuthClient(client.client_id, client.client_secret, (), used)

    response = request_token(oauth, impostor)

    assert response.status == 401
    assert response.body["error"] == "invalid_client"


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
def test_token_accepts_special_characters_in_credentials(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient, auth_method: str
) -> None:
    client = oauth_client(
        client_id="svc:a+b%2F c",
        client_secret="p:a+s%s w/rd=&",
        auth_method=auth_method,
    )

    response = request_token(oauth, client, resource=RESOURCE)

    assert response.status == 200
    claims = oauth.decode_access_token(response.body["access_token"], RESOURCE)
    assert claims["client_id"] == "svc:a+b%2F c"


def test_basic_auth_without_form_urlencoding_is_rejected(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient
) -> None:
    """A '+' sent raw decodes to a space (RFC 6749 §2.3.1), so the secret differs."""
    client = oauth_client(client_id="svc-plain", client_secret="a+b")
    raw = base64.b64encode(b"svc-plain:a+b").decode()

    response = request_token(oauth, client, authorization=f"Basic {raw}")

    assert response.status == 401
    assert response.body["error"] == "invalid_client"


def test_basic_auth_with_a_raw_percent_is_a_bad_request(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient
) -> None:
    client = oauth_client(client_id="svc-percent", client_secret="100%")
    raw = base64.b64encode(b"svc-percent:100%").decode()

    response = request_token(oauth, client, authorization=f"Basic {raw}")

    assert response.status == 400
    assert response.body["error"] == "invalid_request"


def test_rotated_secret_invalidates_the_old_one(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient
) -> None:
    client = oauth_client()
    assert request_token(oauth, client).status == 200
    rotated = oauth_client(client_id=client.client_id, client_secret="new-secret")

    old = request_token(oauth, client)
    new = request_token(oauth, rotated)

    assert old.status == 401
    assert old.body["error"] == "invalid_client"
    assert old.headers["WWW-Authenticate"].startswith("Basic ")
    assert new.status == 200


def test_deleted_client_is_invalid(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient
) -> None:
    client = oauth_client()
    assert oauth.delete_client(client.client_id) is True

    response = request_token(oauth, client)

    assert response.status == 401
    assert response.body["error"] == "invalid_client"
    assert oauth.delete_client(client.client_id) is False


def test_resource_that_is_not_a_url_is_an_invalid_target(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient
) -> None:
    client = oauth_client()

    response = request_token(oauth, client, resource="urn:example:api")

    assert response.status == 400
    assert response.body["error"] == "invalid_target"


def test_stats_count_every_token_request(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient
) -> None:
    client, other = oauth_client(), oauth_client()
    total_before = oauth.token_requests()

    request_token(oauth, client)
    request_token(oauth, client, secret="wrong")
    request_token(oauth, other)

    assert oauth.token_requests(client.client_id) == 2
    assert oauth.token_requests(other.client_id) == 1
    assert oauth.token_requests() == total_before + 3
    oauth.reset_stats()
    assert oauth.token_requests(client.client_id) == 0
    assert oauth.token_requests() == 0


def test_fail_next_fails_that_many_token_requests(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient
) -> None:
    client = oauth_client()
    oauth.fail_next(503, count=2, retry_after=3)

    failed = [request_token(oauth, client) for _ in range(2)]
    recovered = request_token(oauth, client)

    assert [response.status for response in failed] == [503, 503]
    assert failed[0].body["error"] == "temporarily_unavailable"
    assert failed[0].headers["Retry-After"] == "3"
    assert recovered.status == 200
    assert oauth.token_requests(client.client_id) == 3


def test_fail_next_can_return_an_oauth_error(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient
) -> None:
    client = oauth_client(auth_method="client_secret_post")
    oauth.fail_next(400, error="invalid_scope")

    response = request_token(oauth, client)

    assert response.status == 400
    assert response.body["error"] == "invalid_scope"
    assert oauth.token_requests(client.client_id) == 1


def test_restart_keeps_port_and_clients(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient
) -> None:
    client = oauth_client()
    issuer = oauth.issuer

    oauth.restart()

    assert oauth.issuer == issuer
    assert request_token(oauth, client).status == 200


def test_put_client_rejects_invalid_metadata(oauth: OAuthServer) -> None:
    with pytest.raises(OAuthServerError, match="400"):
        oauth.put_client("svc-bad", "secret", ["read"], auth_method="none")


def test_start_without_node_modules_says_to_run_make_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(oauth_server_module, "SERVER_DIR", tmp_path)

    with pytest.raises(OAuthServerError, match="make node"):
        OAuthServer().start()
