"""The OAuth test server behaves the way tokend's tests rely on."""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.support import oauth_server as oauth_server_module
from tests.support.bao_server import BaoServer, CertificateFiles, public_key_to_jwk
from tests.support.oauth_fixtures import (
    PKI_CLIENT_ROLE,
    OAuthClient,
    RegisterOAuthClient,
    refresh_oauth_tls,
)
from tests.support.oauth_server import (
    OAuthServer,
    OAuthServerError,
    build_client_assertion,
    encode_basic_auth,
)

pytestmark = pytest.mark.integration

RESOURCE = "https://api.example.test/"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


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
    assertion: str | None = None,
    url: str | None = None,
    certificate: CertificateFiles | None = None,
) -> TokenResponse:
    """POST a client_credentials request, authenticating as the client registered.

    ``secret`` overrides the client's secret; ``authorization`` replaces the
    Authorization header that client_secret_basic would send; ``assertion``
    the private_key_jwt assertion, by default a fresh one for the issuer. A
    tls_client_auth client goes to the mTLS endpoint, if any, presenting its
    certificate or ``certificate``; ``url`` overrides the endpoint.
    """
    form = {"grant_type": "client_credentials"}
    if resource is not None:
        form["resource"] = resource
    if scope is not None:
        form["scope"] = scope
    client_secret = client.client_secret if secret is None else secret
    headers = {}
    if client.auth_method == "client_secret_post":
        assert client_secret is not None
        form.update(client_id=client.client_id, client_secret=client_secret)
    elif client.auth_method == "private_key_jwt":
        form.update(
            client_assertion_type=JWT_BEARER,
            client_assertion=assertion or client.assertion(server.issuer),
        )
    elif client.auth_method == "tls_client_auth":
        form["client_id"] = client.client_id
        certificate = certificate or client.certificate
        url = url or server.mtls_token_url or None
    else:
        assert client_secret is not None
        headers["Authorization"] = authorization or encode_basic_auth(
            client.client_id, client_secret
        )

    data = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(
        url or server.token_url, data=data, headers=headers
    )
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if server.ca_file is not None:
        context = (
            server.ssl_context()
            if certificate is None
            else server.ssl_context(
                certificate.certificate_file, certificate.private_key_file
            )
        )
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=5) as response:
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


def test_discovery_lists_the_client_auth_methods_and_algorithms(
    oauth: OAuthServer,
) -> None:
    metadata = oauth.discovery()

    assert metadata["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        "tls_client_auth",
    ]
    assert metadata["token_endpoint_auth_signing_alg_values_supported"] == [
        *ASSERTION_ALGORITHMS
    ]
    assert "mtls_endpoint_aliases" not in metadata
    assert oauth.mtls_token_url == ""


# Every algorithm the server takes for client assertions, and a key for each.
ASSERTION_ALGORITHMS = {
    "RS256": "rsa",
    "RS384": "rsa",
    "RS512": "rsa",
    "PS256": "rsa",
    "PS384": "rsa",
    "PS512": "rsa",
    "ES256": "p256",
    "ES384": "p384",
    "EdDSA": "ed25519",
}


@functools.cache
def private_key(kind: str) -> Any:
    """One key per kind for the module: RSA generation takes a while."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1() if kind == "p256" else ec.SECP384R1())


def public_jwks(key: Any, kid: str | None = None) -> dict[str, Any]:
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {"keys": [public_key_to_jwk(pem.decode(), kid=kid)]}


def test_private_key_jwt_client_gets_a_token_and_its_assertion_is_kept(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient
) -> None:
    client = oauth_client(auth_method="private_key_jwt")
    assertion = client.assertion(oauth.issuer)

    response = request_token(oauth, client, resource=RESOURCE, assertion=assertion)

    assert response.status == 200
    assert client.client_secret is None
    claims = oauth.decode_access_token(response.body["access_token"], RESOURCE)
    assert claims["client_id"] == client.client_id
    assert oauth.auth_methods(client.client_id) == {"private_key_jwt": 1}
    assert oauth.assertions(client.client_id) == [assertion]


def test_private_key_jwt_accepts_the_token_endpoint_as_audience(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient
) -> None:
    client = oauth_client(auth_method="private_key_jwt")

    response = request_token(oauth, client, assertion=client.assertion(oauth.token_url))

    assert response.status == 200


@pytest.mark.parametrize("algorithm", sorted(ASSERTION_ALGORITHMS))
def test_private_key_jwt_accepts_each_algorithm(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient, algorithm: str
) -> None:
    key = private_key(ASSERTION_ALGORITHMS[algorithm])
    client = oauth_client(auth_method="private_key_jwt", jwks=public_jwks(key))
    assertion = build_client_assertion(client.client_id, oauth.issuer, key, algorithm)

    response = request_token(oauth, client, assertion=assertion)

    assert response.status == 200, response.body


@pytest.mark.parametrize(
    ("algorithm", "key"),
    [("ES512", ec.generate_private_key(ec.SECP521R1())), ("HS256", "a" * 32)],
)
def test_private_key_jwt_refuses_other_algorithms(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient, algorithm: str, key: Any
) -> None:
    client = oauth_client(auth_method="private_key_jwt")
    assertion = build_client_assertion(client.client_id, oauth.issuer, key, algorithm)

    response = request_token(oauth, client, assertion=assertion)

    assert response.status == 401
    assert response.body["error"] == "invalid_client"


def test_private_key_jwt_refuses_a_replayed_assertion(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient
) -> None:
    client = oauth_client(auth_method="private_key_jwt")
    assert request_token(oauth, client).status == 200
    [used] = oauth.assertions(client.client_id)

    replayed = request_token(oauth, client, assertion=used)

    assert replayed.status == 401
    assert replayed.body["error"] == "invalid_client"
    assert oauth.refusals()[-1].endswith("must only be used once")
    assert oauth.assertions(client.client_id) == [used, used]


@pytest.mark.parametrize(
    ("issued_at_offset", "refusal"),
    [
        (-600 - 60, "jwt expired"),
        (600, "client assertion iat is in the future"),
        (3, None),
        (-30, None),
    ],
)
def test_private_key_jwt_checks_iat_and_exp_with_a_5_second_tolerance(
    oauth: OAuthServer,
    oauth_client: RegisterOAuthClient,
    issued_at_offset: int,
    refusal: str | None,
) -> None:
    """Assertions live 60 s: 10 minutes early or late fails, a few seconds do not."""
    client = oauth_client(auth_method="private_key_jwt")
    assertion = client.assertion(
        oauth.issuer, issued_at=int(time.time()) + issued_at_offset
    )

    response = request_token(oauth, client, assertion=assertion)

    if refusal is None:
        assert response.status == 200, response.body
    else:
        assert response.status == 401
        assert oauth.refusals()[-1] == f"invalid_client: {refusal}"


def test_private_key_jwt_refuses_an_assertion_from_another_key(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient
) -> None:
    client = oauth_client(auth_method="private_key_jwt")
    other = ec.generate_private_key(ec.SECP256R1())
    forged = build_client_assertion(
        client.client_id, oauth.issuer, other, "ES256", kid=client.kid
    )

    response = request_token(oauth, client, assertion=forged)

    assert response.status == 401
    assert response.body["error"] == "invalid_client"


def test_private_key_jwt_refuses_another_audience(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient
) -> None:
    client = oauth_client(auth_method="private_key_jwt")

    response = request_token(
        oauth, client, assertion=client.assertion("https://elsewhere.test/")
    )

    assert response.status == 401


def test_private_key_jwt_with_a_transit_key(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient, bao: BaoServer
) -> None:
    """The assertion tokend will build: signed by OpenBao transit, verified here."""
    bao.enable_transit()
    bao.create_transit_key("oauth-assertions", key_type="ecdsa-p256")
    jwks = {
        "keys": [
            public_key_to_jwk(public_key, kid=f"oauth-assertions:{version}")
            for version, public_key in bao.transit_public_keys(
                "oauth-assertions"
            ).items()
        ]
    }
    client = oauth_client(auth_method="private_key_jwt", jwks=jwks)
    now = int(time.time())
    header = {"alg": "ES256", "typ": "JWT", "kid": "oauth-assertions:1"}
    claims = {
        "iss": client.client_id,
        "sub": client.client_id,
        "aud": oauth.issuer,
        "iat": now,
        "exp": now + 60,
        "jti": f"jti-{now}",
    }
    signing_input = ".".join(
        base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()
        for part in (header, claims)
    )
    signature = bao.transit_sign(
        "oauth-assertions", signing_input.encode(), hash_algorithm="sha2-256"
    )
    assertion = f"{signing_input}.{signature.removeprefix('vault:v1:')}"

    response = request_token(oauth, client, assertion=assertion)

    assert response.status == 200, response.body


@pytest.mark.parametrize(
    ("registered", "used"),
    [
        ("private_key_jwt", "client_secret_basic"),
        ("client_secret_basic", "private_key_jwt"),
        ("client_secret_post", "private_key_jwt"),
    ],
)
def test_assertions_and_secrets_do_not_stand_in_for_each_other(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient, registered: str, used: str
) -> None:
    client = oauth_client(auth_method=registered)
    signer = oauth_client(auth_method="private_key_jwt")
    impostor = dataclasses.replace(
        signer, client_id=client.client_id, client_secret="x", auth_method=used
    )

    response = request_token(oauth, impostor)

    assert response.status == 401
    assert response.body["error"] == "invalid_client"
    assert oauth.auth_methods(client.client_id) == {used: 1}


def test_tls_client_auth_over_plain_http_is_invalid_client(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient
) -> None:
    client = oauth_client(auth_method="tls_client_auth")

    response = request_token(oauth, client)

    assert client.tls_client_auth_subject_dn == f"CN={client.client_id}"
    assert response.status == 401
    assert response.body["error"] == "invalid_client"
    assert oauth.auth_methods(client.client_id) == {"none": 1}


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"auth_method": "private_key_jwt"}, "jwks"),
        (
            {
                "auth_method": "private_key_jwt",
                "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]},
            },
            "400",
        ),
        ({"auth_method": "tls_client_auth"}, "tls_client_auth"),
    ],
)
def test_put_client_rejects_incomplete_keyed_clients(
    oauth: OAuthServer, metadata: dict[str, Any], message: str
) -> None:
    with pytest.raises(OAuthServerError, match=message):
        oauth.put_client("svc-keyless", None, ["read"], **metadata)


def test_put_client_rejects_a_private_jwk(oauth: OAuthServer) -> None:
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(private_key("p256"), as_dict=True)

    with pytest.raises(OAuthServerError, match="400"):
        oauth.put_client(
            "svc-private-jwk", None, ["read"], "private_key_jwt", jwks={"keys": [jwk]}
        )


def test_restart_keeps_private_key_jwt_clients(
    oauth: OAuthServer, oauth_client: RegisterOAuthClient
) -> None:
    client = oauth_client(auth_method="private_key_jwt")

    oauth.restart()

    assert request_token(oauth, client).status == 200


def test_https_server_needs_the_ca_its_clients_trust(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ca_file"):
        OAuthServer(tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem")


def test_tls_discovery_names_https_and_mtls_endpoints(tls_oauth: OAuthServer) -> None:
    assert tls_oauth.issuer == f"https://127.0.0.1:{tls_oauth.port}"
    assert tls_oauth.token_url == f"{tls_oauth.issuer}/token"
    assert tls_oauth.mtls_port not in (0, tls_oauth.port)
    assert tls_oauth.mtls_token_url == f"https://127.0.0.1:{tls_oauth.mtls_port}/token"
    metadata = tls_oauth.discovery()
    assert metadata["mtls_endpoint_aliases"] == {
        "token_endpoint": tls_oauth.mtls_token_url
    }


def test_tls_server_serves_secret_clients_and_jwt_tokens(
    tls_oauth: OAuthServer, tls_oauth_client: RegisterOAuthClient
) -> None:
    client = tls_oauth_client()

    response = request_token(tls_oauth, client, resource=RESOURCE)

    assert response.status == 200
    claims = tls_oauth.decode_access_token(response.body["access_token"], RESOURCE)
    assert claims["iss"] == tls_oauth.issuer


def test_tls_client_auth_with_its_certificate_gets_a_token(
    tls_oauth: OAuthServer, tls_oauth_client: RegisterOAuthClient
) -> None:
    client = tls_oauth_client(auth_method="tls_client_auth", scopes=["orders:read"])
    assert client.certificate is not None

    response = request_token(tls_oauth, client, resource=RESOURCE, scope="orders:read")

    assert response.status == 200, response.body
    claims = tls_oauth.decode_access_token(response.body["access_token"], RESOURCE)
    assert claims["client_id"] == client.client_id
    assert claims["scope"] == "orders:read"
    assert tls_oauth.auth_methods(client.client_id) == {"tls_client_auth": 1}
    assert tls_oauth.certificate_serials(client.client_id) == [
        client.certificate.serial_number
    ]


def test_tls_client_auth_without_a_certificate_is_invalid_client(
    tls_oauth: OAuthServer, tls_oauth_client: RegisterOAuthClient
) -> None:
    client = tls_oauth_client(auth_method="tls_client_auth")

    response = request_token(tls_oauth, dataclasses.replace(client, certificate=None))

    assert response.status == 401
    assert response.body["error"] == "invalid_client"
    assert tls_oauth.refusals()[-1].endswith("client certificate was not provided")
    assert tls_oauth.certificate_serials(client.client_id) == []


def test_tls_client_auth_on_the_main_port_gets_no_certificate_asked(
    tls_oauth: OAuthServer, tls_oauth_client: RegisterOAuthClient
) -> None:
    client = tls_oauth_client(auth_method="tls_client_auth")

    response = request_token(tls_oauth, client, url=tls_oauth.token_url)

    assert response.status == 401
    assert response.body["error"] == "invalid_client"
    assert tls_oauth.refusals()[-1].endswith("client certificate was not provided")


def test_tls_client_auth_refuses_another_subject(
    tls_oauth: OAuthServer, tls_oauth_client: RegisterOAuthClient
) -> None:
    client = tls_oauth_client(
        auth_method="tls_client_auth", tls_client_auth_subject_dn="CN=someone-else"
    )

    response = request_token(tls_oauth, client)

    assert response.status == 401
    assert response.body["error"] == "invalid_client"
    assert tls_oauth.refusals()[-1].endswith("does not match the registered one")


def test_tls_client_auth_compares_dn_attribute_types_case_insensitively(
    tls_oauth: OAuthServer, tls_oauth_client: RegisterOAuthClient
) -> None:
    client_id = f"svc-dn-{time.time_ns()}"
    client = tls_oauth_client(
        auth_method="tls_client_auth",
        client_id=client_id,
        tls_client_auth_subject_dn=f"cn = {client_id}",
    )

    assert request_token(tls_oauth, client).status == 200


def test_tls_client_auth_refuses_an_expired_certificate(
    tls_oauth: OAuthServer,
    tls_oauth_client: RegisterOAuthClient,
    bao: BaoServer,
    tmp_path: Path,
) -> None:
    client = tls_oauth_client(auth_method="tls_client_auth")
    expired = bao.write_certificate(
        tmp_path / "expired", PKI_CLIENT_ROLE, client.client_id, ttl="1s"
    )
    time.sleep(max(0.0, expired.expiration + 1.5 - time.time()))

    response = request_token(tls_oauth, client, certificate=expired)

    assert response.status == 401
    assert response.body["error"] == "invalid_client"
    assert tls_oauth.refusals()[-1].endswith("client certificate was not verified")


def test_tls_client_auth_refuses_a_certificate_from_an_unknown_ca(
    tls_oauth: OAuthServer,
    tls_oauth_client: RegisterOAuthClient,
    bao: BaoServer,
    tmp_path: Path,
) -> None:
    client = tls_oauth_client(auth_method="tls_client_auth")
    bao.enable_pki(mount="pki-stranger")
    bao.create_pki_role("stranger", mount="pki-stranger")
    stranger = bao.write_certificate(
        tmp_path / "stranger", "stranger", client.client_id, mount="pki-stranger"
    )

    response = request_token(tls_oauth, client, certificate=stranger)

    assert response.status == 401
    assert response.body["error"] == "invalid_client"
    assert tls_oauth.refusals()[-1].endswith("client certificate was not verified")


def test_private_key_jwt_works_on_the_mtls_port(
    tls_oauth: OAuthServer, tls_oauth_client: RegisterOAuthClient
) -> None:
    client = tls_oauth_client(auth_method="private_key_jwt")

    response = request_token(tls_oauth, client, url=tls_oauth.mtls_token_url)

    assert response.status == 200
    assert tls_oauth.auth_methods(client.client_id) == {"private_key_jwt": 1}


def test_tls_restart_keeps_both_ports_and_clients(
    tls_oauth: OAuthServer, tls_oauth_client: RegisterOAuthClient
) -> None:
    client = tls_oauth_client(auth_method="tls_client_auth")
    ports = (tls_oauth.port, tls_oauth.mtls_port)

    tls_oauth.restart()

    assert (tls_oauth.port, tls_oauth.mtls_port) == ports
    assert request_token(tls_oauth, client).status == 200


def test_tls_server_follows_a_restarted_openbao_to_its_new_ca(
    tls_oauth: OAuthServer, tls_oauth_client: RegisterOAuthClient, bao: BaoServer
) -> None:
    """What the ``tls_oauth`` fixture does when an earlier test restarted OpenBao."""
    assert tls_oauth.ca_file is not None
    old_ca = tls_oauth.ca_file.read_text()
    bao.restart()
    bao.enable_approle()

    refresh_oauth_tls(tls_oauth, bao)
    tls_oauth.start()

    assert tls_oauth.ca_file.read_text() != old_ca
    client = tls_oauth_client(auth_method="tls_client_auth")
    assert request_token(tls_oauth, client).status == 200
