"""Find the token endpoint from an issuer (RFC 8414, OpenID Connect Discovery)."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from tokend.errors import EndpointUnavailableError, TokenEndpointError
from tokend.http import is_loopback_host, read_body

if TYPE_CHECKING:
    import aiohttp

logger = logging.getLogger(__name__)

MAX_DOCUMENT = 1 << 20


def metadata_urls(issuer: str) -> list[str]:
    """Return the discovery URLs to try for ``issuer``, in order.

    RFC 8414 §3.1 inserts the well-known segment before the issuer's path;
    OpenID Connect Discovery 1.0 §4 appends it after the path.
    """
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    rfc8414 = urlunsplit(
        (
            parts.scheme,
            parts.netloc,
            "/.well-known/oauth-authorization-server" + path,
            "",
            "",
        )
    )
    oidc = issuer.rstrip("/") + "/.well-known/openid-configuration"

    return [oidc, rfc8414] if not path else [rfc8414, oidc]


async def discover_token_endpoints(
    session: aiohttp.ClientSession, issuer: str, allow_http: bool
) -> tuple[str, str | None]:
    """Return the ``token_endpoint`` and its mutual-TLS alias, if any.

    RFC 8705 §5: ``mtls_endpoint_aliases.token_endpoint`` is where a client
    authenticating with a certificate must send its token request.

    The metadata's ``issuer`` must equal the configured one exactly (RFC 8414
    §3.3), so that a look-alike server cannot hand out its own endpoint.

    Raises:
        EndpointUnavailableError: no metadata document could be fetched.
        TokenEndpointError: the metadata is wrong; fix the issuer setting.
    """
    import aiohttp  # loaded already: the caller holds a session

    failures = []
    for url in metadata_urls(issuer):
        try:
            async with session.get(
                url, headers={"Accept": "application/json"}, allow_redirects=False
            ) as response:
                body = await read_body(response, MAX_DOCUMENT)
                status = response.status
        except TimeoutError:
            failures.append(f"{url}: timed out")
            continue
        except (aiohttp.ClientError, OSError) as exc:
            failures.append(f"{url}: {str(exc)[:120] or type(exc).__name__}")
            continue
        if status != 200:
            failures.append(f"{url}: HTTP {status}")
            continue
        try:
            document = json.loads(body)
        except ValueError:
            failures.append(f"{url}: not JSON")
            continue
        if isinstance(document, dict):
            endpoint = _token_endpoint(document, issuer, url, allow_http)
            return endpoint, _mtls_alias(document, url)
        failures.append(f"{url}: not a JSON object")

    raise EndpointUnavailableError(
        f"cannot discover the token endpoint of issuer {issuer}: " + "; ".join(failures)
    )


def _token_endpoint(
    document: dict[str, object], issuer: str, url: str, allow_http: bool
) -> str:
    if document.get("issuer") != issuer:
        raise TokenEndpointError(
            f"discovery document {url} names issuer {document.get('issuer')!r}, "
            f"not the configured {issuer!r}; the issuer must match exactly"
        )
    return _checked_url(
        document.get("token_endpoint"), url, "token_endpoint", allow_http
    )


def _mtls_alias(document: dict[str, object], url: str) -> str | None:
    """The https mTLS token endpoint, or None; a bad one is only a warning.

    Only tls_client_auth tokens use it, so it must not stop the others.
    """
    aliases = document.get("mtls_endpoint_aliases")
    if not isinstance(aliases, dict) or "token_endpoint" not in aliases:
        return None
    alias = aliases["token_endpoint"]
    try:
        parts = urlsplit(alias) if isinstance(alias, str) else None
    except ValueError:
        parts = None
    if parts is None or parts.scheme != "https" or not parts.hostname:
        logger.warning(
            "discovery document %s has an mtls_endpoint_aliases.token_endpoint "
            "that is not an https URL; ignoring it: %.100r",
            url,
            alias,
        )
        return None
    return str(alias)


def _checked_url(endpoint: object, url: str, key: str, allow_http: bool) -> str:
    if not isinstance(endpoint, str) or not endpoint:
        raise TokenEndpointError(f"discovery document {url} has no {key}")
    parts = urlsplit(endpoint)
    loopback = is_loopback_host(parts.hostname)
    if parts.scheme != "https" and not (
        parts.scheme == "http" and (loopback or allow_http)
    ):
        raise TokenEndpointError(
            f"discovery document {url} names {key} {endpoint!r}; "
            "only https is allowed (plain http only on loopback)"
        )

    return endpoint
