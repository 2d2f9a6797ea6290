"""How a token's OAuth client proves who it is, per ``client_auth``.

- ``client_secret_basic`` / ``client_secret_post``: the secret from Vault KV.
- ``private_key_jwt`` (RFC 7523 §2.2): a short signed assertion, signed by
  Vault Transit (the key never leaves Vault) or by a PEM key read from KV and
  held in memory.
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
import secrets
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread

from tokend import signing
from tokend.config import SECRET_CLIENT_AUTH, TokenConfig
from tokend.errors import CredentialsError, TokendError, VaultUnavailableError
from tokend.oauth import RequestAuth, TokenEndpoint, secret_auth
from tokend.token import format_time
from tokend.vault import VaultSource

logger = logging.getLogger(__name__)

SKEW_TOLERATED = 10.0  # seconds between our clock and the server's Date
# Beyond this the Date is not believed: a forged one must not make tokend
# sign assertions that are valid hours from now.
SKEW_CORRECTED = 900.0
TRANSIT_INFO_TTL = 300.0  # re-read a Transit key's versions this often
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
class Choice:
    """The key (and Transit version) the next assertion is signed with."""

    key: signing.VerifyingKey
    version: int = 0


class TransitSigner:
    """Signs with a Vault Transit key; only its public halves are ever read."""

    def __init__(self, vault: VaultSource, name: str, alg: str | None) -> None:
        self.vault = vault
        self.name = name
        self.alg = alg
        self._versions: dict[int, signing.VerifyingKey] = {}
        self._signable: list[int] = []  # versions Vault signs with, oldest first
        self._read_at = -TRANSIT_INFO_TTL
        self._last: int | None = None

    async def keys(self) -> list[Choice]:
        """Every version's public key, newest first."""
        await self._read()
        return [Choice(key, v) for v, key in sorted(self._versions.items())[::-1]]

    async def choose(self, retry: bool) -> Choice:
        if retry or time.monotonic() - self._read_at >= TRANSIT_INFO_TTL:
            await self._read()
        newest = self._signable[-1]
        version = newest
        # After a rotation the server may not know the newest key yet: when
        # it refused an assertion signed with it, try the previous version.
        if retry and self._last == newest and len(self._signable) > 1:
            version = self._signable[-2]
        self._last = version
        return Choice(self._versions[version], version)

    async def sign(self, choice: Choice, data: bytes) -> bytes:
        alg = choice.key.alg
        options: dict[str, str] = {}
        if alg.startswith("PS"):
            options = {"signature_algorithm": "pss", "salt_length": "hash"}
        elif alg.startswith("RS"):
            options = {"signature_algorithm": "pkcs1v15"}
        bits = None if alg == "EdDSA" else signing.hash_bits(alg)
        signed_with, signature = await self.vault.transit_sign(
            self.name, choice.version, bits, options, data
        )
        if signed_with != choice.version:
            raise CredentialsError(
                f"Vault signed with version {signed_with} of Transit key "
                f"{self.name!r}, not the version {choice.version} asked for"
            )
        return signature

    async def _read(self) -> None:
        described = f"Transit key {self.name!r}"
        data = await self.vault.transit_key(self.name)
        key_type = str(data.get("type", ""))
        if not data.get("supports_signing"):
            raise CredentialsError(
                f"{described} is of type {key_type!r}, which cannot sign; create "
                "it with type rsa-2048, ecdsa-p256 or ed25519 (for example)"
            )
        versions: dict[int, signing.VerifyingKey] = {}
        for version, entry in (data.get("keys") or {}).items():
            if not isinstance(entry, dict) or not entry.get("public_key"):
                continue
            where = f"{described} version {version}"
            public = signing.load_public_key(entry["public_key"], key_type, where)
            alg = signing.choose_alg(public, self.alg, f"{where} ({key_type})")
            kid = signing.thumbprint(signing.public_jwk(public))
            versions[int(version)] = signing.VerifyingKey(public, kid, alg)
        # Vault signs with no version below min_encryption_version.
        lowest = int(data.get("min_encryption_version") or 0)
        signable = sorted(v for v in versions if v >= lowest)
        if not signable:
            raise CredentialsError(f"{described} has no version to sign with")
        self._versions, self._signable = versions, signable
        self._read_at = time.monotonic()


class KvSigner:
    """Signs locally with a PEM key read from Vault KV, held in memory only."""

    def __init__(
        self, vault: VaultSource, path: str, alg: str | None, mount: str
    ) -> None:
        self.vault = vault
        self.path = path
        self.alg = alg
        self.described = f"Vault secret {mount}/{path}"
        self._key: signing.PrivateKey | None = None
        self._choice: Choice | None = None

    async def keys(self) -> list[Choice]:
        return [await self.choose(retry=True)]

    async def choose(self, retry: bool) -> Choice:
        missing = "store the PEM private key there (key private_key) or fix signing_key"
        try:
            data = await self.vault.read_secret(self.path, missing)
        except VaultUnavailableError as exc:
            if self._choice is None or retry:
                raise
            logger.warning(
                "vault unavailable, signing with the key read earlier path=%s error=%s",
                self.path,
                exc,
            )
            return self._choice
        pem = data.get("private_key")
        if not isinstance(pem, str) or not pem.strip():
            raise CredentialsError(
                f"{self.described} has no private_key; expected a PEM private key "
                "under the key 'private_key' (and optionally 'kid')"
            )
        key = signing.load_private_key(pem, f"{self.described} private_key")
        public = key.public_key()
        alg = signing.choose_alg(public, self.alg, f"the key at {self.described}")
        kid = data.get("kid")
        if not isinstance(kid, str) or not kid:
            kid = signing.thumbprint(signing.public_jwk(public))
        self._key = key
        self._choice = Choice(signing.VerifyingKey(public, kid, alg))
        return self._choice

    async def sign(self, choice: Choice, data: bytes) -> bytes:
        if self._key is None:
            raise CredentialsError(f"no key read from {self.described} yet")
        return signing.sign_locally(self._key, choice.key.alg, data)


Signer = TransitSigner | KvSigner


def make_signer(config: TokenConfig, vault: VaultSource) -> Signer:
    kind, _, name = (config.signing_key or "").partition(":")
    if kind == "transit":
        return TransitSigner(vault, name, config.signing_alg)
    return KvSigner(vault, name, config.signing_alg, vault.settings.kv_mount)


class AssertionAuthenticator(Authenticator):
    """private_key_jwt: a new signed assertion for every request."""

    def __init__(self, config: TokenConfig, vault: VaultSource) -> None:
        super().__init__(config, vault)
        self.signer = make_signer(config, vault)
        self._key_id: str | None = None
        self._skew_noted = 0.0

    async def prepare(
        self, endpoint: TokenEndpoint, now: float, retry: bool
    ) -> tuple[str, RequestAuth]:
        config = self.config
        url = await endpoint.token_url()
        client_id = await self.client_id(fresh=retry)
        choice = await self.signer.choose(retry)
        audience = url if config.assertion_audience == "token_url" else endpoint.issuer
        issued = int(now + self._skew(endpoint))
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "jti": secrets.token_urlsafe(24),
            "iat": issued,
            "exp": issued + config.assertion_lifetime,
        }
        header = {"alg": choice.key.alg, "typ": "JWT", "kid": choice.key.kid}
        data = signing.signing_input(header, claims)
        signature = await self.signer.sign(choice, data)
        assertion = f"{data.decode()}.{signing.b64url(signature)}"
        self._key_id = choice.key.kid
        form = {
            "client_id": client_id,
            "client_assertion_type": signing.JWT_BEARER,
            "client_assertion": assertion,
        }
        return url, RequestAuth(client_id, form=form, secrets=(assertion,))

    def _skew(self, endpoint: TokenEndpoint) -> float:
        """Date assertions by the server's clock when ours is off by much."""
        skew = endpoint.skew
        if skew is None or abs(skew) <= SKEW_TOLERATED:
            self._skew_noted = 0.0
            return 0.0
        corrected = abs(skew) <= SKEW_CORRECTED
        if abs(skew - self._skew_noted) > SKEW_TOLERATED:  # log once per change
            self._skew_noted = skew
            side = "behind" if skew > 0 else "ahead of"
            if corrected:
                logger.warning(
                    "this host's clock is %.0fs %s the token server's; dating client "
                    "assertions by the server's clock token=%s (fix the time sync)",
                    abs(skew),
                    side,
                    self.config.name,
                )
            else:
                logger.error(
                    "this host's clock is %.0fs %s the token server's Date; that is "
                    "more than tokend corrects (%.0fs): fix the time sync token=%s",
                    abs(skew),
                    side,
                    SKEW_CORRECTED,
                    self.config.name,
                )
        return skew if corrected else 0.0

    def status(self) -> dict[str, str | None]:
        return {"key_id": self._key_id}


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
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        context.keylog_filename = None  # type: ignore[assignment]  # no $SSLKEYLOGFILE
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
        return AssertionAuthenticator(config, vault)
    return CertificateAuthenticator(config, vault)
