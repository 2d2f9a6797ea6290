"""private_key_jwt (RFC 7523 §2.2): a new signed client assertion per request.

The key is a Vault Transit key (it never leaves Vault; only its public
halves are read) or a PEM key read from Vault KV and held in memory. This
module loads cryptography, so :func:`tokend.client_auth.make_authenticator`
imports it only for tokens that use private_key_jwt.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass

from tokend import signing
from tokend.client_auth import Authenticator
from tokend.config import TokenConfig
from tokend.errors import CredentialsError, VaultUnavailableError
from tokend.oauth import RequestAuth, TokenEndpoint
from tokend.vault import VaultSource

logger = logging.getLogger(__name__)

SKEW_TOLERATED = 10.0  # seconds between our clock and the server's Date
# Beyond this the Date is not believed: a forged one must not make tokend
# sign assertions that are valid hours from now.
SKEW_CORRECTED = 900.0
TRANSIT_INFO_TTL = 300.0  # re-read a Transit key's versions this often


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
