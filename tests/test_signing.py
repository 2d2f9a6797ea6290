"""Client-assertion JWS: keys as JWKs, thumbprints and signatures that others verify.

Signatures are checked with PyJWT and thumbprints with the ``jose`` package
that oidc-provider uses, so tokend's encoding is checked against two other
implementations, not against itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tokend import signing
from tokend.errors import CredentialsError

SERVER_DIR = Path(__file__).parent / "servers" / "oauth"


def new_key(kind: str) -> signing.PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "p521":
        return ec.generate_private_key(ec.SECP521R1())
    return ed25519.Ed25519PrivateKey.generate()


def compact(key: signing.PrivateKey, alg: str, claims: dict[str, object]) -> str:
    data = signing.signing_input({"alg": alg, "typ": "JWT", "kid": "k1"}, claims)
    return f"{data.decode()}.{signing.b64url(signing.sign_locally(key, alg, data))}"


@pytest.mark.parametrize(
    ("kind", "alg"),
    [
        ("rsa", "RS256"),
        ("rsa", "RS512"),
        ("rsa", "PS256"),
        ("rsa", "PS384"),
        ("p256", "ES256"),
        ("p384", "ES384"),
        ("p521", "ES512"),
        ("ed", "EdDSA"),
    ],
)
def test_local_signature_verifies_with_pyjwt(kind: str, alg: str) -> None:
    key = new_key(kind)
    claims = {"iss": "svc", "sub": "svc", "aud": "https://a.test/token", "exp": 2**31}

    token = compact(key, alg, claims)

    decoded = jwt.decode(
        token, key.public_key(), algorithms=[alg], audience="https://a.test/token"
    )
    assert decoded == claims
    assert jwt.get_unverified_header(token) == {"alg": alg, "typ": "JWT", "kid": "k1"}


def test_a_signature_does_not_verify_with_another_key() -> None:
    token = compact(new_key("p256"), "ES256", {"sub": "svc"})

    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, new_key("p256").public_key(), algorithms=["ES256"])


@pytest.mark.parametrize("kind", ["rsa", "p256", "p384", "ed"])
def test_public_jwk_is_the_key_pyjwt_reads(kind: str) -> None:
    key = new_key(kind)
    jwk = signing.VerifyingKey(key.public_key(), "k1", "x").jwk()

    read = jwt.PyJWK({k: v for k, v in jwk.items() if k != "alg"}).key

    as_pem = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    assert read.public_bytes(*as_pem) == key.public_key().public_bytes(*as_pem)
    assert jwk["use"] == "sig" and jwk["kid"] == "k1"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk), "private members leaked"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_thumbprint_matches_the_jose_package() -> None:
    """RFC 7638 thumbprints as the OAuth server's own library computes them."""
    jwks = [
        signing.public_jwk(new_key(kind).public_key()) for kind in ("rsa", "p256", "ed")
    ]
    script = (
        "import('jose').then(async ({calculateJwkThumbprint}) => {"
        "const keys = JSON.parse(process.argv[1]);"
        "const out = [];"
        "for (const k of keys) out.push(await calculateJwkThumbprint(k));"
        "console.log(JSON.stringify(out)); })"
    )

    result = subprocess.run(
        ["node", "-e", script, json.dumps(jwks)],
        cwd=SERVER_DIR,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )

    assert json.loads(result.stdout) == [signing.thumbprint(jwk) for jwk in jwks]


def test_choose_alg_defaults_by_key_type() -> None:
    assert signing.choose_alg(new_key("rsa").public_key(), None, "k") == "RS256"
    assert signing.choose_alg(new_key("p256").public_key(), None, "k") == "ES256"
    assert signing.choose_alg(new_key("p384").public_key(), None, "k") == "ES384"
    assert signing.choose_alg(new_key("ed").public_key(), None, "k") == "EdDSA"
    assert signing.choose_alg(new_key("rsa").public_key(), "PS256", "k") == "PS256"


def test_choose_alg_refuses_an_algorithm_the_key_cannot_sign_with() -> None:
    with pytest.raises(CredentialsError) as caught:
        signing.choose_alg(
            new_key("p256").public_key(), "RS256", "Transit key 'orders'"
        )

    message = str(caught.value)
    assert "'RS256'" in message and "Transit key 'orders'" in message
    assert "ES256" in message


def test_choose_alg_refuses_a_short_rsa_key() -> None:
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)

    with pytest.raises(CredentialsError, match="1024 bits.*at least 2048"):
        signing.choose_alg(short.public_key(), None, "the key at secret/k")


def test_load_private_key_reads_pkcs8_and_traditional_pem() -> None:
    key = new_key("rsa")
    for form in (
        serialization.PrivateFormat.PKCS8,
        serialization.PrivateFormat.TraditionalOpenSSL,
    ):
        pem = key.private_bytes(
            serialization.Encoding.PEM, form, serialization.NoEncryption()
        ).decode()
        loaded = signing.load_private_key(pem, "secret/k private_key")
        assert loaded.public_key().public_numbers() == key.public_key().public_numbers()


def test_load_private_key_errors_name_the_secret_not_the_key() -> None:
    key = new_key("p256")
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass"),
    ).decode()

    with pytest.raises(CredentialsError, match="secret/k private_key is encrypted"):
        signing.load_private_key(encrypted, "secret/k private_key")
    with pytest.raises(CredentialsError) as caught:
        signing.load_private_key(
            "-----BEGIN NOTHING-----\nc2VjcmV0\n", "secret/k private_key"
        )
    assert "not a PEM private key" in str(caught.value)
    assert "c2VjcmV0" not in str(caught.value)
