"""How a token's OAuth client proves who it is, per ``client_auth``.

- ``client_secret_basic`` / ``client_secret_post``: the secret from Vault KV.
- ``private_key_jwt`` (RFC 7523 §2.2): a short signed assertion, signed by
  Vault Transit (the key never leaves Vault) or by a PEM key read from KV and
  held in memory (:mod:`tokend.client_assertion`).
- ``tls_client_auth`` (RFC 8705 §2.1): a certificate issued by Vault PKI,
  presented in the TLS handshake; its key is loaded from an anonymous memory
  file, never from a file on disk.

Each authenticator turns "the next request" into a :class:`RequestAuth` and
the URL to send it to. ``retry`` marks the one retry after ``invalid_client``:
credentials, keys and certificates are then read afresh.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread

from tokend.config import SECRET_CLIENT_AUTH, TokenConfig
from tokend.errors import CredentialsError, TokendError
from tokend.http import client_tls_context
from tokend.oauth import RequestAuth, TokenEndpoint, secret_auth
from tokend.token import format_time
from tokend.vault import VaultSource

logger = logging.getLogger(__name__)

CERTIFICATE_RENEW_SHARE = 2 / 3
CERTIFICATE_GRACE = 30.0  # an old certificate must have this long left to be used


class Authenticator:
    """The base: where the client_id comes from."""

    mtls = False
    reads_secret = False  # does the KV secret hold a client_secret to check?

    def __init__(self, config: TokenConfig, vault: VaultSource) -> None:
        self.config = config
        self.vault = vault

    @property
    def credentials_path(self) -> str | None:
        """The KV v2 path the client's credentials are read from, if any."""
        return self.config.credentials if self.config.client_id is None else None

    async def client_id(self, fresh: bool = False) -> str:
        if self.config.client_id is not None:
            return self.config.client_id
        credentials = await self.vault.read_credentials(
            self.config.credentials or "", fresh=fresh, secret=self.reads_secret
        )
        return credentials.client_id

    async def prepare(
        self, endpoint: TokenEndpoint, now: float, retry: bool
    ) -> tuple[str, RequestAuth]:
        raise NotImplementedError

    def status(self) -> dict[str, str | None]:
        return {}


class SecretAuthenticator(Authenticator):
    """client_secret_basic or client_secret_post, the secret from Vault KV."""

    reads_secret = True

    async def prepare(
        self, endpoint: TokenEndpoint, now: float, retry: bool
    ) -> tuple[str, RequestAuth]:
        credentials = await self.vault.read_credentials(
            self.config.credentials or "", fresh=retry
        )
        url = await endpoint.token_url()
        return url, secret_auth(self.config.client_auth, credentials)


@dataclass(frozen=True)
class HeldCertificate:
    context: ssl.SSLContext
    serial: str
    not_before: float
    not_after: float

    @property
    def renew_at(self) -> float:
        life = self.not_after - self.not_before
        return self.not_before + life * CERTIFICATE_RENEW_SHARE


class CertificateAuthenticator(Authenticator):
    """tls_client_auth: a Vault PKI certificate in the TLS handshake."""

    mtls = True

    def __init__(self, config: TokenConfig, vault: VaultSource) -> None:
        super().__init__(config, vault)
        self.role = (config.client_certificate or "").partition(":")[2]
        self._held: HeldCertificate | None = None

    async def prepare(
        self, endpoint: TokenEndpoint, now: float, retry: bool
    ) -> tuple[str, RequestAuth]:
        url = await endpoint.token_url(mtls=True)
        if not url.startswith("https:"):
            raise CredentialsError(
                f"tls_client_auth needs an https token endpoint, got {url}",
                kind="persistent",
            )
        client_id = await self.client_id(fresh=retry)
        held = await self._certificate(client_id, now, renew=retry)
        auth = RequestAuth(client_id, form={"client_id": client_id}, ssl=held.context)
        return url, auth

    async def _certificate(
        self, client_id: str, now: float, renew: bool
    ) -> HeldCertificate:
        held = self._held
        if held is not None and not renew and now < held.renew_at:
            return held
        common_name = self.config.certificate_common_name or client_id
        try:
            issued = await self.vault.issue_certificate(
                self.role, common_name, self.config.certificate_ttl
            )
            fresh = await anyio.to_thread.run_sync(
                load_certificate, issued, self.config.ca_file, self.role
            )
        except TokendError as exc:
            if held is None or now > held.not_after - CERTIFICATE_GRACE:
                raise
            logger.warning(
                "client certificate not renewed, using the current one until %s "
                "token=%s error=%s",
                format_time(datetime.fromtimestamp(held.not_after, UTC)),
                self.config.name,
                exc,
            )
            return held
        logger.info(
            "client certificate issued token=%s role=%s serial=%s expires_at=%s",
            self.config.name,
            self.role,
            fresh.serial,
            format_time(datetime.fromtimestamp(fresh.not_after, UTC)),
        )
        self._held = fresh
        return fresh

    def status(self) -> dict[str, str | None]:
        held = self._held
        expires = datetime.fromtimestamp(held.not_after, UTC) if held else None
        return {"certificate_expires_at": format_time(expires) if expires else None}


def load_certificate(
    issued: dict[str, Any], ca_file: Path | None, role: str
) -> HeldCertificate:
    """Build the TLS context presenting an issued certificate and its key.

    The key goes through an anonymous memory file (memfd): it is never
    written to a file system. Without memfd (a seccomp filter, a foreign
    kernel) tokend refuses rather than write the key to a file.

    Raises:
        CredentialsError: the answer lacks a part or cannot be loaded.
    """
    from cryptography import x509  # 50 ms of imports, for tls_client_auth only

    described = f"the certificate issued by PKI role {role!r}"
    parts = [issued.get("certificate"), *(issued.get("ca_chain") or [])]
    key = issued.get("private_key")
    if not all(isinstance(p, str) and p for p in [*parts, key]):
        raise CredentialsError(f"{described} came without certificate or private key")
    try:
        leaf = x509.load_pem_x509_certificate(str(parts[0]).encode())
        context = client_tls_context(str(ca_file) if ca_file else None)
        context.post_handshake_auth = True  # servers asking per location (TLS 1.3)
        _load_chain(context, "\n".join([*map(str, parts), str(key)]))
    except (ValueError, ssl.SSLError, OSError) as exc:
        raise CredentialsError(f"cannot load {described}: {exc}") from None
    return HeldCertificate(
        context=context,
        serial=f"{leaf.serial_number:x}",
        not_before=leaf.not_valid_before_utc.timestamp(),
        not_after=leaf.not_valid_after_utc.timestamp(),
    )


def _load_chain(context: ssl.SSLContext, pem: str) -> None:
    data = pem.encode()
    try:
        fd = os.memfd_create("tokend-client-certificate", os.MFD_CLOEXEC)
    except (AttributeError, OSError) as exc:
        raise CredentialsError(
            "cannot hand the client certificate's key to OpenSSL without writing "
            f"it to a file: memfd_create failed ({exc}); tokend does not write "
            "keys to disk"
        ) from None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def make_authenticator(config: TokenConfig, vault: VaultSource) -> Authenticator:
    if config.client_auth in SECRET_CLIENT_AUTH:
        return SecretAuthenticator(config, vault)
    if config.client_auth == "private_key_jwt":
        # Imported here: it loads cryptography (10 MB), which only
        # private_key_jwt needs.
        from tokend.client_assertion import AssertionAuthenticator

        return AssertionAuthenticator(config, vault)
    return CertificateAuthenticator(config, vault)
