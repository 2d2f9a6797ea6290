"""hvac's HTTP transport on urllib3's connection pool instead of a requests Session.

hvac speaks the Vault API; an adapter only sends its requests. Its default
adapter goes through requests, whose per-call work (preparing the request,
merging session settings, cookies, hooks, building a Response) costs about
0.8 ms of CPU per KV read here, more than the read itself. A thousand tokens
read their secrets at every cold start, in worker threads that hold the GIL
the event loop needs, so that cost lands on the time to READY.

The adapter keeps what the requests path does for Vault: the same headers
(X-Vault-Token, X-Vault-Namespace, X-Vault-Request, X-Vault-Wrap-TTL), JSON
bodies, a client certificate, connect and read timeouts, no proxy from the
environment, and hvac's exceptions for error statuses. Redirects are followed
only as a standby sends them (307 or 308, same method and body), and never
from https to http: a login's secret_id or JWT goes nowhere else. One TLS
context per client holds the CA and the client certificate; urllib3 would
otherwise load the certificate into a shared context for every new
connection, which is not safe while other threads use it. Without
``vault.ca_file`` the system's trust store verifies Vault, as it does the
OAuth server (requests would have used certifi's bundle, which leaves out an
organisation's own CA). Transport failures are urllib3's exceptions,
unwrapped from MaxRetryError; :meth:`tokend.vault.VaultSource._translate`
names them.

hvac and urllib3 are imported with this module, by the first login.
"""

from __future__ import annotations

import json
import ssl
from typing import Any
from urllib.parse import urlencode, urljoin

import hvac.adapters
import hvac.utils
import urllib3
import urllib3.exceptions

from tokend.http import USER_AGENT, client_tls_context

MAX_REDIRECTS = 5
REDIRECTS = frozenset({307, 308})  # method and body kept, as a standby sends them
# Connections kept per Vault host: the read-ahead's threads, a login, a renewal.
POOL_SIZE = 10


class Answer:
    """A response hvac's JSON adapter would not turn into a dict (e.g. a 204)."""

    def __init__(self, status: int, body: bytes, headers: Any) -> None:
        self.status_code = status
        self.content = body
        self.headers = headers
        self.ok = status < 400

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class PoolAdapter(hvac.adapters.Adapter):  # type: ignore[misc]
    """A :class:`hvac.adapters.JSONAdapter` whose requests go out through urllib3.

    A 200 answer with JSON comes back as a dict, anything else as an
    :class:`Answer`; an error status raises hvac's exception for it.
    """

    def __init__(
        self,
        base_uri: str,
        token: str | None = None,
        cert: tuple[str, str] | None = None,
        verify: bool | str = True,
        timeout: float = 30,
        proxies: Any = None,
        allow_redirects: bool = True,
        session: Any = None,
        namespace: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            base_uri=base_uri,
            token=token,
            cert=cert,
            verify=verify,
            timeout=timeout,
            proxies=proxies,
            allow_redirects=allow_redirects,
            session=session,
            namespace=namespace,
            **kwargs,
        )
        tls: dict[str, Any] = {}
        # Over plain http no CA store is parsed (2 MB of memory per login).
        if base_uri.startswith("https:"):
            tls["ssl_context"] = _tls_context(verify, cert)
        self._redirects = MAX_REDIRECTS if allow_redirects else 0
        self._pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=POOL_SIZE,
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            retries=False,
            **tls,
        )

    def close(self) -> None:
        self._pool.clear()

    def _send(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> urllib3.BaseHTTPResponse:
        """One request, and the 307/308 redirects a standby answers with."""
        for _ in range(self._redirects + 1):
            try:
                response = self._pool.request(
                    method, url, body=body, headers=headers, redirect=False
                )
            except urllib3.exceptions.MaxRetryError as exc:
                # The failure itself (refused, timed out, TLS), not the wrapper.
                raise (exc.reason or exc) from None
            location = response.headers.get("Location")
            if response.status not in REDIRECTS or not location or not self._redirects:
                return response
            target = urljoin(url, location)
            if url.startswith("https:") and not target.startswith("https:"):
                raise urllib3.exceptions.ProtocolError(
                    "Vault redirected from https to plain http; not followed"
                )
            url = target
        raise urllib3.exceptions.ProtocolError(
            f"more than {self._redirects} redirects from Vault"
        )

    def get_login_token(self, response: Any) -> str:
        return str(response["auth"]["client_token"])

    def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        raise_exception: bool = True,
        **kwargs: Any,
    ) -> Any:
        while "//" in url:
            url = url.replace("//", "/")
        url = self.urljoin(self.base_uri, url)
        headers = {"User-Agent": USER_AGENT, **(headers or {})}
        if self.request_header:
            headers["X-Vault-Request"] = "true"
        if self.token:
            headers["X-Vault-Token"] = self.token
        if self.namespace:
            headers["X-Vault-Namespace"] = self.namespace
        wrap_ttl = kwargs.pop("wrap_ttl", None)
        if wrap_ttl:
            headers["X-Vault-Wrap-TTL"] = str(wrap_ttl)
        payload = kwargs.pop("json", None)
        params = kwargs.pop("params", None)
        if kwargs:  # nothing tokend or the hvac calls it makes pass
            raise TypeError(f"unsupported request options: {sorted(kwargs)}")
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params, doseq=True)
        body = None
        if payload is not None:
            body = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        response = self._send(method.upper(), url, body, headers)
        status, data = response.status, response.data
        if status >= 400 and raise_exception and not self.ignore_exceptions:
            _raise_for_error(method, url, status, data, response.headers)
        if status == 200:
            try:
                return json.loads(data)
            except ValueError:
                pass
        return Answer(status, data, response.headers)


def _tls_context(verify: bool | str, cert: tuple[str, str] | None) -> ssl.SSLContext:
    """The client's one TLS context: vault.ca_file or the system store, its cert.

    tokend always verifies: ``verify`` is True or the CA file.
    """
    context = client_tls_context(None if verify is True else str(verify))
    if cert:
        context.load_cert_chain(cert[0], cert[1])
    return context


def _raise_for_error(
    method: str, url: str, status: int, data: bytes, headers: Any
) -> None:
    """hvac's exception for an error status, with Vault's error messages."""
    text = data.decode("utf-8", "replace")
    document = errors = None
    if headers.get("Content-Type") == "application/json":
        try:
            document = json.loads(data)
        except ValueError:
            pass
        else:
            errors = document.get("errors") if isinstance(document, dict) else None
    hvac.utils.raise_for_error(
        method,
        url,
        status,
        text if errors is None else None,
        errors=errors,
        text=text,
        json=document,
    )
