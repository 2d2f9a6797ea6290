"""Client credentials from Vault (or OpenBao): log in, keep the login, read KV v2.

hvac is synchronous; every call runs in a worker thread so the event loop
never blocks. hvac's and urllib3's exceptions are turned into tokend errors
here, naming the Vault address and path but never a token or secret ID.
Credentials read from Vault are held in memory only.

hvac (with its transport, :mod:`tokend.vault_http`) is imported by the first
login, in its worker thread: a restart whose cached tokens are all valid is
ready before it needs Vault.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
from pydantic import SecretStr

from tokend.config import VaultSettings
from tokend.errors import (
    CredentialsError,
    TokendError,
    VaultDeniedError,
    VaultUnavailableError,
)
from tokend.read_ahead import Batch, ReadAhead
from tokend.token import ClientCredentials
from tokend.vault_login import (
    Login,
    client_certificate_files,
    expand_credential_path,
    read_secret_file,
)

if TYPE_CHECKING:
    import hvac

__all__ = ["LoginState", "VaultSource", "expand_credential_path", "read_secret_file"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_NO_CREDENTIALS = (
    "store the client credentials there or fix the token's credentials path"
)
_NO_KEY = "create the Transit key or fix signing_key"
RENEW_SHARE = 2 / 3
MIN_USEFUL_TTL = 10.0
DENIED_RELOGIN = 60.0  # seconds between new logins caused by a 403


@dataclass
class LoginState:
    """What status shows about the Vault login; never the token."""

    logged_in: bool = False
    ttl: float | None = None
    renewable: bool = False
    logins: int = 0
    renewals: int = 0
    failures: int = 0
    last_error: str | None = None


class VaultSource:
    """Reads client credentials for tokens from one Vault server."""

    def __init__(self, settings: VaultSettings) -> None:
        self.settings = settings
        self.state = LoginState()
        self._client: hvac.Client | None = None
        self._lock = anyio.Lock()
        self._limiter = anyio.CapacityLimiter(4)
        self._cache: dict[str, ClientCredentials] = {}
        self._logged_in = anyio.Event()
        self._login_ttl = 0.0
        self._denied_login_at = -DENIED_RELOGIN
        self._login = Login(settings)
        self._ahead = ReadAhead()
        self._reading: set[anyio.CancelScope] = set()  # read-aheads, for aclose
        self._closed = False

    async def read_credentials(
        self, path: str, *, fresh: bool = False, secret: bool = True
    ) -> ClientCredentials:
        """Return ``client_id`` and ``client_secret`` stored at KV v2 ``path``.

        With ``secret = False`` only ``client_id`` is needed (the client
        authenticates with a key or a certificate).

        If Vault is unavailable, the credentials last read are returned
        instead, unless ``fresh`` demands a real read (after ``invalid_client``).

        Raises:
            CredentialsError: Vault refused, or the secret lacks a key.
            VaultUnavailableError: Vault cannot be reached and nothing is cached.
        """
        data = None if fresh else await self._ahead.claim(path)
        try:
            if data is None:
                data = await self.read_secret(path)
        except VaultUnavailableError as exc:
            cached = self._cache.get(path)
            if cached is None or fresh:
                raise
            logger.warning(
                "vault unavailable, using credentials read earlier path=%s error=%s",
                path,
                exc,
            )
            return cached
        credentials = self._credentials(path, data, secret)
        self._cache[path] = credentials

        return credentials

    def forget(self, path: str) -> None:
        self._cache.pop(path, None)

    def plan_read_ahead(self, paths: Iterable[str]) -> list[Batch]:
        """Have :meth:`read_credentials` of ``paths`` wait for :meth:`read_ahead`.

        The caller must then run :meth:`read_ahead` with the batches returned.
        """
        return self._ahead.plan(paths)

    async def read_ahead(
        self,
        batches: list[Batch],
        after: anyio.Event | None = None,
        patience: float = math.inf,
    ) -> None:
        """Read planned credentials in a few worker calls (:mod:`tokend.read_ahead`).

        With ``after``, the reading (and a login it needs) waits until that
        event is set, or ``patience`` seconds. Nothing is raised: a keeper
        whose secret was not read reads it itself, and that read reports what
        went wrong. :meth:`aclose` (a reload that replaces this source) ends
        it; the batches are released however it ends.
        """
        if not batches:
            return
        with anyio.CancelScope() as scope:
            self._reading.add(scope)
            try:
                if after is not None and not self._closed:
                    with anyio.move_on_after(patience):
                        await after.wait()
                if self._closed:
                    return
                client = self._client or await self.login()
                read_one = functools.partial(self._read_kv, client)
                await self._ahead.read(batches, read_one)
            except TokendError:
                pass
            finally:
                self._reading.discard(scope)
                self._ahead.release(batches)

    def _read_kv(self, client: hvac.Client, path: str) -> dict[str, Any] | None:
        """A KV v2 secret's data; None for an answer without it (worker thread)."""
        import hvac.exceptions

        errors = hvac.exceptions
        try:
            return _answer(client, "GET", self._kv_path(path), None, ("data", "data"))
        except (
            errors.InvalidPath,
            errors.Forbidden,
            errors.InvalidRequest,
            errors.Unauthorized,
            errors.UnexpectedError,
        ):
            return None

    async def keep_login(self) -> None:
        """Renew the Vault token before its TTL runs out; log in again if needed.

        Runs until cancelled. A failure is retried after a short backoff, not
        after another two thirds of the TTL, which might outlive the token.
        """
        rng = random.Random()
        failures = 0
        settings = self.settings
        if settings.auth == "approle" and settings.secret_id_wrapped:
            # Unwrap at start, while the wrapping token is fresh, not at the
            # first refresh, which cached tokens may put hours away.
            await self._first_login(rng)
        await self._logged_in.wait()
        delay = self._renew_delay()
        while True:
            await anyio.sleep(delay)
            try:
                await self._renew_or_login()
            except TokendError as exc:
                failures += 1
                self.state.last_error = str(exc)
                delay = min(60.0, 2.0**failures) * rng.uniform(0.5, 1.0)
                logger.warning(
                    "vault login not renewed, retrying in %.0fs error=%s", delay, exc
                )
                continue
            failures = 0
            delay = self._renew_delay()

    async def _first_login(self, rng: random.Random) -> None:
        failures = 0
        while not self._logged_in.is_set():
            try:
                await self.login()
            except TokendError as exc:
                failures += 1
                delay = min(60.0, 2.0**failures) * rng.uniform(0.5, 1.0)
                logger.warning(
                    "vault login failed, retrying in %.0fs error=%s", delay, exc
                )
                await anyio.sleep(delay)

    def _renew_delay(self) -> float:
        ttl = self.state.ttl
        # A token without TTL (root, or periodic without one) never ends.
        return max(ttl * RENEW_SHARE, 1.0) if ttl else float("inf")

    async def _renew_or_login(self) -> None:
        client = self._client
        if self.state.renewable and client is not None:
            try:
                auth = await self._run(
                    lambda: client.auth.token.renew_self()["auth"],
                    where="auth/token/renew-self",
                )
            except CredentialsError:
                auth = None
            lease = float(auth.get("lease_duration") or 0) if auth else 0.0
            # Near its max TTL a renewal returns only what is left: log in anew.
            if lease >= min(MIN_USEFUL_TTL, self._login_ttl / 2):
                self.state.ttl = lease
                self.state.renewals += 1
                logger.debug("vault token renewed ttl=%.0fs", self.state.ttl)
                return
        await self.login(stale=client)

    async def login(self, stale: hvac.Client | None = None) -> hvac.Client:
        """Log in (AppRole) or adopt the configured token; return the client.

        Many tokens may find the login missing or revoked at once: only the
        first logs in, the others use its result (a secret_id may allow only
        a few uses). ``stale`` is the client the caller found wanting.
        """
        async with self._lock:
            if self._client is not None and self._client is not stale:
                return self._client
            client, auth = await self._run(self._log_in, where=self._login.login_path())
            # The old client may still serve a call in a worker thread; it is
            # left to the garbage collector rather than closed under it.
            self._client = client
            self.state.logged_in = True
            self.state.ttl = float(auth.get("lease_duration") or auth.get("ttl") or 0)
            self._login_ttl = self.state.ttl
            self.state.renewable = bool(auth.get("renewable"))
            self.state.logins += 1
            self.state.last_error = None
            self._logged_in.set()
        logger.info(
            "vault login ok address=%s auth=%s ttl=%.0fs",
            self.settings.address,
            self.settings.auth,
            self.state.ttl,
        )
        return client

    def inherit_login(self, previous: VaultSource) -> None:
        """Keep a secret_id unwrapped by ``previous``, if it is still the one meant.

        A wrapping token is spent at start; a reload that changes other
        ``[vault]`` keys (a timeout, the KV mount) must not need a new one.
        """
        self._login.inherit(previous._login)

    async def aclose(self) -> None:
        self._closed = True
        for scope in self._reading:
            scope.cancel()
        if self._client is not None:
            self._client.adapter.close()
            self._client = None

    def _log_in(self) -> tuple[hvac.Client, dict[str, Any]]:
        """A new client, logged in, and the login's ``auth`` (worker thread)."""
        client = self._new_client()
        try:
            return client, self._login(client)
        except BaseException:
            client.adapter.close()
            raise

    def _new_client(self) -> hvac.Client:
        import hvac

        from tokend.vault_http import PoolAdapter

        # Pass token="" so hvac does not pick up ~/.vault-token or $VAULT_TOKEN.
        # The adapter takes no proxy from the environment: the Vault address
        # is configured.
        return hvac.Client(
            url=self.settings.address,
            token="",
            # () rather than None: hvac would take $VAULT_CLIENT_CERT instead.
            cert=client_certificate_files(self.settings) or (),
            verify=str(self.settings.ca_file) if self.settings.ca_file else True,
            timeout=self.settings.timeout,
            namespace=self.settings.namespace,
            adapter=PoolAdapter,
        )

    async def transit_key(self, name: str) -> dict[str, Any]:
        """Return Transit's description of key ``name``: type, versions, public keys."""
        path = f"{self.settings.transit_mount}/keys/{name}"
        return await self._call("GET", path, None, _NO_KEY)

    async def transit_sign(
        self,
        name: str,
        version: int,
        hash_bits: str | None,
        options: dict[str, str],
        data: bytes,
    ) -> tuple[int, bytes]:
        """Sign ``data`` with version ``version`` of Transit key ``name``.

        Returns the version Vault signed with and the raw signature; the
        private key never leaves Vault.
        """
        path = f"{self.settings.transit_mount}/sign/{name}"
        if hash_bits is not None:
            path += f"/sha2-{hash_bits}"
        payload = {
            "input": base64.b64encode(data).decode(),
            "key_version": version,
            "marshaling_algorithm": "jws",
            **options,
        }
        from tokend import signing  # loads cryptography: private_key_jwt only

        answer = await self._call("POST", path, payload, _NO_KEY)
        for warning in answer.get("warnings") or []:
            # A parameter Vault ignored (salt_length, say) makes a signature
            # the server rejects for no visible reason: refuse it here.
            raise CredentialsError(
                f"Vault warned about {self.settings.address}/v1/{path}: "
                f"{str(warning)[:200]}"
            )
        prefix, _, signature = str(answer.get("signature", "")).rpartition(":")
        try:
            signed_with = int(prefix.removeprefix("vault:v"))
            return signed_with, signing.b64url_decode(signature)
        except (ValueError, binascii.Error):
            raise CredentialsError(
                f"Vault's answer from {self.settings.address}/v1/{path} "
                "holds no JWS signature"
            ) from None

    async def issue_certificate(
        self, role: str, common_name: str, ttl: int | None
    ) -> dict[str, Any]:
        """Issue a certificate and private key from PKI role ``role``."""
        path = f"{self.settings.pki_mount}/issue/{role}"
        payload: dict[str, Any] = {"common_name": common_name, "format": "pem"}
        if ttl is not None:
            payload["ttl"] = f"{ttl}s"
        missing = "create the PKI role or fix client_certificate"
        return await self._call("POST", path, payload, missing)

    async def read_secret(
        self, path: str, missing: str = _NO_CREDENTIALS
    ) -> dict[str, Any]:
        """Return the data of the KV v2 secret at ``path`` (not cached).

        ``missing`` is the advice a 404 gets.
        """
        return await self._call(
            "GET", self._kv_path(path), None, missing, ("data", "data")
        )

    def _kv_path(self, path: str) -> str:
        """The API path of a KV v2 secret's data."""
        return f"{self.settings.kv_mount}/data/{path}"

    async def _call(
        self,
        method: str,
        path: str,
        payload: dict[str, Any] | None,
        missing: str,
        keys: tuple[str, ...] = ("data",),
    ) -> dict[str, Any]:
        """One authenticated request to ``/v1/<path>``; log in again after a 403.

        Returns the answer's object under ``keys`` (``data`` by default),
        with Vault's ``warnings`` kept beside it.
        """
        client = self._client or await self.login()
        call = functools.partial(_answer, client, method, path, payload, keys)
        try:
            return await self._run(call, where=path, missing=missing)
        except VaultDeniedError:
            # A 403 may mean our login was revoked, or the policy's doing. Each
            # new login spends a use of the secret_id: at most one a minute.
            if time.monotonic() - self._denied_login_at < DENIED_RELOGIN:
                raise
            self._denied_login_at = time.monotonic()
        client = await self.login(stale=client)
        call = functools.partial(_answer, client, method, path, payload, keys)
        return await self._run(call, where=path, missing=missing)

    async def _run(
        self,
        operation: Callable[[], T],
        where: str,
        missing: str = _NO_CREDENTIALS,
    ) -> T:
        try:
            return await anyio.to_thread.run_sync(
                operation, limiter=self._limiter, abandon_on_cancel=True
            )
        except TokendError as exc:
            self.state.last_error = str(exc)
            raise
        except Exception as exc:  # hvac and urllib3 errors end here
            error = self._translate(exc, where, missing)
            self.state.last_error = str(error)
            self.state.failures += 1
            if where.startswith("auth/"):
                self.state.logged_in = False
            raise error from None

    def _translate(self, exc: Exception, where: str, missing: str) -> TokendError:
        import hvac.exceptions
        import urllib3.exceptions

        address = self.settings.address
        at = f"{address}/v1/{where}"
        errors = hvac.exceptions
        if isinstance(exc, errors.VaultDown):
            return VaultUnavailableError(f"Vault at {address} is sealed or down (503)")
        if isinstance(exc, errors.Forbidden):
            return VaultDeniedError(
                f"Vault denied {at} (403): the login's policy does not allow it, "
                "or the login expired"
            )
        if isinstance(exc, errors.InvalidPath):
            return CredentialsError(f"nothing at {at} (404): {missing}")
        if isinstance(exc, errors.InvalidRequest | errors.Unauthorized):
            reason = "; ".join(str(e) for e in (exc.errors or []))[:200]
            return CredentialsError(f"Vault rejected {at}: {reason or 'bad request'}")
        if isinstance(
            exc,
            errors.RateLimitExceeded | errors.InternalServerError | errors.BadGateway,
        ):
            return VaultUnavailableError(
                f"Vault at {address} failed: {type(exc).__name__}"
            )
        if isinstance(exc, urllib3.exceptions.SSLError):
            return VaultUnavailableError(
                f"TLS with Vault at {address} failed; check vault.ca_file"
            )
        if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
            return VaultUnavailableError(
                f"cannot reach Vault at {address}: {type(exc).__name__}"
            )
        if isinstance(exc, errors.VaultError):
            return VaultUnavailableError(
                f"Vault at {address} failed: {type(exc).__name__}"
            )
        return CredentialsError(f"unexpected answer from {at}: {type(exc).__name__}")

    def _credentials(
        self, path: str, data: dict[str, Any], secret: bool
    ) -> ClientCredentials:
        id_key, secret_key = (
            self.settings.client_id_key,
            self.settings.client_secret_key,
        )
        needed = (id_key, secret_key) if secret else (id_key,)
        missing = [k for k in needed if not isinstance(data.get(k), str)]
        if missing:
            raise CredentialsError(
                f"Vault secret {self.settings.kv_mount}/{path} has no "
                f"{' or '.join(missing)}; expected string keys "
                + " and ".join(repr(k) for k in needed)
            )
        return ClientCredentials(data[id_key], SecretStr(data.get(secret_key) or ""))


def _answer(
    client: hvac.Client,
    method: str,
    path: str,
    payload: dict[str, Any] | None,
    keys: tuple[str, ...],
) -> dict[str, Any]:
    """Send one request to ``/v1/<path>``; the object under ``keys`` (blocking)."""
    import hvac.exceptions

    answer = client.adapter.request(method, f"/v1/{path}", json=payload)
    found = answer
    for key in keys:  # a missing key ends as "unexpected answer"
        found = found[key] if isinstance(found, dict) else None
    if not isinstance(found, dict):  # 204, or not the JSON expected
        raise hvac.exceptions.UnexpectedError("no JSON object in the answer")
    if isinstance(answer, dict) and answer.get("warnings"):
        found = {**found, "warnings": answer["warnings"]}
    return found
