"""tls_client_auth end to end: a Vault PKI certificate, oidc-provider over mutual TLS.

The OAuth server serves HTTPS with a certificate from the same OpenBao PKI,
and a second listener asks for client certificates (RFC 8705). tokend
issues its client certificate from a PKI role, keeps the key in memory and
presents it in the handshake of the token request.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from tests.support.bao_fixtures import root_vault
from tests.support.bao_server import BaoServer
from tests.support.oauth_fixtures import PKI_CLIENT_ROLE
from tests.support.oauth_server import OAuthServer
from tests.support.stack import Stack, TomlValue
from tokend import client_auth
from tokend.client_auth import CertificateAuthenticator, load_certificate
from tokend.config import TokenConfig
from tokend.errors import InvalidClientError, TokendError
from tokend.oauth import RequestAuth, TokenEndpoint, TokenRequest

pytestmark = pytest.mark.integration

AUDIENCE = "https://orders.example.test"


@pytest.fixture
def mtls_stack(
    bao: BaoServer, tls_oauth: OAuthServer, tmp_path: Path
) -> Iterator[Stack]:
    deployment = Stack(bao, tls_oauth, tmp_path)
    bao.write_policy(
        deployment.role_name,
        f'path "secret/data/{deployment.prefix}/*" {{ capabilities = ["read"] }}\n'
        'path "auth/token/renew-self" { capabilities = ["update"] }\n'
        f'path "pki/issue/{PKI_CLIENT_ROLE}" {{ capabilities = ["update"] }}\n',
    )
    try:
        yield deployment
    finally:
        deployment.close()


def mtls_entry(client_id: str, **extra: TomlValue) -> dict[str, TomlValue]:
    return {
        "client_id": client_id,
        "client_auth": "tls_client_auth",
        "client_certificate": f"pki:{PKI_CLIENT_ROLE}",
        "audience": AUDIENCE,
        "scopes": ["read"],
        **extra,
    }


def register(oauth: OAuthServer, subject: str | None = None) -> str:
    client_id = f"svc-{secrets.token_hex(4)}"
    oauth.put_client(
        client_id,
        None,
        ["read"],
        "tls_client_auth",
        tls_client_auth_subject_dn=subject or f"CN={client_id}",
    )
    return client_id


def oauth_settings(oauth: OAuthServer, **extra: TomlValue) -> dict[str, TomlValue]:
    assert oauth.ca_file is not None
    return {"ca_file": str(oauth.ca_file), **extra}


def test_certificate_from_vault_pki_gets_a_token(
    mtls_stack: Stack, tls_oauth: OAuthServer
) -> None:
    """Discovery names the mTLS alias; tokend sends the request there."""
    client_id = register(tls_oauth)
    mtls_stack.write_config(
        {"orders": mtls_entry(client_id)}, oauth=oauth_settings(tls_oauth)
    )

    result = mtls_stack.tokend("once")

    assert result.returncode == 0, result.stderr
    token = mtls_stack.read_token("orders")
    assert tls_oauth.decode_access_token(token, AUDIENCE)["client_id"] == client_id
    assert tls_oauth.auth_methods(client_id) == {"tls_client_auth": 1}
    assert len(tls_oauth.certificate_serials(client_id)) == 1
    assert_no_key_on_disk(mtls_stack.root)


def test_daemon_reports_the_certificate_and_keeps_no_key_file(
    mtls_stack: Stack, tls_oauth: OAuthServer
) -> None:
    client_id = register(tls_oauth)
    assert tls_oauth.mtls_token_url
    mtls_stack.write_config(
        {"orders": mtls_entry(client_id, token_url=tls_oauth.mtls_token_url)},
        oauth={"ca_file": str(tls_oauth.ca_file)},
    )
    daemon = mtls_stack.start()
    daemon.wait_until(lambda: mtls_stack.token_path("orders").exists(), timeout=30)
    status = mtls_stack.tokend("status", "--json")
    daemon.stop()

    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)["tokens"]["orders"]
    assert shown["client_auth"] == "tls_client_auth"
    expires = datetime.fromisoformat(shown["certificate_expires_at"])
    assert expires > datetime.now(UTC)
    assert "PRIVATE" not in status.stdout and "CERTIFICATE" not in status.stdout
    assert_no_key_on_disk(mtls_stack.root)


def test_a_certificate_for_another_subject_is_refused(
    mtls_stack: Stack, tls_oauth: OAuthServer
) -> None:
    client_id = register(tls_oauth, subject="CN=someone-else")
    mtls_stack.write_config(
        {"orders": mtls_entry(client_id)}, oauth=oauth_settings(tls_oauth)
    )

    result = mtls_stack.tokend("once")

    assert result.returncode == 1
    assert "invalid_client" in result.stderr
    assert not mtls_stack.token_path("orders").exists()


def test_a_pki_role_the_policy_does_not_allow_is_named(
    mtls_stack: Stack, tls_oauth: OAuthServer
) -> None:
    client_id = register(tls_oauth)
    entry = mtls_entry(client_id, client_certificate="pki:not-allowed")
    mtls_stack.write_config({"orders": entry}, oauth=oauth_settings(tls_oauth))

    result = mtls_stack.tokend("once")

    assert result.returncode == 1
    assert "pki/issue/not-allowed" in result.stderr and "403" in result.stderr


def assert_no_key_on_disk(root: Path) -> None:
    for directory, _, names in os.walk(root):
        for name in names:
            data = (Path(directory) / name).read_bytes()
            assert b"PRIVATE KEY" not in data, Path(directory) / name


# In-process: the authenticator against the real OpenBao and OAuth server.


def token_config(client_id: str, oauth: OAuthServer, **extra: object) -> TokenConfig:
    fields: dict[str, object] = {
        "name": "orders",
        "credentials": None,
        "audience": AUDIENCE,
        "scopes": ("read",),
        "token_url": oauth.mtls_token_url,
        "issuer": None,
        "client_auth": "tls_client_auth",
        "audience_param": "resource",
        "extra_params": (),
        "timeout": 10.0,
        "ca_file": oauth.ca_file,
        "allow_insecure_http": False,
        "default_lifetime": 300,
        "min_lifetime": 10,
        "path": Path("/nonexistent/orders"),
        "mode": 0o640,
        "format": "raw",
        "uid": None,
        "gid": None,
        "metadata": True,
        "on_expiry": "remove",
        "client_id": client_id,
        "client_certificate": f"pki:{PKI_CLIENT_ROLE}",
        **extra,
    }
    return TokenConfig(**fields)  # type: ignore[arg-type]


REQUEST = TokenRequest(
    endpoint="x",
    client_auth="tls_client_auth",
    audience=AUDIENCE,
    audience_param="resource",
    scopes=("read",),
    extra_params=(),
    default_lifetime=300,
    min_lifetime=1,
)


@pytest.mark.anyio
async def test_certificate_is_renewed_after_two_thirds_of_its_life(
    bao: BaoServer, tls_oauth: OAuthServer, tmp_path: Path
) -> None:
    client_id = register(tls_oauth)
    config = token_config(client_id, tls_oauth, certificate_ttl=600)
    vault = root_vault(bao, tmp_path)
    endpoint = TokenEndpoint(str(tls_oauth.mtls_token_url), ca_file=tls_oauth.ca_file)
    authenticator = CertificateAuthenticator(config, vault)
    now = time.time()
    serials = []
    try:
        for moment in (now, now + 300, now + 420):  # renewal due at 2/3 = 400 s
            url, auth = await authenticator.prepare(endpoint, moment, retry=False)
            await endpoint.fetch(REQUEST, auth, datetime.now(UTC), url)
            serials.append(tls_oauth.certificate_serials(client_id)[-1])
    finally:
        await endpoint.aclose()
        await vault.aclose()

    assert serials[0] == serials[1] != serials[2]
    assert authenticator.status()["certificate_expires_at"] is not None


@pytest.mark.anyio
async def test_an_expired_certificate_is_refused_by_the_server(
    bao: BaoServer, tls_oauth: OAuthServer
) -> None:
    client_id = register(tls_oauth)
    issued = bao.issue_certificate(PKI_CLIENT_ROLE, client_id, ttl="2s")
    held = load_certificate(issued, tls_oauth.ca_file, PKI_CLIENT_ROLE)
    await anyio.sleep(max(0.0, held.not_after - time.time()) + 1.5)
    endpoint = TokenEndpoint(str(tls_oauth.mtls_token_url), ca_file=tls_oauth.ca_file)
    auth = RequestAuth(client_id, form={"client_id": client_id}, ssl=held.context)
    try:
        with pytest.raises(InvalidClientError):
            await endpoint.fetch(REQUEST, auth, datetime.now(UTC))
    finally:
        await endpoint.aclose()


@pytest.mark.anyio
async def test_an_expired_certificate_is_not_used_when_vault_is_down(
    bao: BaoServer, tls_oauth: OAuthServer, tmp_path: Path
) -> None:
    """A valid old certificate covers a Vault outage; an expired one does not."""
    client_id = register(tls_oauth)
    config = token_config(client_id, tls_oauth, certificate_ttl=600)
    vault = root_vault(bao, tmp_path)
    endpoint = TokenEndpoint(str(tls_oauth.mtls_token_url), ca_file=tls_oauth.ca_file)
    authenticator = CertificateAuthenticator(config, vault)
    now = time.time()
    try:
        await authenticator.prepare(endpoint, now, retry=False)
        bao.seal()
        _, still = await authenticator.prepare(endpoint, now + 500, retry=False)
        await endpoint.fetch(REQUEST, still, datetime.now(UTC))
        with pytest.raises(TokendError, match="sealed"):
            await authenticator.prepare(endpoint, now + 700, retry=False)
    finally:
        bao.unseal()
        await endpoint.aclose()
        await vault.aclose()


def test_the_key_reaches_the_tls_context_through_memfd_only(
    bao: BaoServer, tls_oauth: OAuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is loaded from an anonymous memory file; without one, no fallback."""
    issued = bao.issue_certificate(PKI_CLIENT_ROLE, "orders-client", ttl="1h")
    opened: list[str] = []
    real_open = os.open

    def watch_open(path: str, *args: object, **kwargs: object) -> int:
        opened.append(str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(client_auth.os, "open", watch_open)
    held = load_certificate(issued, tls_oauth.ca_file, PKI_CLIENT_ROLE)

    def no_memfd(*args: object) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(client_auth.os, "memfd_create", no_memfd)
    with pytest.raises(TokendError, match="does not write keys to disk"):
        load_certificate(issued, tls_oauth.ca_file, PKI_CLIENT_ROLE)

    assert opened == []  # OpenSSL read /proc/self/fd/N; Python opened no file

    assert held.not_after - held.not_before == pytest.approx(3600, abs=60)
    assert held.serial.replace(":", "") == issued["serial_number"].replace(
        ":", ""
    ).lstrip("0")
