"""hvac's HTTP transport on urllib3's connection pool instead of a requests Session.

hvac speaks the Vault API; an adapter only sends its requests. Its default
adapter goes through requests, whose per-call work (preparing the request,
merging session settings, cookies, hooks, building a Response) costs about
0.8 ms of CPU per KV read here, more than the read itself. A thousand tokens
read their secrets at every cold start, in worker threads that hold the GIL
the event loop needs, so that cost lands on the time to READY.

The adapter keeps what the requests path does for Vault: the same headers
(X-Vault-Token, X-Vault-Namespace, X-Vault-Request, X-Vault-Wrap-TTL), JSON
bodies, a client certificate, connect and read timeouts, redirects followed
(a standby may redirect), no proxy from the environment, and hvac's
exceptions for error statuses. Without ``vault.ca_file`` the system's trust
store verifies Vault, as it does the OAuth server (requests would have used
certifi's bundle, which leaves out an organisation's own CA). Transport
failures are urllib3's exceptions, unwrapped from MaxRetryError;
:meth:`tokend.vault.VaultSource._translate` names them.

hvac and urllib3 are imported with this module, by the first login.
"""

from __future__ import annotations

import json
import os
import ssl
from typing import Any
from urllib.parse import urlencode

import hvac.adapters
import hvac.utils
import urllib3
import urllib3.exceptions

from tokend.http import USER_AGENT

MAX_REDIRECTS = 5
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
        if not base_uri.startswith("https:"):
            pass  # a CA store parsed for nothing would cost 2 MB of memory
        elif verify is True:
            tls["ssl_context"] = ssl.create_default_context()
        elif verify is False:
            tls["cert_reqs"] = "CERT_NONE"
        else:
            key = "ca_cert_dir" if os.path.isdir(verify) else "ca_certs"
            tls.update(cert_reqs="CERT_REQUIRED", **{key: str(verify)})
        if cert:
            tls.update(cert_file=cert[0], key_file=cert[1])
        self._redirects = MAX_REDIRECTS if allow_redirects else 0
        self._pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=POOL_SIZE,
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            headers={"User-Agent": USER_AGENT},
            **tls,
        )

    def close(self) -> None:
        self._pool.clear()

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
        headers = dict(headers or {})
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
        retries = urllib3.Retry(
            total=None,
            connect=0,
            read=0,
            status=0,
            other=0,
            redirect=self._redirects,
            raise_on_redirect=True,
            raise_on_status=False,
        )
        try:
            response = self._pool.request(
                method.upper(),
                url,
                body=body,
                headers=headers,
                retries=retries,
                redirect=self._redirects > 0,
                preload_content=True,
            )
        except urllib3.exceptions.MaxRetryError as exc:
            # The failure itself (refused, timed out, TLS), not the wrapper.
            raise (exc.reason or exc) from None
        status, data = response.status, response.data
        if status >= 400 and raise_exception and not self.ignore_exceptions:
            _raise_for_error(method, url, status, data, response.headers)
        if status == 200:
            try:
                return json.loads(data)
            except ValueError:
                pass
        return Answer(status, data, response.headers)


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
