"""The real OpenBao dev server behaves the way tokend relies on.

These tests also pin which hvac exception each failure surfaces as, since
tokend's vault module translates exactly those into its own errors.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import ssl
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import jwt
import pytest
import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.bao_fixtures import (
    AUDIT_DEVICE,
    WriteAppRoleFiles,
    repair_bao_server,
)
from tests.support.bao_server import (
    BaoServer,
    BaoServerError,
    CertificateFiles,
    ServiceCreds,
    build_child_env,
    build_service_policy,
    public_key_to_jwk,
)

pytestmark = pytest.mark.integration


@contextmanager
def open_client(bao: BaoServer, token: str = "") -> Iterator[hvac.Client]:
    client = bao.client(token=token)
    try:
        yield client
    finally:
        client.adapter.close()


@contextmanager
def log_in(bao: BaoServer, creds: ServiceCreds) -> Iterator[hvac.Client]:
    with open_client(bao) as client:
        client.auth.approle.login(role_id=creds.role_id, secret_id=creds.secret_id)
        yield client


def read_kv(client: hvac.Client, path: str) -> dict[str, Any]:
    response = client.secrets.kv.v2.read_secret_version(
        path=path, mount_point="secret", raise_on_deleted_version=True
    )
    data: dict[str, Any] = response["data"]["data"]

    return data


def test_seed_service_token_reads_only_its_own_secret(bao: BaoServer) -> None:
    creds = bao.seed_service("reader", "reader-id", "reader-secret")
    other = bao.seed_service("neighbour", "neighbour-id", "neighbour-secret")

    with log_in(bao, creds) as client:
        assert read_kv(client, creds.kv_path) == {
            "client_id": "reader-id",
            "client_secret": "reader-secret",
        }
        with pytest.raises(hvac.exceptions.Forbidden):
            read_kv(client, other.kv_path)


def test_approle_token_ttl_is_the_role_ttl_and_renews(bao: BaoServer) -> None:
    creds = bao.seed_service("ttl", "ttl-id", "ttl-secret", ttl="90s")

    with log_in(bao, creds) as client:
        looked_up = client.auth.token.lookup_self()["data"]
        renewed = client.auth.token.renew_self()["auth"]

    assert looked_up["renewable"] is True
    assert 80 <= looked_up["ttl"] <= 90
    assert sorted(looked_up["policies"]) == ["default", creds.policy]
    assert renewed["lease_duration"] == 90


def test_login_with_wrong_secret_id_raises_invalid_request(bao: BaoServer) -> None:
    creds = bao.seed_service("wrong-secret", "id", "secret")

    with open_client(bao) as client, pytest.raises(hvac.exceptions.InvalidRequest):
        client.auth.approle.login(role_id=creds.role_id, secret_id="not-the-secret")


def test_wrapped_secret_id_unwraps_to_a_working_secret_id(bao: BaoServer) -> None:
    creds = bao.seed_service("wrapped", "wrapped-id", "wrapped-secret")
    wrapping_token = bao.new_wrapped_secret_id(creds.role_name)

    with open_client(bao, token=wrapping_token) as client:
        secret_id = client.sys.unwrap()["data"]["secret_id"]

    unwrapped = dataclasses.replace(creds, secret_id=secret_id)
    with log_in(bao, unwrapped) as client:
        assert read_kv(client, creds.kv_path)["client_id"] == "wrapped-id"


def test_create_token_has_requested_ttl_and_policies(bao: BaoServer) -> None:
    token = bao.create_token(["default"], ttl="2m", renewable=False)

    with open_client(bao, token=token) as client:
        looked_up = client.auth.token.lookup_self()["data"]

    assert looked_up["renewable"] is False
    assert 110 <= looked_up["ttl"] <= 120
    assert looked_up["policies"] == ["default"]


def test_delete_secret_makes_reads_raise_invalid_path(bao: BaoServer) -> None:
    creds = bao.seed_service("deleted", "deleted-id", "deleted-secret")
    bao.delete_secret(creds.kv_path)

    with log_in(bao, creds) as client, pytest.raises(hvac.exceptions.InvalidPath):
        read_kv(client, creds.kv_path)


def test_sealed_server_raises_vault_down_until_unsealed(bao: BaoServer) -> None:
    creds = bao.seed_service("sealed", "sealed-id", "sealed-secret")

    with log_in(bao, creds) as client:
        bao.seal()
        assert bao.is_sealed()
        with pytest.raises(hvac.exceptions.VaultDown, match="sealed"):
            read_kv(client, creds.kv_path)
        with pytest.raises(hvac.exceptions.VaultDown, match="sealed"):
            client.auth.token.renew_self()

        bao.unseal()
        assert read_kv(client, creds.kv_path)["client_id"] == "sealed-id"


def test_restart_loses_data_but_keeps_address_and_root_token(
    bao: BaoServer,
) -> None:
    creds = bao.seed_service("restarted", "old-id", "old-secret")
    address, root_token = bao.address, bao.root_token

    with log_in(bao, creds) as client:
        bao.restart()
        with pytest.raises(hvac.exceptions.Forbidden):
            read_kv(client, creds.kv_path)

    assert (bao.address, bao.root_token) == (address, root_token)
    with open_client(bao) as client, pytest.raises(hvac.exceptions.Forbidden):
        # AppRole is gone with the rest of the data. Without a token an unknown
        # route is "permission denied"; only a root client would see a 404.
        client.auth.approle.login(role_id=creds.role_id, secret_id=creds.secret_id)

    bao.enable_approle()
    reseeded = bao.seed_service("restarted", "new-id", "new-secret")
    with log_in(bao, reseeded) as client:
        assert read_kv(client, reseeded.kv_path)["client_id"] == "new-id"


def test_stopped_server_raises_connection_error(bao: BaoServer) -> None:
    """The next test's ``bao`` fixture restarts the server this one stops."""
    with open_client(bao, token=bao.root_token) as client:
        bao.stop()
        with pytest.raises(requests.ConnectionError):
            read_kv(client, "tokend/anything")


def test_repair_bao_server_restarts_a_stopped_server(bao: BaoServer) -> None:
    bao.stop()

    repair_bao_server(bao)

    assert bao.running
    with open_client(bao, token=bao.root_token) as client:
        assert "approle/" in client.sys.list_auth_methods()["data"]


def test_repair_bao_server_unseals_a_sealed_server(bao: BaoServer) -> None:
    creds = bao.seed_service("repaired", "repaired-id", "repaired-secret")
    bao.seal()

    repair_bao_server(bao)

    with log_in(bao, creds) as client:
        assert read_kv(client, creds.kv_path)["client_id"] == "repaired-id"


def test_approle_files_are_private_and_hold_the_credentials(
    bao: BaoServer, approle_files: WriteAppRoleFiles
) -> None:
    creds = bao.seed_service("files", "files-id", "files-secret")
    files = approle_files(creds)

    for path, expected in [
        (files.role_id_file, creds.role_id),
        (files.secret_id_file, creds.secret_id),
    ]:
        assert path.read_text() == expected
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_child_env_drops_vault_and_bao_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VAULT_ADDR", "http://elsewhere:8200")
    monkeypatch.setenv("BAO_TOKEN", "someone-elses")
    monkeypatch.setenv("TOKEND_UNRELATED", "kept")

    env = build_child_env()

    assert "VAULT_ADDR" not in env
    assert "BAO_TOKEN" not in env
    assert env["TOKEND_UNRELATED"] == "kept"


def transit_signature(signed: str) -> bytes:
    """Return the raw bytes of a ``vault:vN:<base64url>`` JWS-marshaled signature."""
    prefix, version, encoded = signed.split(":")
    assert (prefix, version) == ("vault", "v1")
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))


def verify_transit_signature(
    public_key: str, key_type: str, signature: bytes, data: bytes
) -> None:
    """Verify with ``cryptography`` alone; raises InvalidSignature if it is wrong."""
    if key_type == "ed25519":
        ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key)).verify(
            signature, data
        )
        return

    key = serialization.load_pem_public_key(public_key.encode())
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        half = len(signature) // 2
        der = encode_dss_signature(
            int.from_bytes(signature[:half], "big"),
            int.from_bytes(signature[half:], "big"),
        )
        hash_type = hashes.SHA384() if key_type == "ecdsa-p384" else hashes.SHA256()
        key.verify(der, data, ec.ECDSA(hash_type))


# (transit key type, hash_algorithm, signature_algorithm) for a JWS-style signature.
TRANSIT_SIGNING = {
    "rsa-2048": ("sha2-256", "pkcs1v15"),
    "rsa-3072": ("sha2-256", "pkcs1v15"),
    "rsa-4096": ("sha2-256", "pkcs1v15"),
    "ecdsa-p256": ("sha2-256", None),
    "ecdsa-p384": ("sha2-384", None),
    "ed25519": (None, None),
}


@pytest.mark.parametrize("key_type", sorted(TRANSIT_SIGNING))
def test_transit_signature_verifies_against_the_public_key(
    bao: BaoServer, key_type: str
) -> None:
    bao.enable_transit()
    name = f"sign-{key_type}"
    bao.create_transit_key(name, key_type=key_type)
    hash_algorithm, signature_algorithm = TRANSIT_SIGNING[key_type]

    signed = bao.transit_sign(name, b"hello", hash_algorithm, signature_algorithm)

    assert signed.startswith("vault:v1:")
    signature = transit_signature(signed)
    public_key = bao.transit_public_keys(name)[1]
    verify_transit_signature(public_key, key_type, signature, b"hello")
    with pytest.raises(InvalidSignature):
        verify_transit_signature(public_key, key_type, signature, b"hellO")


@pytest.mark.parametrize(
    ("key_type", "algorithm"),
    [("rsa-2048", "RS256"), ("ecdsa-p256", "ES256"), ("ed25519", "EdDSA")],
)
def test_transit_signed_jwt_verifies_with_public_key_to_jwk(
    bao: BaoServer, key_type: str, algorithm: str
) -> None:
    """What a private_key_jwt client backed by transit does, end to end."""
    bao.enable_transit()
    name = f"jwt-{key_type}"
    bao.create_transit_key(name, key_type=key_type)
    header = {"alg": algorithm, "typ": "JWT", "kid": "k1"}
    claims = {"sub": "svc", "aud": "https://issuer.test"}
    signing_input = ".".join(
        base64url(json.dumps(part).encode()) for part in (header, claims)
    )
    hash_algorithm, signature_algorithm = TRANSIT_SIGNING[key_type]
    signed = bao.transit_sign(
        name, signing_input.encode(), hash_algorithm, signature_algorithm
    )
    token = f"{signing_input}.{signed.removeprefix('vault:v1:')}"

    jwk = public_key_to_jwk(bao.transit_public_keys(name)[1], kid="k1")
    decoded = jwt.decode(
        token,
        key=jwt.PyJWK(jwk, algorithm=algorithm).key,
        algorithms=[algorithm],
        audience="https://issuer.test",
    )

    assert decoded == claims
    assert jwk["kid"] == "k1"
    assert "d" not in jwk


def base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_create_transit_key_is_idempotent_but_not_for_another_type(
    bao: BaoServer,
) -> None:
    bao.enable_transit()
    bao.enable_transit()
    bao.create_transit_key("twice", key_type="ecdsa-p256")
    first = bao.transit_public_keys("twice")

    bao.create_transit_key("twice", key_type="ecdsa-p256")

    assert bao.transit_public_keys("twice") == first
    with pytest.raises(BaoServerError, match="exists as ecdsa-p256"):
        bao.create_transit_key("twice", key_type="rsa-2048")
    with pytest.raises(ValueError, match="unsupported"):
        bao.create_transit_key("bad", key_type="aes256-gcm96")


def test_rotate_transit_key_adds_a_version_and_keeps_the_old_one(
    bao: BaoServer,
) -> None:
    bao.enable_transit()
    bao.create_transit_key("rotated", key_type="ed25519")
    before = bao.transit_public_keys("rotated")

    assert bao.rotate_transit_key("rotated") == 2

    after = bao.transit_public_keys("rotated")
    assert sorted(after) == [1, 2]
    assert after[1] == before[1]
    assert after[2] != after[1]
    assert bao.transit_sign("rotated", b"hello").startswith("vault:v2:")


def test_export_transit_key_refuses_a_non_exportable_key(bao: BaoServer) -> None:
    bao.enable_transit()
    bao.create_transit_key("sealed-in", key_type="ecdsa-p256")

    with pytest.raises(BaoServerError, match="not exportable"):
        bao.export_transit_key("sealed-in")


def test_export_transit_key_returns_the_matching_private_key(bao: BaoServer) -> None:
    bao.enable_transit()
    bao.create_transit_key("exported", key_type="ecdsa-p256", exportable=True)

    private_pem = bao.export_transit_key("exported")[1]

    private_key = serialization.load_pem_private_key(private_pem.encode(), None)
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public_pem.decode().strip() == bao.transit_public_keys("exported")[1].strip()


def load_certificate(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def common_name(certificate: x509.Certificate) -> str:
    attributes = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attributes[0].value)


def extended_key_usage(certificate: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(
        certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )


def test_enable_pki_returns_its_ca_and_keeps_it(bao: BaoServer) -> None:
    ca_pem = bao.enable_pki(mount="pki-ca-test", ttl="48h")

    ca = load_certificate(ca_pem)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert common_name(ca) == "tokend test root CA"
    assert bao.enable_pki(mount="pki-ca-test") == ca_pem


def test_issued_client_certificate_has_the_cn_and_chains_to_the_ca(
    bao: BaoServer,
) -> None:
    ca = load_certificate(bao.enable_pki())
    bao.create_pki_role("test-client")

    issued = bao.issue_certificate("test-client", "orders-client", ttl="10m")

    certificate = load_certificate(issued["certificate"])
    assert common_name(certificate) == "orders-client"
    certificate.verify_directly_issued_by(ca)
    assert load_certificate(issued["issuing_ca"]) == ca
    assert extended_key_usage(certificate) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    serial = int(issued["serial_number"].replace(":", ""), 16)
    assert serial == certificate.serial_number
    assert issued["expiration"] == int(certificate.not_valid_after_utc.timestamp())
    private_key = serialization.load_pem_private_key(
        issued["private_key"].encode(), None
    )
    assert isinstance(private_key, ec.EllipticCurvePrivateKey)
    assert private_key.public_key() == certificate.public_key()


def test_write_server_certificate_is_for_127_0_0_1(
    bao: BaoServer, tmp_path: Path
) -> None:
    ca_pem = bao.enable_pki()

    files = bao.write_server_certificate(tmp_path / "server")

    certificate = load_certificate(files.certificate_file.read_text())
    names = certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(
        x509.IPAddress
    )
    assert extended_key_usage(certificate) == {ExtendedKeyUsageOID.SERVER_AUTH}
    assert files.ca_file.read_text().strip() == ca_pem.strip()
    assert stat.S_IMODE(files.private_key_file.stat().st_mode) == 0o600
    assert int(files.serial_number.replace(":", ""), 16) == certificate.serial_number
    # The key matches the certificate, as a TLS server needs.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.certificate_file, files.private_key_file)


def test_file_audit_lists_one_tokens_requests(
    bao: BaoServer, bao_audit_log: Path
) -> None:
    creds = bao.seed_service("audited", "audited-id", "audited-secret")

    with log_in(bao, creds) as client:
        accessor = client.auth.token.lookup_self()["data"]["accessor"]
        read_kv(client, creds.kv_path)
        client.auth.token.renew_self()

    assert BaoServer.audit_paths(bao_audit_log, accessor=accessor) == [
        ("read", "auth/token/lookup-self"),
        ("read", f"secret/data/{creds.kv_path}"),
        ("update", "auth/token/renew-self"),
    ]
    everything = BaoServer.audit_paths(bao_audit_log)
    assert ("update", "auth/approle/login") in everything
    assert ("update", "sys/audit/test") not in everything
    by_name = BaoServer.audit_paths(bao_audit_log, display_name="approle")
    assert ("read", f"secret/data/{creds.kv_path}") in by_name


def test_enable_file_audit_again_is_a_no_op_or_moves_the_file(
    bao: BaoServer, bao_audit_log: Path, tmp_path: Path
) -> None:
    bao.enable_file_audit(bao_audit_log, name=AUDIT_DEVICE)
    moved = tmp_path / "moved.log"

    bao.enable_file_audit(moved, name=AUDIT_DEVICE)
    bao.write_secret("tokend/audit-moved", {"x": "1"})

    def paths(log: Path) -> list[str]:
        return [path for _, path in BaoServer.audit_paths(log)]

    assert "secret/data/tokend/audit-moved" not in paths(bao_audit_log)
    assert "secret/data/tokend/audit-moved" in paths(moved)


def new_rsa_key() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, public_pem.decode()


def signed_jwt(key: rsa.RSAPrivateKey, **claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"iat": now, "exp": now + 60, **claims}, key, "RS256")


def test_jwt_login_with_a_jwt_signed_by_the_configured_key(bao: BaoServer) -> None:
    key, public_pem = new_rsa_key()
    bao.write_policy("jwt-reader", 'path "secret/data/jwt" { capabilities = ["read"] }')
    bao.enable_jwt_auth(
        public_pem,
        role="svc-jwt",
        policies=["jwt-reader"],
        bound_audiences=["tokend-test"],
        bound_subject="svc-jwt",
    )

    with open_client(bao) as client:
        login = client.auth.jwt.jwt_login(
            role="svc-jwt", jwt=signed_jwt(key, sub="svc-jwt", aud="tokend-test")
        )

    assert login["auth"]["policies"] == ["default", "jwt-reader"]


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "someone-else", "aud": "tokend-test"},
        {"sub": "svc-jwt-2", "aud": "another-audience"},
    ],
)
def test_jwt_login_refuses_another_subject_or_audience(
    bao: BaoServer, claims: dict[str, str]
) -> None:
    key, public_pem = new_rsa_key()
    bao.enable_jwt_auth(
        public_pem, "svc-jwt-2", ["default"], "tokend-test", bound_subject="svc-jwt-2"
    )

    with open_client(bao) as client, pytest.raises(hvac.exceptions.InvalidRequest):
        client.auth.jwt.jwt_login(role="svc-jwt-2", jwt=signed_jwt(key, **claims))


def test_jwt_auth_keys_of_earlier_roles_keep_working(bao: BaoServer) -> None:
    first_key, first_pem = new_rsa_key()
    second_key, second_pem = new_rsa_key()
    bao.enable_jwt_auth(first_pem, "first", ["default"], "aud", mount="jwt-keys")
    bao.enable_jwt_auth(second_pem, "second", ["default"], "aud", mount="jwt-keys")

    with open_client(bao) as client:
        jwt_auth = client.auth.jwt
        jwt_auth.jwt_login(
            "first", signed_jwt(first_key, sub="a", aud="aud"), path="jwt-keys"
        )
        jwt_auth.jwt_login(
            "second", signed_jwt(second_key, sub="b", aud="aud"), path="jwt-keys"
        )
        with pytest.raises(hvac.exceptions.InvalidRequest):
            jwt_auth.jwt_login(
                "first",
                signed_jwt(new_rsa_key()[0], sub="c", aud="aud"),
                path="jwt-keys",
            )


def test_service_policy_allows_its_transit_key_and_pki_role_only(
    bao: BaoServer,
) -> None:
    bao.enable_transit()
    bao.create_transit_key("signer-key", key_type="ecdsa-p256")
    bao.create_transit_key("other-key", key_type="ecdsa-p256")
    bao.enable_pki()
    bao.create_pki_role("signer-role")
    creds = bao.seed_service(
        "signer",
        "signer-id",
        None,
        transit_keys=["signer-key"],
        pki_roles=["signer-role"],
    )
    data = base64.b64encode(b"hello").decode()

    with log_in(bao, creds) as client:
        transit = client.secrets.transit
        assert read_kv(client, creds.kv_path) == {"client_id": "signer-id"}
        transit.read_key("signer-key")
        transit.sign_data("signer-key", hash_input=data)
        transit.sign_data("signer-key", hash_input=data, hash_algorithm="sha2-384")
        issued = client.write_data("pki/issue/signer-role", data={"common_name": "x"})
        assert issued["data"]["certificate"].startswith("-----BEGIN CERTIFICATE-----")
        with pytest.raises(hvac.exceptions.Forbidden):
            transit.sign_data("other-key", hash_input=data)
        with pytest.raises(hvac.exceptions.Forbidden):
            transit.read_key("other-key")
        with pytest.raises(hvac.exceptions.Forbidden):
            client.write_data("pki/issue/test-client", data={"common_name": "x"})


def test_build_service_policy_without_extras_is_the_kv_policy() -> None:
    policy = build_service_policy("secret", "tokend/plain")

    assert 'path "secret/data/tokend/plain"' in policy
    assert "transit" not in policy
    assert "pki" not in policy


def test_tls_server_serves_https_verified_against_its_ca(tls_bao: BaoServer) -> None:
    assert tls_bao.address == f"https://127.0.0.1:{tls_bao.port}"
    assert tls_bao.ca_file is not None
    ca = load_certificate(tls_bao.ca_file.read_text())

    with open_client(tls_bao, token=tls_bao.root_token) as client:
        assert client.sys.read_health_status(method="GET")["initialized"] is True
    with pytest.raises(requests.exceptions.SSLError):
        requests.Session().get(
            f"{tls_bao.address}/v1/sys/health", verify=True, timeout=5
        )
    assert common_name(ca)  # dev mode's own CA, not a system one


def test_tls_server_restart_has_a_new_ca_at_the_same_path(tls_bao: BaoServer) -> None:
    assert tls_bao.ca_file is not None
    before = tls_bao.ca_file.read_text()

    tls_bao.restart()

    assert tls_bao.ca_file.read_text() != before
    with open_client(tls_bao, token=tls_bao.root_token) as client:
        assert "secret/" in client.sys.list_mounted_secrets_engines()["data"]


def issue_login_certificate(
    bao: BaoServer, directory: Path, mount: str = "pki"
) -> tuple[str, CertificateFiles]:
    ca_pem = bao.enable_pki(mount=mount)
    bao.create_pki_role("cert-login", mount=mount)
    files = bao.write_certificate(directory, "cert-login", "cert-svc", mount=mount)
    return ca_pem, files


def test_cert_login_over_tls_with_a_pki_issued_certificate(
    tls_bao: BaoServer, tmp_path: Path
) -> None:
    ca_pem, files = issue_login_certificate(tls_bao, tmp_path)
    tls_bao.write_policy(
        "cert-reader", 'path "secret/data/cert" { capabilities = ["read"] }'
    )
    tls_bao.enable_cert_auth("svc", ca_pem, ["cert-reader"])

    with open_client(tls_bao) as client:
        login = client.auth.cert.login(
            name="svc",
            cert_pem=str(files.certificate_file),
            key_pem=str(files.private_key_file),
        )
        looked_up = client.auth.token.lookup_self()["data"]

    assert login["auth"]["policies"] == ["cert-reader", "default"]
    assert looked_up["display_name"] == "cert-svc"


def test_cert_login_refuses_a_certificate_from_another_ca(
    tls_bao: BaoServer, tmp_path: Path
) -> None:
    ca_pem, _ = issue_login_certificate(tls_bao, tmp_path / "trusted")
    _, stranger = issue_login_certificate(tls_bao, tmp_path / "other", "pki-other")
    tls_bao.enable_cert_auth("svc-strict", ca_pem, ["default"])

    with open_client(tls_bao) as client, pytest.raises(hvac.exceptions.VaultError):
        client.auth.cert.login(
            name="svc-strict",
            cert_pem=str(stranger.certificate_file),
            key_pem=str(stranger.private_key_file),
        )
