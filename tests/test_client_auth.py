"""private_key_jwt end to end: keys in Vault Transit or KV, the real oidc-provider.

The client is registered with the JWKS that ``tokend jwks`` prints, as an
operator would; ``tokend once`` and ``tokend run`` then obtain tokens that
the server issued to that client. The assertions the server received are
read back and checked claim by claim.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tests.support.bao_fixtures import root_vault
from tests.support.bao_server import BaoServer
from tests.support.oauth_server import OAuthServer
from tests.support.stack import Stack, TomlValue, tokend_environment
from tokend.client_assertion import AssertionAuthenticator, make_signer
from tokend.config import TokenConfig
from tokend.errors import InvalidClientError, VaultUnavailableError
from tokend.lifecycle import build_request
from tokend.oauth import TokenEndpoint
from tokend.vault import VaultSource

pytestmark = pytest.mark.integration

AUDIENCE = "https://orders.example.test"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def allow_signing(stack: Stack, *keys: str, extra: str = "") -> None:
    """Give the stack's AppRole the Transit rights tokend needs, and no more."""
    rules = "".join(
        f'path "transit/sign/{key}/*" {{ capabilities = ["update"] }}\n'
        f'path "transit/sign/{key}" {{ capabilities = ["update"] }}\n'
        f'path "transit/keys/{key}" {{ capabilities = ["read"] }}\n'
        for key in keys
    )
    stack.bao.write_policy(
        stack.role_name,
        f'path "secret/data/{stack.prefix}/*" {{ capabilities = ["read"] }}\n'
        'path "auth/token/renew-self" { capabilities = ["update"] }\n'
        'path "auth/token/lookup-self" { capabilities = ["read"] }\n' + rules + extra,
    )


def transit_key(bao: BaoServer, key_type: str) -> str:
    bao.enable_transit()
    name = f"client-{secrets.token_hex(4)}"
    bao.create_transit_key(name, key_type=key_type, exportable=False)
    return name


def jwt_entry(
    client_id: str, signing_key: str, **extra: TomlValue
) -> dict[str, TomlValue]:
    return {
        "client_id": client_id,
        "client_auth": "private_key_jwt",
        "signing_key": signing_key,
        "audience": AUDIENCE,
        "scopes": ["read"],
        **extra,
    }


def print_jwks(stack: Stack, name: str = "orders") -> dict[str, Any]:
    result = stack.tokend("jwks", name)
    assert result.returncode == 0, result.stderr
    jwks: dict[str, Any] = json.loads(result.stdout)
    return jwks


def verify_assertion(
    oauth: OAuthServer, client_id: str, jwks: dict[str, Any]
) -> dict[str, Any]:
    """Check the last assertion the server got: claims, header, signature."""
    assertion = oauth.assertions(client_id)[-1]
    header = jwt.get_unverified_header(assertion)
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims: dict[str, Any] = jwt.decode(
        assertion,
        jwt.PyJWK(key).key,
        algorithms=[key["alg"]],
        audience=oauth.token_url,
    )
    assert header["alg"] == key["alg"] and header["typ"] == "JWT"
    assert claims["iss"] == claims["sub"] == client_id
    assert claims["exp"] - claims["iat"] == 60
    assert abs(claims["iat"] - time.time()) < 30
    return claims


@pytest.mark.parametrize(
    ("key_type", "alg", "expected_alg"),
    [
        ("rsa-2048", None, "RS256"),
        ("rsa-2048", "PS256", "PS256"),
        ("ecdsa-p256", None, "ES256"),
        ("ecdsa-p384", None, "ES384"),
        ("ed25519", None, "EdDSA"),
    ],
)
def test_transit_signed_assertion_gets_a_token(
    stack: Stack, oauth: OAuthServer, key_type: str, alg: str | None, expected_alg: str
) -> None:
    key = transit_key(stack.bao, key_type)
    allow_signing(stack, key)
    client_id = f"svc-{secrets.token_hex(4)}"
    extra: dict[str, TomlValue] = {"signing_alg": alg} if alg else {}
    stack.write_config({"orders": jwt_entry(client_id, f"transit:{key}", **extra)})

    jwks = print_jwks(stack)
    oauth.put_client(client_id, None, ["read"], "private_key_jwt", jwks=jwks)
    result = stack.tokend("once")

    assert result.returncode == 0, result.stderr
    claims = oauth.decode_access_token(stack.read_token("orders"), AUDIENCE)
    assert claims["client_id"] == client_id
    assert oauth.auth_methods(client_id) == {"private_key_jwt": 1}
    assert [k["alg"] for k in jwks["keys"]] == [expected_alg]
    verify_assertion(oauth, client_id, jwks)


def test_every_assertion_is_new_and_a_replayed_one_is_refused(
    stack: Stack, oauth: OAuthServer
) -> None:
    key = transit_key(stack.bao, "ecdsa-p256")
    allow_signing(stack, key)
    client_id = f"svc-{secrets.token_hex(4)}"
    stack.write_config({"orders": jwt_entry(client_id, f"transit:{key}")})
    oauth.put_client(
        client_id, None, ["read"], "private_key_jwt", jwks=print_jwks(stack)
    )

    for _ in range(2):
        assert stack.tokend("once", "--force").returncode == 0
    first, second = oauth.assertions(client_id)
    replay = post_token(oauth, client_id, first)

    assert (
        jwt.decode(first, options={"verify_signature": False})["jti"]
        != jwt.decode(second, options={"verify_signature": False})["jti"]
    )
    assert replay["status"] == 401 and replay["body"]["error"] == "invalid_client"


def post_token(oauth: OAuthServer, client_id: str, assertion: str) -> dict[str, Any]:
    form = urllib.parse.urlencode(
        {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion,
            "resource": AUDIENCE,
        }
    ).encode()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(
            urllib.request.Request(oauth.token_url, data=form), timeout=5
        ) as r:
            return {"status": r.status, "body": json.load(r)}
    except urllib.error.HTTPError as exc:
        with exc:
            return {"status": exc.code, "body": json.load(exc)}


def test_a_key_the_server_does_not_know_is_refused_and_writes_no_file(
    stack: Stack, oauth: OAuthServer
) -> None:
    registered, used = (
        transit_key(stack.bao, "ecdsa-p256"),
        transit_key(stack.bao, "ecdsa-p256"),
    )
    allow_signing(stack, registered, used)
    client_id = f"svc-{secrets.token_hex(4)}"
    stack.write_config({"orders": jwt_entry(client_id, f"transit:{registered}")})
    oauth.put_client(
        client_id, None, ["read"], "private_key_jwt", jwks=print_jwks(stack)
    )
    stack.write_config({"orders": jwt_entry(client_id, f"transit:{used}")})

    result = stack.tokend("once")

    assert result.returncode == 1
    assert "invalid_client" in result.stderr and "orders" in result.stderr
    assert not stack.token_path("orders").exists()
    assertion = oauth.assertions(client_id)[-1]
    assert assertion not in result.stderr


def test_transit_key_rotation_falls_back_until_the_server_knows_the_new_key(
    stack: Stack, oauth: OAuthServer
) -> None:
    key = transit_key(stack.bao, "ecdsa-p256")
    allow_signing(stack, key)
    client_id = f"svc-{secrets.token_hex(4)}"
    stack.write_config({"orders": jwt_entry(client_id, f"transit:{key}")})
    old = print_jwks(stack)
    oauth.put_client(client_id, None, ["read"], "private_key_jwt", jwks=old)

    stack.bao.rotate_transit_key(key)
    both = print_jwks(stack)
    during = stack.tokend("once", "--force")
    oauth.put_client(client_id, None, ["read"], "private_key_jwt", jwks=both)
    after = stack.tokend("once", "--force")

    assert len(both["keys"]) == 2 and both["keys"][1] == old["keys"][0]
    assert during.returncode == 0, during.stderr
    assert after.returncode == 0, after.stderr
    kids = [jwt.get_unverified_header(a)["kid"] for a in oauth.assertions(client_id)]
    new_kid, old_kid = (k["kid"] for k in both["keys"])
    # rotated: new key refused, old accepted; registered: new key at once
    assert kids == [new_kid, old_kid, new_kid]


def test_kv_key_signs_in_memory(stack: Stack, oauth: OAuthServer) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    client_id = f"svc-{secrets.token_hex(4)}"
    stack.bao.write_secret(f"{stack.prefix}/orders-key", {"private_key": pem})
    stack.bao.write_secret(f"{stack.prefix}/orders", {"client_id": client_id})
    entry = jwt_entry(
        "", f"kv:{stack.prefix}/orders-key", credentials=f"{stack.prefix}/orders"
    )
    del entry["client_id"]
    stack.write_config({"orders": entry})

    jwks = print_jwks(stack)
    oauth.put_client(client_id, None, ["read"], "private_key_jwt", jwks=jwks)
    result = stack.tokend("once")

    assert result.returncode == 0, result.stderr
    assert (
        oauth.decode_access_token(stack.read_token("orders"), AUDIENCE)["client_id"]
        == client_id
    )
    assert "PRIVATE" not in json.dumps(jwks) and "d" not in jwks["keys"][0]
    verify_assertion(oauth, client_id, jwks)


def test_jwks_refuses_a_token_without_a_signing_key(stack: Stack) -> None:
    stack.add_service("orders")
    stack.write_config({"orders": stack.token_entry("orders")})

    result = stack.tokend("jwks", "orders")
    missing = stack.tokend("jwks", "billing")

    assert result.returncode == 2 and "private_key_jwt" in result.stderr
    assert missing.returncode == 2 and "no token 'billing'" in missing.stderr


def test_jwks_names_a_missing_transit_key_and_the_policy(stack: Stack) -> None:
    stack.bao.enable_transit()
    allow_signing(stack, "nothing-here")
    stack.write_config({"orders": jwt_entry("c", "transit:nothing-here")})
    denied_key = transit_key(stack.bao, "ecdsa-p256")
    missing = stack.tokend("jwks", "orders")
    stack.write_config({"orders": jwt_entry("c", f"transit:{denied_key}")})
    denied = stack.tokend("jwks", "orders")

    assert missing.returncode == 1
    assert "transit/keys/nothing-here" in missing.stderr and "404" in missing.stderr
    assert denied.returncode == 1
    assert f"transit/keys/{denied_key}" in denied.stderr and "403" in denied.stderr


def test_an_algorithm_the_transit_key_cannot_sign_with_is_named(
    stack: Stack, oauth: OAuthServer
) -> None:
    key = transit_key(stack.bao, "ecdsa-p256")
    allow_signing(stack, key)
    stack.write_config(
        {"orders": jwt_entry("c", f"transit:{key}", signing_alg="RS256")}
    )

    result = stack.tokend("once")

    assert result.returncode == 1
    assert "'RS256' does not fit" in result.stderr and "ES256" in result.stderr


def test_transit_signing_never_reads_or_exports_the_private_key(
    stack: Stack, oauth: OAuthServer, tmp_path: Path
) -> None:
    """The audit log lists every Vault request the daemon made: none reads a key."""
    key = transit_key(stack.bao, "rsa-2048")
    allow_signing(stack, key)
    client_id = f"svc-{secrets.token_hex(4)}"
    stack.write_config({"orders": jwt_entry(client_id, f"transit:{key}")})
    oauth.put_client(
        client_id, None, ["read"], "private_key_jwt", jwks=print_jwks(stack)
    )
    audit, device = tmp_path / "audit.log", f"proof-{secrets.token_hex(3)}"
    stack.bao.enable_file_audit(audit, name=device)
    try:
        daemon = stack.start()
        daemon.wait_until(lambda: stack.token_path("orders").exists(), timeout=30)
        daemon.stop()
        requests = stack.bao.audit_paths(audit, display_name="approle")
    finally:
        stack.bao.disable_audit(name=device)

    # Every request made with the daemon's Vault login, by path.
    daemon_paths = {path for _, path in requests}
    assert f"transit/sign/{key}/sha2-256" in daemon_paths
    assert daemon_paths <= {
        f"transit/sign/{key}/sha2-256",
        f"transit/keys/{key}",
        "auth/token/renew-self",
    }, daemon_paths
    refused = stack.bao.client().adapter.get(
        f"/v1/transit/export/signing-key/{key}", raise_exception=False
    )
    assert refused.status_code == 400
    assert_no_key_material(stack.root)


def assert_no_key_material(root: Path) -> None:
    """No file the daemon (or the test) wrote holds a private key."""
    for directory, _, names in os.walk(root):
        for name in names:
            text = (Path(directory) / name).read_bytes()
            assert b"PRIVATE KEY" not in text, Path(directory) / name
            assert b'"d":' not in text, Path(directory) / name


# In-process: the assertion's clock against the server's.


def assertion_config(
    client_id: str, key: str, oauth: OAuthServer | None, **extra: Any
) -> TokenConfig:
    fields: dict[str, Any] = dict(
        name="orders",
        credentials=None,
        audience=AUDIENCE,
        scopes=("read",),
        token_url=oauth.token_url if oauth else "http://127.0.0.1:9/token",
        issuer=None,
        client_auth="private_key_jwt",
        audience_param="resource",
        extra_params=(),
        timeout=10.0,
        ca_file=None,
        allow_insecure_http=False,
        default_lifetime=300,
        min_lifetime=10,
        path=Path("/nonexistent/orders"),
        mode=0o640,
        format="raw",
        uid=None,
        gid=None,
        metadata=True,
        on_expiry="remove",
        client_id=client_id,
        signing_key=f"transit:{key}",
    )
    fields.update(extra)
    return TokenConfig(**fields)


async def registered_client(
    bao: BaoServer, oauth: OAuthServer, tmp_path: Path
) -> tuple[TokenConfig, VaultSource, AssertionAuthenticator]:
    """A Transit-signed client registered with its JWKS, tokend's side in-process."""
    client_id = f"svc-{secrets.token_hex(4)}"
    vault = root_vault(bao, tmp_path)
    config = assertion_config(client_id, transit_key(bao, "ecdsa-p256"), oauth)
    authenticator = AssertionAuthenticator(config, vault)
    jwks = {"keys": [c.key.jwk() for c in await authenticator.signer.keys()]}
    oauth.put_client(client_id, None, ["read"], "private_key_jwt", jwks=jwks)
    return config, vault, authenticator


@pytest.mark.anyio
@pytest.mark.parametrize("offset", [600, -600])
async def test_a_skewed_clock_is_corrected_by_the_servers_date(
    bao: BaoServer,
    oauth: OAuthServer,
    tmp_path: Path,
    offset: float,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ten minutes off: the server refuses the assertion, the retry is dated right."""
    config, vault, authenticator = await registered_client(bao, oauth, tmp_path)
    client_id = config.client_id or ""
    endpoint = TokenEndpoint(oauth.token_url)
    request = build_request(config)
    skewed = time.time() + offset
    try:
        url, auth = await authenticator.prepare(endpoint, skewed, retry=False)
        with pytest.raises(InvalidClientError):
            await endpoint.fetch(
                request, auth, datetime.fromtimestamp(skewed, UTC), url
            )
        url, auth = await authenticator.prepare(endpoint, skewed, retry=True)
        token = await endpoint.fetch(
            request, auth, datetime.fromtimestamp(skewed, UTC), url
        )
    finally:
        await endpoint.aclose()
        await vault.aclose()

    assert token.audience == AUDIENCE
    first, second = oauth.assertions(client_id)
    unverified = {"verify_signature": False}
    assert jwt.decode(first, options=unverified)["iat"] == pytest.approx(skewed, abs=5)
    assert jwt.decode(second, options=unverified)["iat"] == pytest.approx(
        time.time(), abs=5
    )
    warning = next(r.getMessage() for r in caplog.records if "clock" in r.getMessage())
    assert re.search(r"\b(599|600|601)s (ahead of|behind)", warning), warning
    assert ("ahead of" if offset > 0 else "behind") in warning


@pytest.mark.anyio
async def test_during_a_vault_outage_a_kv_key_signs_and_a_transit_key_cannot(
    bao: BaoServer, tmp_path: Path
) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    kv_path = f"tokend/outage-{secrets.token_hex(4)}"
    bao.write_secret(kv_path, {"private_key": pem})
    key = transit_key(bao, "ecdsa-p256")
    vault = root_vault(bao, tmp_path)
    kv = make_signer(
        assertion_config("c", "x", None, signing_key=f"kv:{kv_path}"), vault
    )
    transit = make_signer(assertion_config("c", key, None), vault)
    try:
        before = await kv.choose(retry=False)
        await transit.choose(retry=False)
        bao.seal()
        during = await kv.choose(retry=False)
        signature = await kv.sign(during, b"header.claims")
        with pytest.raises(VaultUnavailableError) as caught:
            await transit.sign(await transit.choose(retry=False), b"header.claims")
    finally:
        bao.unseal()
        await vault.aclose()

    assert during == before
    jwt.PyJWK(during.key.jwk()).key.verify(
        ecdsa_der(signature), b"header.claims", ec.ECDSA(hashes.SHA256())
    )
    assert caught.value.kind == "retryable" and "sealed" in str(caught.value)


def ecdsa_der(raw: bytes) -> bytes:
    half = len(raw) // 2
    r, s = int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
    return encode_dss_signature(r, s)


def test_assertion_audience_can_be_the_issuer(stack: Stack, oauth: OAuthServer) -> None:
    key = transit_key(stack.bao, "ecdsa-p256")
    allow_signing(stack, key)
    client_id = f"svc-{secrets.token_hex(4)}"
    entry = jwt_entry(client_id, f"transit:{key}", assertion_audience="issuer")
    stack.write_config({"orders": entry})
    oauth.put_client(
        client_id, None, ["read"], "private_key_jwt", jwks=print_jwks(stack)
    )

    result = stack.tokend("once")

    assert result.returncode == 0, result.stderr
    claims = jwt.decode(
        oauth.assertions(client_id)[-1], options={"verify_signature": False}
    )
    assert claims["aud"] == oauth.issuer


@pytest.mark.anyio
async def test_a_clock_off_by_hours_is_not_corrected(
    bao: BaoServer, oauth: OAuthServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A forged Date must not make tokend sign assertions valid hours from now."""
    config, vault, authenticator = await registered_client(bao, oauth, tmp_path)
    client_id = config.client_id or ""
    endpoint = TokenEndpoint(oauth.token_url)
    skewed = time.time() - 3 * 3600
    try:
        for retry in (False, True):
            url, auth = await authenticator.prepare(endpoint, skewed, retry=retry)
            with pytest.raises(InvalidClientError):
                await endpoint.fetch(
                    build_request(config),
                    auth,
                    datetime.fromtimestamp(skewed, UTC),
                    url,
                )
    finally:
        await endpoint.aclose()
        await vault.aclose()

    unverified = {"verify_signature": False}
    issued = [
        jwt.decode(a, options=unverified)["iat"] for a in oauth.assertions(client_id)
    ]
    assert issued == [pytest.approx(skewed, abs=5)] * 2
    assert "more than tokend corrects" in caplog.text


def test_jwks_does_not_spend_the_daemons_wrapping_token(stack: Stack) -> None:
    key = transit_key(stack.bao, "ecdsa-p256")
    stack.write_config({"orders": jwt_entry("c", f"transit:{key}")})
    wrapping = stack.bao.new_wrapped_secret_id(stack.role_name)
    stack.secret_id_file.write_text(wrapping)
    command = [sys.executable, "-m", "tokend.cli", "jwks", "orders"]
    command += ["-c", str(stack.config_path)]
    wrapped = {"TOKEND_VAULT__SECRET_ID_WRAPPED": "true"}

    refused = subprocess.run(
        command, capture_output=True, text=True, env=tokend_environment(wrapped)
    )
    own_token = {**wrapped, "TOKEND_VAULT__AUTH": "token"}
    own_token["VAULT_TOKEN"] = stack.bao.root_token
    printed = subprocess.run(
        command, capture_output=True, text=True, env=tokend_environment(own_token)
    )

    assert refused.returncode == 2 and "TOKEND_VAULT__AUTH=token" in refused.stderr
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["keys"][0]["alg"] == "ES256"
    lookup = stack.bao.client().adapter.post(
        "/v1/sys/wrapping/lookup", json={"token": wrapping}
    )
    assert "secret-id" in lookup["data"]["creation_path"]  # still unused
