"""How tokend proves itself to Vault: AppRole (plain or wrapped), token, cert, JWT.

These functions run in a worker thread with an hvac client; they read the
credential files (``%C`` is systemd's credentials directory) and return the
``auth`` block of the login. Messages name the file or the Vault path, never
a secret ID, token or identity token.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from tokend.config import VaultSettings
from tokend.errors import CredentialsError

if TYPE_CHECKING:
    import hvac


def expand_credential_path(template: str, key: str) -> Path:
    """Expand ``%C`` to ``$CREDENTIALS_DIRECTORY`` (systemd's LoadCredential=).

    Raises:
        CredentialsError: ``%C`` is used but the variable is not set.
    """
    if "%C" in template.replace("%%", ""):
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise CredentialsError(
                f"vault.{key} = {template!r} uses %C, but $CREDENTIALS_DIRECTORY is "
                "not set; run under systemd with LoadCredential= or give a plain path"
            )
        template = template.replace("%C", directory)

    return Path(template.replace("%%", "%"))


def read_secret_file(template: str, key: str) -> str:
    """Return the stripped content of a credential file named by ``vault.KEY``."""
    return _read_credential(expand_credential_path(template, key), key)


def _read_credential(path: Path, key: str) -> str:
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        raise CredentialsError(f"vault.{key}: {path} does not exist") from None
    except OSError as exc:
        raise CredentialsError(
            f"vault.{key}: cannot read {path}: {exc.strerror}"
        ) from None
    if not value:
        raise CredentialsError(f"vault.{key}: {path} is empty")

    return value


def client_certificate_files(settings: VaultSettings) -> tuple[str, str] | None:
    """The TLS client certificate and key files for Vault, checked now.

    Raises:
        CredentialsError: a file is missing, or the key is readable by others.
    """
    if settings.client_cert_file is None or settings.client_key_file is None:
        return None
    cert = expand_credential_path(settings.client_cert_file, "client_cert_file")
    key = expand_credential_path(settings.client_key_file, "client_key_file")
    for name, path in (("client_cert_file", cert), ("client_key_file", key)):
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise CredentialsError(
                f"vault.{name}: cannot read {path}: {exc.strerror}"
            ) from None
        if name == "client_key_file" and mode & 0o004:
            raise CredentialsError(
                f"vault.client_key_file: {path} is readable by every user; "
                "chmod it to 0600 (or 0640 for a group)"
            )
    return str(cert), str(key)


class Unwrapped:
    """The secret_id unwrapped from a wrapping token, in memory only.

    The lock makes the unwrap single-flight even across worker threads that
    an earlier, cancelled login left running: a wrapping token works once.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.secret_id: SecretStr | None = None


class Login:
    """Logs one hvac client in with the configured method."""

    def __init__(self, settings: VaultSettings) -> None:
        self.settings = settings
        self._unwrapped = Unwrapped()

    def inherit(self, previous: Login) -> None:
        """Share ``previous``'s unwrapped secret_id if it is for the same role."""
        same = (
            "address",
            "namespace",
            "approle_mount",
            "role_id",
            "role_id_file",
            "secret_id_file",
        )
        if self.settings.secret_id_wrapped and all(
            getattr(self.settings, key) == getattr(previous.settings, key)
            for key in same
        ):
            self._unwrapped = previous._unwrapped

    def login_path(self) -> str:
        settings = self.settings
        mounts = {
            "token": "auth/token/lookup-self",
            "approle": f"auth/{settings.approle_mount}/login",
            "cert": f"auth/{settings.cert_mount}/login",
            "jwt": f"auth/{settings.jwt_mount}/login",
        }
        return mounts[settings.auth]

    def __call__(self, client: hvac.Client) -> dict[str, Any]:
        settings = self.settings
        if settings.auth == "token":
            client.token = _vault_token(settings)
            data: dict[str, Any] = client.auth.token.lookup_self()["data"]
            return data
        payload: dict[str, str | None]
        if settings.auth == "cert":
            payload = {"name": settings.cert_role} if settings.cert_role else {}
        elif settings.auth == "jwt":
            payload = {
                "role": settings.jwt_role,
                # Re-read at every login: platforms rotate identity tokens.
                "jwt": read_secret_file(settings.jwt_file or "", "jwt_file"),
            }
        else:
            payload = {
                "role_id": settings.role_id
                or read_secret_file(settings.role_id_file or "", "role_id_file"),
                "secret_id": self._approle_secret_id(client),
            }
        response = client.adapter.post(f"/v1/{self.login_path()}", json=payload)
        auth: dict[str, Any] = response["auth"]
        client.token = auth["client_token"]
        return auth

    def _approle_secret_id(self, client: hvac.Client) -> str:
        settings = self.settings
        if not settings.secret_id_wrapped:
            return read_secret_file(settings.secret_id_file or "", "secret_id_file")
        unwrapped = self._unwrapped
        with unwrapped.lock:
            if unwrapped.secret_id is None:
                unwrapped.secret_id = SecretStr(self._unwrap(client))
            return unwrapped.secret_id.get_secret_value()

    def _unwrap(self, client: hvac.Client) -> str:
        """Check what the wrapping token wraps, then unwrap it (once)."""
        import hvac.exceptions

        settings = self.settings
        path = expand_credential_path(settings.secret_id_file or "", "secret_id_file")
        wrapping = _read_credential(path, "secret_id_file")
        used = (
            f"vault.secret_id_file: the wrapping token in {path} is not valid: it "
            "was unwrapped already or it expired. tokend unwraps it once, at "
            "start; deliver a new one before each start. If tokend did not "
            "unwrap it, someone else may have: treat that secret_id as exposed"
        )
        try:
            info = client.adapter.post(
                "/v1/sys/wrapping/lookup", json={"token": wrapping}
            )["data"]
        except hvac.exceptions.InvalidRequest:
            raise CredentialsError(used) from None
        created = str(info.get("creation_path", ""))
        mount = re.escape(settings.approle_mount.strip("/"))
        if not re.fullmatch(rf"auth/{mount}/role/[^/]+/secret-id", created):
            raise CredentialsError(
                f"vault.secret_id_file: the wrapping token in {path} wraps the "
                f"answer of {created!r}, not of auth/{settings.approle_mount}/role/"
                "ROLE/secret-id; refusing it (it may have been tampered with)"
            )
        client.token = wrapping
        try:
            response = client.adapter.post("/v1/sys/wrapping/unwrap", json={})
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden):
            raise CredentialsError(used) from None
        finally:
            client.token = ""
        secret_id = (response.get("data") or {}).get("secret_id")
        if not isinstance(secret_id, str) or not secret_id:
            raise CredentialsError(
                f"vault.secret_id_file: the wrapping token in {path} held no secret_id"
            )
        return secret_id


def _vault_token(settings: VaultSettings) -> str:
    if settings.token_file:
        return read_secret_file(settings.token_file, "token_file")
    token = os.environ.get("VAULT_TOKEN", "").strip()
    if not token:
        raise CredentialsError(
            'vault.auth = "token" needs vault.token_file or $VAULT_TOKEN'
        )
    return token
