"""The token endpoint client: one ``client_credentials`` request, strictly read.

Every aiohttp error is turned into a :mod:`tokend.errors` error here, so that
no library exception (whose repr may carry request headers) travels further.

aiohttp is imported with the first session, in a worker thread: a restart
whose cached tokens are all valid is ready without it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode

import anyio
import anyio.to_thread
from pydantic import SecretStr

from tokend.discovery import discover_token_endpoints
from tokend.errors import (
    EndpointUnavailableError,
    ErrorKind,
    InvalidClientError,
    TokenEndpointError,
    TokenRejectedError,
)
from tokend.http import USER_AGENT, client_tls_context, read_body
from tokend.token import AccessToken, ClientCredentials, decode_jwt_claims

if TYPE_CHECKING:
    import aiohttp

MAX_BODY = 1 << 20
MAX_LIFETIME = 366 * 86400

# RFC 6749 §5.2 and RFC 8707 §2 error codes, by what tokend does next.
RETRYABLE_ERRORS = {"temporarily_unavailable", "server_error", "slow_down"}
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class TokenRequest:
    """What is asked of the token endpoint, apart from the credentials."""

    endpoint: str
    client_auth: str
    audience: str | None
    audience_param: str
    scopes: tuple[str, ...]
    extra_params: tuple[tuple[str, str], ...]
    default_lifetime: int
    min_lifetime: int

    def fingerprint(self, credentials_path: str) -> str:
        """Identify the request, so a changed one invalidates a cached token.

        The client_id is compared separately (see :mod:`tokend.state`), so a
        restart can match its cache without asking Vault first.
        """
        described = json.dumps(
            [
                self.endpoint,
                credentials_path,
                self.client_auth,
                self.audience,
                self.audience_param,
                sorted(self.scopes),
                list(self.extra_params),
            ]
        )
        return hashlib.sha256(described.encode()).hexdigest()[:32]

    def form(self, auth: RequestAuth) -> dict[str, str]:
        form = dict(self._own_form)
        form.update(auth.form)
        return form

    def body(self, auth: RequestAuth) -> bytes:
        """The form, URL-encoded; the request's own fields are encoded once."""
        if not auth.form:
            return self._own_body.encode()
        if auth.form.keys() & self._own_form.keys():  # an extra_param overridden
            return urlencode(self.form(auth)).encode()
        return f"{self._own_body}&{urlencode(auth.form)}".encode()

    @functools.cached_property
    def _own_form(self) -> dict[str, str]:
        form = dict(self.extra_params)
        form["grant_type"] = "client_credentials"
        if self.scopes:
            form["scope"] = " ".join(self.scopes)
        if self.audience is not None and self.audience_param != "none":
            form[self.audience_param] = self.audience
        return form

    @functools.cached_property
    def _own_body(self) -> str:
        return urlencode(self._own_form)


@dataclass(frozen=True)
class RequestAuth:
    """How one token request authenticates the client.

    ``secrets`` are the forms of a credential the server might echo back;
    they are redacted from every message. ``ssl`` carries a client
    certificate for mutual TLS (RFC 8705).
    """

    client_id: str
    headers: dict[str, str] = field(default_factory=dict)
    form: dict[str, str] = field(default_factory=dict)
    ssl: ssl.SSLContext | None = None
    secrets: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"RequestAuth(client_id={self.client_id!r}, form={sorted(self.form)!r})"


def secret_auth(method: str, credentials: ClientCredentials) -> RequestAuth:
    """client_secret_basic or client_secret_post (RFC 6749 §2.3.1)."""
    secrets = tuple(_secret_forms(credentials))
    if method == "client_secret_post":
        form = {
            "client_id": credentials.client_id,
            "client_secret": credentials.client_secret.get_secret_value(),
        }
        return RequestAuth(credentials.client_id, form=form, secrets=secrets)
    headers = {"Authorization": basic_authorization(credentials)}
    return RequestAuth(credentials.client_id, headers=headers, secrets=secrets)


def basic_authorization(credentials: ClientCredentials) -> str:
    """Return the Basic header value; RFC 6749 §2.3.1 form-encodes both parts."""
    secret = credentials.client_secret.get_secret_value()
    pair = f"{quote_plus(credentials.client_id)}:{quote_plus(secret)}"

    return "Basic " + base64.b64encode(pair.encode()).decode()


class TokenEndpoint:
    """One token endpoint with its own HTTP session, TLS context and pool.

    ``location`` is the token URL, or the issuer when ``discover`` is set.
    """

    def __init__(
        self,
        location: str,
        *,
        discover: bool = False,
        ca_file: Path | None = None,
        timeout: float = 10.0,
        allow_http: bool = False,
    ) -> None:
        self.location = location
        self.discover = discover
        self.timeout = timeout
        self.allow_http = allow_http
        self._ca_file = ca_file
        self._token_url: str | None = None if discover else location
        self._mtls_url: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._session_lock = anyio.Lock()
        # The server's clock minus ours, from the Date of its last answer.
        self.skew: float | None = None

    async def session(self) -> aiohttp.ClientSession:
        """The endpoint's one session; the TLS context loads in a worker thread."""
        # Many keepers ask at once at start: one of them builds the session.
        async with self._session_lock:
            if self._session is None or self._session.closed:
                tls = await anyio.to_thread.run_sync(self._tls_context)
                import aiohttp  # imported by _tls_context

                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=tls, limit=32),
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                    headers={"User-Agent": USER_AGENT},
                )
            return self._session

    def _tls_context(self) -> ssl.SSLContext:
        """The TLS context (blocking: CA files); aiohttp is imported here too."""
        import aiohttp  # noqa: F401

        cafile = str(self._ca_file) if self._ca_file else None
        try:
            return client_tls_context(cafile)
        except (OSError, ssl.SSLError) as exc:
            raise TokenEndpointError(
                f"cannot load the CA bundle {cafile} for {self.location}: {exc}; "
                "fix ca_file"
            ) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def issuer(self) -> str | None:
        return self.location if self.discover else None

    async def token_url(self, mtls: bool = False) -> str:
        """The token endpoint; with ``mtls``, its mutual-TLS alias if it has one."""
        if self._token_url is None:
            self._token_url, self._mtls_url = await discover_token_endpoints(
                await self.session(), self.location, self.allow_http
            )
        return (self._mtls_url or self._token_url) if mtls else self._token_url

    async def fetch(
        self,
        request: TokenRequest,
        auth: RequestAuth,
        sent_at: datetime,
        url: str | None = None,
    ) -> AccessToken:
        """Request one token; ``sent_at`` anchors its expiry.

        ``auth`` is how the client authenticates (see :mod:`tokend.client_auth`);
        ``url`` defaults to the endpoint's token URL.

        Raises:
            TokenEndpointError: a classified failure naming the endpoint.
        """
        url = url or await self.token_url()
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded",
            **auth.headers,
        }
        session = await self.session()
        import aiohttp  # loaded with the session

        options: dict[str, Any] = {} if auth.ssl is None else {"ssl": auth.ssl}
        # Encoded here: aiohttp's FormData would build a multipart writer
        # (and a random boundary) for every request only to urlencode it.
        body = request.body(auth)
        try:
            async with session.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                **options,
            ) as response:
                body = await read_body(response, MAX_BODY)
                status = response.status
                content_type = response.content_type
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                date = response.headers.get("Date")
        except TimeoutError:
            raise EndpointUnavailableError(
                f"token endpoint {url} did not answer within {self.timeout:g}s"
            ) from None
        except aiohttp.ClientSSLError as exc:
            error = EndpointUnavailableError(
                f"TLS with token endpoint {url} failed ({_reason(exc)}); "
                "check the server certificate and ca_file"
                + ("; or the server refused the client certificate" if auth.ssl else "")
            )
            error.handshake = True
            raise error from None
        except (aiohttp.ClientError, OSError) as exc:
            raise EndpointUnavailableError(
                f"cannot reach token endpoint {url}: {_reason(exc)}"
            ) from None
        if self.discover and status in (404, 410):
            self._token_url = None  # the server may have moved it; look again

        document = _decode(body, content_type)
        if isinstance(document, dict):  # the token endpoint's own answer
            self._note_skew(date, sent_at)
        if (
            status == 200
            and isinstance(document, dict)
            and not isinstance(document.get("error"), str)
        ):
            return read_token_response(document, request, sent_at, url)
        raise describe_failure(
            url, status, content_type, body, document, retry_after, auth.secrets
        )

    def _note_skew(self, date: str | None, sent_at: datetime) -> None:
        moment = parse_http_date(date)
        if moment is not None:
            self.skew = (moment - sent_at).total_seconds()


def read_token_response(
    document: dict[str, Any], request: TokenRequest, sent_at: datetime, url: str
) -> AccessToken:
    """Turn a successful response into a token, or refuse to publish it."""
    value = document.get("access_token")
    if not isinstance(value, str) or not value.strip():
        raise TokenRejectedError(
            f"token endpoint {url} answered 200 without an access_token",
            kind="retryable",
        )
    # Every white space but " " is unprintable: one C call, not one per character.
    if " " in value or not value.isprintable():
        raise TokenRejectedError(
            f"token endpoint {url} returned an access_token with spaces or "
            "control characters; it cannot be sent as a Bearer token",
            kind="retryable",
        )
    token_type = document.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenRejectedError(
            f"token endpoint {url} returned token_type {token_type!r}; tokend "
            "publishes Bearer tokens only (RFC 6750)"
        )

    claims = decode_jwt_claims(value) or {}
    _check_audience(claims, request, url)
    lifetime = _lifetime(document.get("expires_in"), claims, sent_at, request, url)
    if lifetime < max(request.min_lifetime, 1):
        raise TokenRejectedError(
            f"token endpoint {url} returned a token valid for {lifetime:g}s, "
            f"less than min_lifetime ({request.min_lifetime}s)",
            kind="retryable",
        )

    return AccessToken(
        value=SecretStr(value),
        token_type="Bearer",
        issued_at=sent_at,
        lifetime=lifetime,
        scope=_scope(document.get("scope"), request.scopes),
        audience=request.audience,
        claims=claims,
    )


def _lifetime(
    expires_in: Any,
    claims: dict[str, Any],
    sent_at: datetime,
    request: TokenRequest,
    url: str,
) -> float:
    candidates = []
    if expires_in is not None and not isinstance(expires_in, bool):
        seconds = _number(expires_in)
        if seconds is None:
            raise TokenRejectedError(
                f"token endpoint {url} sent expires_in {str(expires_in)[:40]!r}, "
                "expected a number of seconds",
                kind="retryable",
            )
        candidates.append(seconds)
    exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
    if exp is not None:
        candidates.append(
            exp - iat if iat is not None and iat <= exp else exp - sent_at.timestamp()
        )
    candidates = [c for c in candidates if not math.isnan(c)]  # inf - inf
    if not candidates:
        return float(request.default_lifetime)
    # Trust whichever says the token dies first; +inf is capped below.
    return min(min(candidates), MAX_LIFETIME)


def _number(value: Any) -> float | None:
    """A finite-or-infinite real number of seconds from JSON, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except OverflowError:
        # An integer beyond float range: as good as infinite, either way.
        return math.inf if int(value) > 0 else -math.inf
    except ValueError:
        return None
    if math.isnan(number):
        return None
    return number


def _check_audience(claims: dict[str, Any], request: TokenRequest, url: str) -> None:
    if not claims or request.audience is None or request.audience_param == "none":
        return
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list):
        return
    if request.audience not in audiences:
        raise TokenRejectedError(
            f"token endpoint {url} issued a JWT for audience {aud!r}, but "
            f"{request.audience!r} was requested; check audience and audience_param"
        )


def _scope(scope: Any, requested: tuple[str, ...]) -> tuple[str, ...]:
    # RFC 6749 §5.1: an omitted scope is the one requested.
    if isinstance(scope, str):
        return tuple(scope.split())
    if isinstance(scope, list):
        return tuple(str(item) for item in scope)
    return requested


def describe_failure(
    url: str,
    status: int,
    content_type: str,
    body: bytes,
    document: Any,
    retry_after: float | None,
    secrets: Sequence[str],
) -> TokenEndpointError:
    """Classify a failed response into the error that decides what comes next.

    Whatever the server echoes back is redacted before it reaches a message:
    the secret raw, form-encoded, and inside the Basic credentials (or the
    client assertion).
    """
    # Longest first, so a form containing another is replaced whole.
    forms = sorted(secrets, key=len, reverse=True)
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        code = _one_line(_redact(document["error"], forms))[:64]
        described = document.get("error_description")
        description = (
            _one_line(_redact(str(described), forms))[:300] if described else None
        )
        detail = f"{code}: {description}" if description else code
        message = f"token endpoint {url} answered {status} {detail}"
        return _class_for(code, status)(
            message,
            kind=_kind_for(code, status),
            error=code,
            description=description,
            status=status,
            retry_after=retry_after,
        )

    snippet = _one_line(_redact(body.decode(errors="replace"), forms))[:200]
    kind_shown = _one_line(_redact(content_type, forms))[:64]
    shown = f"{status} {kind_shown or 'without content type'}"
    if 200 <= status < 300:
        # A success body may hold a token: never quote it.
        message = (
            f"token endpoint {url} answered {status} with no usable token ({shown})"
        )
        return TokenRejectedError(message, kind="retryable", status=status)
    message = f"token endpoint {url} answered {shown}: {snippet!r}"
    cls: type[TokenEndpointError] = TokenEndpointError
    if status == 401:
        cls = InvalidClientError
    elif status in RETRYABLE_STATUS or status >= 500:
        cls = EndpointUnavailableError

    return cls(message, status=status, retry_after=retry_after)


def _class_for(code: str, status: int) -> type[TokenEndpointError]:
    if code == "invalid_client":
        return InvalidClientError
    if code in RETRYABLE_ERRORS or status in RETRYABLE_STATUS or status >= 500:
        return EndpointUnavailableError
    return TokenEndpointError


def _kind_for(code: str, status: int) -> ErrorKind:
    if code == "invalid_client":
        return "credentials"
    if code in RETRYABLE_ERRORS or status in RETRYABLE_STATUS or status >= 500:
        return "retryable"
    return "persistent"


def parse_retry_after(value: str | None) -> float | None:
    """Read ``Retry-After`` as seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    moment = parse_http_date(value)
    if moment is None:
        return None

    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def parse_http_date(value: str | None) -> datetime | None:
    """An HTTP-date (``Date``, ``Retry-After``) as an aware datetime, or None."""
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _decode(body: bytes, content_type: str) -> Any:
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return None
    if content_type == "application/x-www-form-urlencoded":
        return dict(parse_qsl(text))
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _secret_forms(credentials: ClientCredentials) -> list[str]:
    secret = credentials.client_secret.get_secret_value()
    if not secret:
        return []
    basic = basic_authorization(credentials).removeprefix("Basic ")
    return list({secret, quote_plus(secret), quote(secret, safe=""), basic})


def _redact(text: str, forms: list[str]) -> str:
    for form in forms:
        text = text.replace(form, "***")
    return text


def _one_line(text: str) -> str:
    """Fold whitespace and drop control characters: a server cannot forge lines."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
