"""Pytest fixtures around the OAuth test servers shared by the whole session.

``oauth_server`` starts a plain-HTTP server once. Tests take ``oauth``, which
restarts a server an earlier test stopped and, afterwards, puts the TTL back and
cancels pending injected failures. ``oauth_client`` registers clients with fresh
random credentials and deletes them after the test. Stats are shared by the
session, so count per client rather than in total.

``tls_oauth_server``, ``tls_oauth`` and ``tls_oauth_client`` are the same over
HTTPS, with a mutual-TLS token endpoint at ``mtls_token_url``. Their certificates
come from the PKI engine of the session's OpenBao (``bao_server``): the server's
for 127.0.0.1 from role ``PKI_SERVER_ROLE``, clients' from ``PKI_CLIENT_ROLE``,
whose CA the server trusts for tls_client_auth. A tokend that issues its client
certificate from that role over its own Vault token is therefore trusted too.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.support.bao_fixtures import repair_bao_server
from tests.support.bao_server import BaoServer, CertificateFiles
from tests.support.oauth_server import OAuthServer, build_client_assertion

PKI_SERVER_ROLE = "oauth-tls-server"
PKI_CLIENT_ROLE = "oauth-tls-client"
SECRET_METHODS = frozenset({"client_secret_basic", "client_secret_post"})


@dataclass(frozen=True)
class OAuthClient:
    """A client registered with an OAuth test server.

    ``client_secret`` is None for private_key_jwt and tls_client_auth clients.
    A private_key_jwt client registered without its own ``jwks`` got a fresh
    P-256 key: ``signing_key_pem`` and ``kid`` sign its assertions (see
    ``assertion``). A tls_client_auth client of ``tls_oauth_client`` has a
    ``certificate`` issued for ``CN=<client_id>``.
    """

    client_id: str
    client_secret: str | None
    scopes: tuple[str, ...]
    auth_method: str = "client_secret_basic"
    # A dict, so left out of the hash; the rest of the client still hashes.
    jwks: dict[str, Any] | None = field(default=None, hash=False)
    tls_client_auth_subject_dn: str | None = None
    # Kept out of the repr so assertion output and logs never show it.
    signing_key_pem: str | None = field(default=None, repr=False)
    kid: str | None = None
    certificate: CertificateFiles | None = None

    @property
    def scope(self) -> str:
        """The scopes as the space-separated ``scope`` parameter."""
        return " ".join(self.scopes)

    def assertion(self, audience: str, **options: Any) -> str:
        """Return an ES256 client assertion signed with the generated key.

        ``options`` go to ``build_client_assertion`` (lifetime, issued_at, jti,
        claims).

        Raises:
            ValueError: the client has no generated signing key.
        """
        if self.signing_key_pem is None:
            raise ValueError(f"{self.client_id} has no generated signing key")
        return build_client_assertion(
            self.client_id,
            audience,
            self.signing_key_pem,
            "ES256",
            kid=self.kid,
            **options,
        )


class RegisterOAuthClient(Protocol):
    def __call__(
        self,
        scopes: Sequence[str] = ...,
        auth_method: str = ...,
        client_id: str | None = None,
        client_secret: str | None = None,
        *,
        jwks: dict[str, Any] | None = None,
        tls_client_auth_subject_dn: str | None = None,
    ) -> OAuthClient: ...


@pytest.fixture(scope="session")
def oauth_server() -> Iterator[OAuthServer]:
    """Start one OAuth test server for the session."""
    with OAuthServer() as server:
        yield server


@pytest.fixture
def oauth(oauth_server: OAuthServer) -> Iterator[OAuthServer]:
    """Return the session's OAuth server, running; undo TTL and fault changes after."""
    yield from use_oauth_server(oauth_server)


@pytest.fixture
def oauth_client(oauth: OAuthServer) -> Iterator[RegisterOAuthClient]:
    """Return a function registering a client; every one is deleted afterwards.

    Credentials default to a random ``svc-<hex>`` id and a URL-safe secret (none
    for private_key_jwt and tls_client_auth); pass your own to test awkward
    characters or a secret rotation. A private_key_jwt client without ``jwks``
    gets a generated key; a tls_client_auth client's DN defaults to
    ``CN=<client_id>``. This server is plain HTTP, so no certificate reaches it:
    use ``tls_oauth_client`` for that.
    """
    yield from client_registrar(oauth)


@pytest.fixture(scope="session")
def tls_oauth_server(
    bao_server: BaoServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OAuthServer]:
    """Start one HTTPS OAuth test server with an mTLS port for the session."""
    repair_bao_server(bao_server)
    files = provision_oauth_tls(bao_server, tmp_path_factory.mktemp("oauth-tls"))
    with OAuthServer(
        tls_cert=files.certificate_file,
        tls_key=files.private_key_file,
        ca_file=files.ca_file,
        client_ca=files.ca_file,
    ) as server:
        yield server


@pytest.fixture
def tls_oauth(tls_oauth_server: OAuthServer, bao: BaoServer) -> Iterator[OAuthServer]:
    """Return the session's HTTPS OAuth server, running and trusting ``bao``'s PKI.

    OpenBao forgets its PKI when restarted; the CA is then made anew and the
    server gets new certificate files (same paths) and a restart, keeping its
    port and clients. TTL and fault changes are undone afterwards.
    """
    refresh_oauth_tls(tls_oauth_server, bao)
    yield from use_oauth_server(tls_oauth_server)


@pytest.fixture
def tls_oauth_client(
    tls_oauth: OAuthServer, bao: BaoServer, tmp_path: Path
) -> Iterator[RegisterOAuthClient]:
    """Return a function registering a client with ``tls_oauth``, like ``oauth_client``.

    A tls_client_auth client also gets a certificate for ``CN=<client_id>``
    from ``PKI_CLIENT_ROLE``, valid for an hour, in ``tmp_path/oauth-clients/``;
    its ``tls_client_auth_subject_dn`` may say otherwise, to test a mismatch.
    """

    def issue(client_id: str) -> CertificateFiles:
        directory = tmp_path / "oauth-clients" / secrets.token_hex(4)
        return bao.write_certificate(directory, PKI_CLIENT_ROLE, client_id)

    yield from client_registrar(tls_oauth, issue)


def use_oauth_server(server: OAuthServer) -> Iterator[OAuthServer]:
    """Yield ``server`` running; afterwards undo TTL and fault changes."""
    if not server.running:
        server.restart()

    yield server

    if server.running:
        server.set_ttl(server.default_ttl)
        server.fail_next(503, count=0)


def client_registrar(
    server: OAuthServer,
    issue_certificate: Callable[[str], CertificateFiles] | None = None,
) -> Iterator[RegisterOAuthClient]:
    """Yield a function registering clients with ``server``, then delete them.

    ``issue_certificate(client_id) -> CertificateFiles``, if given, supplies
    each tls_client_auth client's certificate.
    """
    registered: list[str] = []

    def register(
        scopes: Sequence[str] = ("read",),
        auth_method: str = "client_secret_basic",
        client_id: str | None = None,
        client_secret: str | None = None,
        *,
        jwks: dict[str, Any] | None = None,
        tls_client_auth_subject_dn: str | None = None,
    ) -> OAuthClient:
        client_id = client_id or f"svc-{secrets.token_hex(6)}"
        if client_secret is None and auth_method in SECRET_METHODS:
            client_secret = secrets.token_urlsafe(24)
        signing_key_pem = kid = certificate = None
        if auth_method == "private_key_jwt" and jwks is None:
            signing_key_pem, jwks, kid = generate_signing_key()
        if auth_method == "tls_client_auth":
            tls_client_auth_subject_dn = tls_client_auth_subject_dn or f"CN={client_id}"
            if issue_certificate is not None:
                certificate = issue_certificate(client_id)
        client = OAuthClient(
            client_id=client_id,
            client_secret=client_secret,
            scopes=tuple(scopes),
            auth_method=auth_method,
            jwks=jwks,
            tls_client_auth_subject_dn=tls_client_auth_subject_dn,
            signing_key_pem=signing_key_pem,
            kid=kid,
            certificate=certificate,
        )
        server.put_client(
            client.client_id,
            client.client_secret,
            client.scopes,
            client.auth_method,
            jwks=client.jwks,
            tls_client_auth_subject_dn=client.tls_client_auth_subject_dn,
        )
        registered.append(client.client_id)

        return client

    yield register

    if server.running:
        for client_id in registered:
            server.delete_client(client_id)


def generate_signing_key() -> tuple[str, dict[str, Any], str]:
    """Return a new P-256 private key (PEM), its public JWK set, and its kid."""
    key = ec.generate_private_key(ec.SECP256R1())
    kid = secrets.token_hex(8)
    jwk = {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid}
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()

    return pem, {"keys": [jwk]}, kid


def refresh_oauth_tls(server: OAuthServer, bao: BaoServer) -> None:
    """Give ``server`` new certificates if ``bao``'s PKI CA is no longer theirs.

    That happens when OpenBao was restarted. The server is then stopped, and
    restarted by ``use_oauth_server`` with the new files at the same paths.
    """
    ca_file = server.ca_file
    assert ca_file is not None
    if bao.enable_pki().strip() != ca_file.read_text().strip():
        provision_oauth_tls(bao, ca_file.parent)
        server.stop()


def provision_oauth_tls(bao: BaoServer, directory: Path) -> CertificateFiles:
    """Make ``bao``'s PKI ready for the TLS OAuth server and write its certificate.

    Enables the PKI engine (keeping an existing CA), creates ``PKI_CLIENT_ROLE``
    and writes a server certificate for 127.0.0.1 from ``PKI_SERVER_ROLE`` to
    ``directory``, whose ``ca.pem`` is the CA both sides trust.
    """
    bao.enable_pki()
    bao.create_pki_role(PKI_CLIENT_ROLE)

    return bao.write_server_certificate(directory, role=PKI_SERVER_ROLE)
