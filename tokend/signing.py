"""JWS for client assertions: public keys as JWKs, algorithms, local signing.

A client assertion (RFC 7523) is a JWS compact token. Its signature comes
either from Vault Transit, which never hands out the private key, or from a
PEM key read from Vault KV and held in memory. This module holds what both
share and has no I/O: the signing input, public keys as JWKs (RFC 7517,
RFC 8037) with their RFC 7638 thumbprints, and which algorithm fits which key.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tokend.errors import CredentialsError

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
CURVES = {"P-256": ("ES256", 32), "P-384": ("ES384", 48), "P-521": ("ES512", 66)}
HASHES: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
MIN_RSA_BITS = 2048

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_bytes(value: int, length: int | None = None) -> bytes:
    size = length or max(1, (value.bit_length() + 7) // 8)
    return value.to_bytes(size, "big")


def public_jwk(key: PublicKey) -> dict[str, str]:
    """The key's public JWK members, without ``kid``, ``alg`` or ``use``."""
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        return {
            "kty": "RSA",
            "n": b64url(_int_bytes(numbers.n)),
            "e": b64url(_int_bytes(numbers.e)),
        }
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv = _curve_name(key.curve)
        size = CURVES[crv][1]
        point = key.public_numbers()
        return {
            "kty": "EC",
            "crv": crv,
            "x": b64url(_int_bytes(point.x, size)),
            "y": b64url(_int_bytes(point.y, size)),
        }
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}


def thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 SHA-256 thumbprint: the required members, sorted, no spaces."""
    required = {
        "RSA": ("e", "kty", "n"),
        "EC": ("crv", "kty", "x", "y"),
        "OKP": ("crv", "kty", "x"),
    }
    members = {name: jwk[name] for name in required[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def _curve_name(curve: ec.EllipticCurve) -> str:
    names = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
    if curve.name not in names:
        raise CredentialsError(
            f"EC curve {curve.name} is not one JWS signs with; "
            "use P-256, P-384 or P-521"
        )
    return names[curve.name]


def allowed_algs(key: PublicKey) -> tuple[str, ...]:
    """The JWS algorithms this key can sign with, the default first."""
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGS if key.key_size >= MIN_RSA_BITS else ()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return (CURVES[_curve_name(key.curve)][0],)
    return ("EdDSA",)


def choose_alg(key: PublicKey, configured: str | None, described: str) -> str:
    """Return the configured algorithm if the key allows it, else the default.

    Raises:
        CredentialsError: the key cannot sign with ``configured`` (or at all).
    """
    allowed = allowed_algs(key)
    if not allowed:
        raise CredentialsError(
            f"{described} is an RSA key of {key.key_size} bits; "  # type: ignore[union-attr]
            f"client assertions need at least {MIN_RSA_BITS}"
        )
    if configured is None:
        return allowed[0]
    if configured not in allowed:
        raise CredentialsError(
            f"signing_alg {configured!r} does not fit {described}; "
            f"it signs with {', '.join(allowed)}"
        )
    return configured


def hash_bits(alg: str) -> str:
    """``"256"`` for RS256, PS256 and ES256 (EdDSA has no separate hash)."""
    if alg == "EdDSA":
        raise ValueError("EdDSA signs the message itself, not a digest")
    return alg[-3:]


@dataclass(frozen=True)
class VerifyingKey:
    """One public key as registered with the OAuth server."""

    public: PublicKey
    kid: str
    alg: str

    def jwk(self) -> dict[str, str]:
        return {
            **public_jwk(self.public),
            "kid": self.kid,
            "alg": self.alg,
            "use": "sig",
        }


def signing_input(header: dict[str, Any], claims: dict[str, Any]) -> bytes:
    """``BASE64URL(header) . BASE64URL(claims)`` (RFC 7515 §5.1)."""
    header_part = b64url(json.dumps(header, separators=(",", ":")).encode())
    claims_part = b64url(json.dumps(claims, separators=(",", ":")).encode())
    return f"{header_part}.{claims_part}".encode()


def load_private_key(pem: str, described: str) -> PrivateKey:
    """Parse a PEM private key (PKCS#8 or traditional) of a kind JWS signs with.

    Raises:
        CredentialsError: not a PEM key, encrypted, or of another kind.
    """
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except TypeError:
        raise CredentialsError(
            f"{described} is encrypted; store it without a passphrase"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CredentialsError(f"{described} is not a PEM private key") from None
    if not isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise CredentialsError(
            f"{described} is a {type(key).__name__}; use an RSA, EC or Ed25519 key"
        )
    return key


def sign_locally(key: PrivateKey, alg: str, data: bytes) -> bytes:
    """Sign ``data`` as JWS ``alg`` requires (ECDSA as r || s, RFC 7518 §3.4)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    digest = HASHES[hash_bits(alg)]()
    if isinstance(key, rsa.RSAPrivateKey):
        if alg.startswith("PS"):
            pss = padding.PSS(
                mgf=padding.MGF1(digest), salt_length=padding.PSS.DIGEST_LENGTH
            )
            return key.sign(data, pss, digest)
        return key.sign(data, padding.PKCS1v15(), digest)
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(digest)))
    size = CURVES[_curve_name(key.curve)][1]
    return _int_bytes(r, size) + _int_bytes(s, size)


def load_public_key(text: str, key_type: str, described: str) -> PublicKey:
    """A Transit public key: PEM, or base64 of the raw 32 bytes for ed25519."""
    try:
        if key_type == "ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(text))
        key = serialization.load_pem_public_key(text.encode())
    except (ValueError, UnsupportedAlgorithm):
        raise CredentialsError(
            f"{described}: Vault returned an unreadable public key"
        ) from None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise CredentialsError(f"{described} is not an RSA, EC or Ed25519 key")
    return key
