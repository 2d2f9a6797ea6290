"""Vault login methods beyond plain AppRole, against a real OpenBao.

- AppRole with a response-wrapped secret_id: checked, unwrapped once, kept
  in memory; a used or foreign wrapping token is refused with the reason.
- JWT: a platform identity token read from a file at every login.
- cert: TLS certificate login over an HTTPS OpenBao.
Each logs in through ``tokend once`` (or VaultSource) and fetches a token.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.bao_fixtures import write_private_file
from tests.support.bao_server import BaoServer, build_service_policy
from tests.support.oauth_fixtures import OAuthClient, RegisterOAuthClient
from tests.support.oauth_server import OAuthServer
from tests.support.stack import ROOT, Stack, tokend_environment, toml_table
from tokend import signing
from tokend.config import VaultSettings
from tokend.errors import CredentialsError, VaultUnavailableError
from tokend.vault import VaultSource

pytestmark = pytest.mark.integration

AUDIENCE = "https://orders.example.test"


def service(bao: BaoServer, client: OAuthClient) -> tuple[str, str]:
    """KV path and policy for one client; returns (kv_path, policy)."""
    name = f"login-{secrets.token_hex(4)}"
    kv_path = f"tokend/{name}"
    bao.write_secret(
        kv_path, {"client_id": client.client_id, "client_secret": client.client_secret}
    )
    bao.write_policy(name, build_service_policy("secret", kv_path))
    return kv_path, name


def run_once(
    tmp_path: Path,
    vault: dict[str, str | bool],
    oauth: OAuthServer,
    kv_path: str,
    *args: str,
) -> subprocess.CompletedProcess[str]:
    """``tokend once`` with this [vault] table and one token."""
    config = tmp_path / "tokend.toml"
    config.write_text(
        toml_table("vault", vault)
        + toml_table("oauth", {"issuer": oauth.issuer})
        + toml_table("files", {"directory": str(tmp_path / "run")})
        + toml_table(
            "tokens.orders",
            {"credentials": kv_path, "audience": AUDIENCE, "scopes": ["read"]},
        )
    )
    return subprocess.run(
        [sys.executable, "-m", "tokend.cli", "once", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=tokend_environment(),
    )


# AppRole with a response-wrapped secret_id


def wrapped_approle(
    bao: BaoServer, policy: str, tmp_path: Path
) -> tuple[dict[str, str | bool], Path]:
    role = f"wrapped-{secrets.token_hex(4)}"
    role_id = bao.create_approle(role, [policy])
    secret_id_file = tmp_path / "wrapped-secret-id"
    write_private_file(secret_id_file, bao.new_wrapped_secret_id(role))
    vault: dict[str, str | bool] = {
        "address": bao.address,
        "role_id": role_id,
        "secret_id_file": str(secret_id_file),
        "secret_id_wrapped": True,
    }
    return vault, secret_id_file


def test_wrapped_secret_id_is_unwrapped_once_and_logs_in(
    bao: BaoServer,
    oauth: OAuthServer,
    oauth_client: RegisterOAuthClient,
    tmp_path: Path,
) -> None:
    client = oauth_client()
    kv_path, policy = service(bao, client)
    vault, _ = wrapped_approle(bao, policy, tmp_path)

    first = run_once(tmp_path, vault, oauth, kv_path)
    again = run_once(tmp_path, vault, oauth, kv_path, "--force")

    assert first.returncode == 0, first.stderr
    assert (tmp_path / "run" / "orders").read_text()
    assert again.returncode == 1
    assert "was unwrapped already or it expired" in again.stderr
    assert "deliver a new one before each start" in again.stderr


def test_a_wrapping_token_for_something_else_is_refused(
    bao: BaoServer,
    oauth: OAuthServer,
    oauth_client: RegisterOAuthClient,
    tmp_path: Path,
) -> None:
    """A token wrapping any other answer may be a substitution: never unwrapped."""
    client = oauth_client()
    kv_path, policy = service(bao, client)
    vault, secret_id_file = wrapped_approle(bao, policy, tmp_path)
    foreign = bao.client().adapter.post(
        "/v1/sys/wrapping/wrap",
        json={"secret_id": "not-from-approle"},
        headers={"X-Vault-Wrap-TTL": "5m"},
    )["wrap_info"]["token"]
    write_private_file(secret_id_file, foreign)

    result = run_once(tmp_path, vault, oauth, kv_path)

    assert result.returncode == 1
    assert "wraps the answer of 'sys/wrapping/wrap'" in result.stderr
    assert "tampered" in result.stderr
    # Still wrapped: tokend looked, but did not unwrap it.
    lookup = bao.client().adapter.post(
        "/v1/sys/wrapping/lookup", json={"token": foreign}
    )
    assert lookup["data"]["creation_path"] == "sys/wrapping/wrap"


@pytest.mark.anyio
async def test_later_logins_reuse_the_unwrapped_secret_id(
    bao: BaoServer, oauth_client: RegisterOAuthClient, tmp_path: Path
) -> None:
    client = oauth_client()
    kv_path, policy = service(bao, client)
    vault_keys, _ = wrapped_approle(bao, policy, tmp_path)
    source = VaultSource(VaultSettings.model_validate(vault_keys))
    try:
        first = await source.login()
        second = await source.login(stale=first)
        credentials = await source.read_credentials(kv_path)
    finally:
        await source.aclose()

    assert second is not first and second.token != first.token
    assert source.state.logins == 2
    assert credentials.client_id == client.client_id


# JWT: a platform-issued identity token


def identity_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, public.decode()


def identity_token(
    key: ec.EllipticCurvePrivateKey, subject: str, lifetime: int = 300
) -> str:
    now = int(time.time())
    claims = {
        "iss": "https://platform.example.test",
        "sub": subject,
        "aud": "tokend-vault",
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
    }
    return jwt.encode(claims, key, algorithm="ES256")


def test_jwt_login_reads_the_identity_file_at_each_login(
    bao: BaoServer,
    oauth: OAuthServer,
    oauth_client: RegisterOAuthClient,
    tmp_path: Path,
) -> None:
    client = oauth_client()
    kv_path, policy = service(bao, client)
    key, public = identity_key()
    role = f"vm-{secrets.token_hex(4)}"
    bao.enable_jwt_auth(public, role, [policy], "tokend-vault", bound_subject=role)
    identity = tmp_path / "identity"
    vault: dict[str, str | bool] = {
        "address": bao.address,
        "auth": "jwt",
        "jwt_role": role,
        "jwt_file": str(identity),
    }

    write_private_file(identity, identity_token(key, role, lifetime=-60))
    expired = run_once(tmp_path, vault, oauth, kv_path)
    write_private_file(identity, identity_token(key, role))
    fresh = run_once(tmp_path, vault, oauth, kv_path)
    write_private_file(identity, identity_token(key, "another-vm"))
    other = run_once(tmp_path, vault, oauth, kv_path, "--force")

    assert expired.returncode == 1
    assert "auth/jwt/login" in expired.stderr
    assert fresh.returncode == 0, fresh.stderr
    assert (tmp_path / "run" / "orders").read_text()
    assert other.returncode == 1 and "auth/jwt/login" in other.stderr
    for result in (expired, fresh, other):
        assert identity.read_text() not in result.stderr


def test_jwt_login_names_a_missing_identity_file(
    bao: BaoServer, oauth: OAuthServer, tmp_path: Path
) -> None:
    vault: dict[str, str | bool] = {
        "address": bao.address,
        "auth": "jwt",
        "jwt_role": "vm",
        "jwt_file": str(tmp_path / "no-identity"),
    }

    result = run_once(tmp_path, vault, oauth, "tokend/none")

    assert result.returncode == 1
    assert f"vault.jwt_file: {tmp_path / 'no-identity'} does not exist" in result.stderr


# cert: TLS certificate login


@pytest.fixture(scope="module")
def tls_bao() -> Iterator[BaoServer]:
    with BaoServer(tls=True) as server:
        yield server


def test_cert_login_over_tls(
    tls_bao: BaoServer,
    oauth: OAuthServer,
    oauth_client: RegisterOAuthClient,
    tmp_path: Path,
) -> None:
    client = oauth_client()
    kv_path, policy = service(tls_bao, client)
    ca = tls_bao.enable_pki()
    tls_bao.create_pki_role("vault-login")
    role = f"vm-{secrets.token_hex(4)}"
    tls_bao.enable_cert_auth(role, ca, [policy])
    files = tls_bao.write_certificate(tmp_path / "login", "vault-login", "vm-1")
    assert tls_bao.ca_file is not None
    vault: dict[str, str | bool] = {
        "address": tls_bao.address,
        "auth": "cert",
        "cert_role": role,
        "client_cert_file": str(files.certificate_file),
        "client_key_file": str(files.private_key_file),
        "ca_file": str(tls_bao.ca_file),
    }

    result = run_once(tmp_path, vault, oauth, kv_path)
    files.private_key_file.chmod(0o644)
    readable = run_once(tmp_path, vault, oauth, "tokend/none")

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "orders").read_text()
    assert readable.returncode == 1
    assert "readable by every user" in readable.stderr


def test_cert_login_with_an_untrusted_certificate_is_refused(
    tls_bao: BaoServer, oauth: OAuthServer, tmp_path: Path
) -> None:
    ca = tls_bao.enable_pki()
    tls_bao.create_pki_role("vault-login")
    role = f"vm-{secrets.token_hex(4)}"
    tls_bao.enable_cert_auth(role, ca, ["default"])
    # Self-signed by the test, not by the CA the role trusts.
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = self_signed(key)
    (tmp_path / "c.pem").write_bytes(certificate)
    write_private_file(
        tmp_path / "k.pem",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )
    assert tls_bao.ca_file is not None
    settings = VaultSettings(
        address=tls_bao.address,
        auth="cert",
        cert_role=role,
        client_cert_file=str(tmp_path / "c.pem"),
        client_key_file=str(tmp_path / "k.pem"),
        ca_file=tls_bao.ca_file,
    )

    with pytest.raises(CredentialsError) as caught:
        anyio.run(log_in_once, settings)
    assert "auth/cert/login" in str(caught.value)


def test_vault_certificate_not_trusted_points_at_ca_file(
    tls_bao: BaoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    write_private_file(token_file, tls_bao.root_token)
    untrusted = VaultSettings(
        address=tls_bao.address, auth="token", token_file=str(token_file)
    )
    assert tls_bao.ca_file is not None
    trusted = untrusted.model_copy(update={"ca_file": tls_bao.ca_file})

    with pytest.raises(VaultUnavailableError) as caught:
        anyio.run(log_in_once, untrusted)
    anyio.run(log_in_once, trusted)
    # Without ca_file, the system's trust store decides (here: OpenSSL's
    # SSL_CERT_FILE), as for the OAuth server; not a bundle of requests' own.
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_bao.ca_file))
    anyio.run(log_in_once, untrusted)

    assert str(caught.value) == (
        f"TLS with Vault at {tls_bao.address} failed; check vault.ca_file"
    )
    assert caught.value.kind == "retryable"
    assert tls_bao.root_token not in str(caught.value)


async def log_in_once(settings: VaultSettings) -> None:
    source = VaultSource(settings)
    try:
        await source.login()
    finally:
        await source.aclose()


def self_signed(key: ec.EllipticCurvePrivateKey) -> bytes:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intruder")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def test_a_reload_keeps_the_login_made_with_a_wrapped_secret_id(stack: Stack) -> None:
    """SIGHUP must not unwrap again: the wrapping token is spent at start."""
    stack.add_service("orders")
    stack.secret_id_file.write_text(stack.bao.new_wrapped_secret_id(stack.role_name))
    stack.write_config({"orders": stack.token_entry("orders")})
    daemon = stack.start(env={"TOKEND_VAULT__SECRET_ID_WRAPPED": "true"})
    daemon.wait_until(lambda: stack.token_path("orders").exists(), timeout=30)

    daemon.send(signal.SIGHUP)
    daemon.wait_for_log(" reloaded added=")
    refreshed = stack.tokend("refresh", "orders")
    logins_after_sighup = daemon.log().count("vault login ok")
    # Another [vault] (a new timeout): a new login, with the secret_id in memory.
    text = stack.config_path.read_text().replace("[vault]\n", "[vault]\ntimeout = 7\n")
    stack.config_path.with_suffix(".tmp").write_text(text)
    stack.config_path.with_suffix(".tmp").rename(stack.config_path)
    daemon.wait_for_log(" reloaded added=", count=2)
    # The restarted keeper checks its client_id in Vault: that needs the login.
    daemon.wait_for_log("vault login ok", count=2)
    daemon.stop()

    assert refreshed.returncode == 0, refreshed.stderr
    assert logins_after_sighup == 1, daemon.log()
    assert "wrapping token" not in daemon.log()


def test_a_wrapped_secret_id_is_unwrapped_at_start_even_with_cached_tokens(
    stack: Stack,
) -> None:
    """Cached tokens need no Vault call, but the wrapping token must not wait.

    An inline client_id and a KV key: nothing at restart would touch Vault.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    stack.bao.write_secret(f"{stack.prefix}/orders-key", {"private_key": pem})
    client_id = f"svc-{secrets.token_hex(4)}"
    public = signing.public_jwk(key.public_key())
    jwk = {**public, "kid": signing.thumbprint(public)}
    stack.oauth.put_client(
        client_id, None, ["read"], "private_key_jwt", jwks={"keys": [jwk]}
    )
    env = {"TOKEND_VAULT__SECRET_ID_WRAPPED": "true"}
    stack.secret_id_file.write_text(stack.bao.new_wrapped_secret_id(stack.role_name))
    entry = {
        "client_id": client_id,
        "client_auth": "private_key_jwt",
        "signing_key": f"kv:{stack.prefix}/orders-key",
        "audience": AUDIENCE,
    }
    stack.write_config({"orders": entry})
    first = stack.start(env=env)
    first.wait_until(lambda: stack.token_path("orders").exists(), timeout=30)
    first.stop()
    wrapping = stack.bao.new_wrapped_secret_id(stack.role_name)
    stack.secret_id_file.write_text(wrapping)
    requests_before = stack.oauth.token_requests(client_id)

    second = stack.start(env=env)
    second.wait_for_log("vault login ok", timeout=30)
    lookup = stack.bao.client().adapter.post(
        "/v1/sys/wrapping/lookup", json={"token": wrapping}, raise_exception=False
    )
    second.stop()

    assert lookup.status_code == 400, "the wrapping token is still unused"
    assert stack.oauth.token_requests(client_id) == requests_before
