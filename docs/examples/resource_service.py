"""An example receiving service: it checks the bearer tokens tokend's callers send.

A caller reads its token from ``/run/tokend/NAME`` and sends it as
``Authorization: Bearer <token>`` (RFC 6750 §2.1). This service accepts the call
only if the token is a JWT access token (RFC 9068) that its issuer signed with an
asymmetric key, that was issued for this service's audience, that is within its
validity window and, optionally, that carries a required scope.

Run it on its own::

    python docs/examples/resource_service.py --issuer URL --audience AUD \\
        [--scope SCOPE] [--port 0]

It prints one JSON line ``{"url": ...}`` once it listens on 127.0.0.1 and serves
``GET /orders`` until SIGINT or SIGTERM. Tests import ``make_app`` instead.

Needs only the standard library, aiohttp and PyJWT[crypto].
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import signal
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from aiohttp import web

logger = logging.getLogger("resource_service")

# Only asymmetric algorithms, each tied to the key type (and curve) it needs. HS*
# would let anyone who knows the verification key mint tokens; "none" is no
# signature at all (RFC 8725 §3.1, §3.2).
ALGORITHMS: dict[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "PS256": ("RSA", None),
    "ES256": ("EC", "P-256"),
}
# RFC 9068 §4: reject anything else, such as an ID token replayed as an access token.
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
# RFC 9068 §2.2 makes all of these mandatory in a JWT access token.
REQUIRED_CLAIMS = ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"]
LEEWAY_SECONDS = 10.0
JWKS_MAX_AGE_SECONDS = 300.0
# An unknown kid usually means the issuer rotated its key, so we refetch; but not
# more often than this, or tokens with made-up kids would hammer the issuer.
JWKS_MIN_REFETCH_SECONDS = 10.0
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=5)
REALM = "orders"


class TokenRejectedError(Exception):
    """The bearer token is not acceptable; the message may be shown to the caller."""


class InsufficientScopeError(Exception):
    """The token is valid but lacks the scope this service requires."""


class KeysUnavailableError(Exception):
    """The issuer's metadata or signing keys could not be fetched."""


@dataclass(frozen=True)
class Settings:
    issuer: str
    audience: str
    scope: str | None
    leeway: float = LEEWAY_SECONDS


@dataclass(frozen=True)
class Caller:
    """Who called, as the verified token says."""

    client_id: str
    scope: tuple[str, ...]


def build_metadata_urls(issuer: str) -> list[str]:
    """Return the discovery URLs to try: RFC 8414 first, then OpenID Connect."""
    parts = urllib.parse.urlsplit(issuer)
    path = parts.path.rstrip("/")
    # RFC 8414 §3.1 puts the well-known segment before the issuer's path;
    # OpenID Connect Discovery §4 appends it.
    return [
        f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{path}",
        f"{issuer.rstrip('/')}/.well-known/openid-configuration",
    ]


class IssuerKeys:
    """The issuer's signing keys, found through discovery and cached."""

    def __init__(self, session: aiohttp.ClientSession, issuer: str) -> None:
        self._session = session
        self._issuer = issuer
        self._jwks_uri: str | None = None
        self._keys: dict[str, dict[str, Any]] = {}
        self._fetched_at = -math.inf
        # One fetch at a time: a burst of requests after a rotation waits for it.
        self._lock = asyncio.Lock()

    async def find_key(self, kid: str) -> dict[str, Any]:
        """Return the JWK with this ``kid``, refetching the JWKS if needed.

        Raises:
            TokenRejectedError: the issuer publishes no such key.
            KeysUnavailableError: the issuer could not be reached.
        """
        async with self._lock:
            age = time.monotonic() - self._fetched_at
            if age > JWKS_MAX_AGE_SECONDS or (
                kid not in self._keys and age > JWKS_MIN_REFETCH_SECONDS
            ):
                await self._fetch_keys()
        try:
            return self._keys[kid]
        except KeyError:
            raise TokenRejectedError("unknown signing key") from None

    async def _fetch_keys(self) -> None:
        if self._jwks_uri is None:
            self._jwks_uri = await self._discover_jwks_uri()
        document = await self._get_json(self._jwks_uri)
        self._keys = {
            key["kid"]: key
            for key in document.get("keys", [])
            if isinstance(key.get("kid"), str) and key.get("use", "sig") == "sig"
        }
        self._fetched_at = time.monotonic()
        logger.info("jwks fetched uri=%s keys=%d", self._jwks_uri, len(self._keys))

    async def _discover_jwks_uri(self) -> str:
        for url in build_metadata_urls(self._issuer):
            try:
                metadata = await self._get_json(url)
            except KeysUnavailableError:
                continue
            # RFC 8414 §3.3: metadata claiming another issuer must not be used.
            if metadata.get("issuer") != self._issuer:
                raise KeysUnavailableError(f"{url} names another issuer")
            jwks_uri = metadata.get("jwks_uri")
            if isinstance(jwks_uri, str):
                return jwks_uri

        raise KeysUnavailableError(f"no metadata with a jwks_uri for {self._issuer}")

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with self._session.get(url, timeout=HTTP_TIMEOUT) as response:
                response.raise_for_status()
                document = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise KeysUnavailableError(f"GET {url} failed: {exc}") from exc
        if not isinstance(document, dict):
            raise KeysUnavailableError(f"GET {url} did not return a JSON object")

        return document


def build_verification_key(jwk: dict[str, Any], algorithm: str) -> jwt.PyJWK:
    """Return a key bound to ``algorithm``, if the JWK may be used with it."""
    kty, curve = ALGORITHMS[algorithm]
    if jwk.get("kty") != kty or jwk.get("crv") != curve:
        raise TokenRejectedError("signing key does not match the algorithm")
    # A JWK that names its algorithm may be used with that one only.
    if jwk.get("alg", algorithm) != algorithm:
        raise TokenRejectedError("signing key does not match the algorithm")
    try:
        return jwt.PyJWK(jwk, algorithm=algorithm)
    except jwt.PyJWKError:
        raise TokenRejectedError("unusable signing key") from None


async def verify_access_token(
    token: str, keys: IssuerKeys, settings: Settings
) -> Caller:
    """Check a JWT access token the way RFC 9068 §4 asks and return its caller.

    Raises:
        TokenRejectedError: the token must not be accepted.
        InsufficientScopeError: it lacks ``settings.scope``.
        KeysUnavailableError: the issuer's keys could not be fetched.
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise TokenRejectedError("malformed token") from None
    # RFC 7515 §4.1.9: "typ" compares case-insensitively.
    if str(header.get("typ", "")).lower() not in ACCESS_TOKEN_TYPES:
        raise TokenRejectedError("not a JWT access token")
    algorithm = header.get("alg")
    if algorithm not in ALGORITHMS:
        raise TokenRejectedError("signing algorithm not allowed")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise TokenRejectedError("token names no signing key")

    key = build_verification_key(await keys.find_key(kid), algorithm)
    claims = decode_claims(token, key, settings)
    granted = tuple(str(claims.get("scope", "")).split())
    if settings.scope is not None and settings.scope not in granted:
        raise InsufficientScopeError(settings.scope)

    return Caller(client_id=str(claims["client_id"]), scope=granted)


def decode_claims(token: str, key: jwt.PyJWK, settings: Settings) -> dict[str, Any]:
    """Verify signature, issuer, audience and validity window; return the claims."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key,
            algorithms=[key.algorithm_name],
            audience=settings.audience,
            issuer=settings.issuer,
            leeway=settings.leeway,
            options={"require": REQUIRED_CLAIMS},
        )
    except jwt.InvalidSignatureError:
        raise TokenRejectedError("signature does not verify") from None
    except jwt.ExpiredSignatureError:
        raise TokenRejectedError("token has expired") from None
    except jwt.ImmatureSignatureError:
        raise TokenRejectedError("token is not valid yet") from None
    except jwt.InvalidAudienceError:
        raise TokenRejectedError("token is for another audience") from None
    except jwt.InvalidIssuerError:
        raise TokenRejectedError("token is from another issuer") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenRejectedError(f"token lacks the {exc.claim} claim") from None
    except jwt.InvalidTokenError:
        raise TokenRejectedError("invalid token") from None

    return claims


def read_bearer_token(request: web.Request) -> str | None:
    """Return the token of an ``Authorization: Bearer`` header, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    # RFC 7235 §2.1: the scheme is case-insensitive. Tokens in the query string
    # or form body (RFC 6750 §2.2, §2.3) are deliberately not accepted.
    if scheme.lower() != "bearer" or not token.strip():
        return None

    return token.strip()


def build_challenge(
    status: int, error: str | None = None, description: str | None = None
) -> web.Response:
    """Return an RFC 6750 §3 error response with its ``WWW-Authenticate`` header."""
    params = [f'realm="{REALM}"']
    if error is not None:
        params.append(f'error="{error}"')
    if description is not None:
        params.append(f'error_description="{description}"')
    fields = {"error": error, "error_description": description}
    body = {name: value for name, value in fields.items() if value is not None}

    return web.json_response(
        body,
        status=status,
        headers={"WWW-Authenticate": "Bearer " + ", ".join(params)},
    )


SETTINGS_KEY = web.AppKey("settings", Settings)
KEYS_KEY = web.AppKey("keys", IssuerKeys)


async def handle_orders(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    token = read_bearer_token(request)
    if token is None:
        # RFC 6750 §3.1: a request without credentials gets no error code.
        return build_challenge(401)

    try:
        caller = await verify_access_token(token, request.app[KEYS_KEY], settings)
    except TokenRejectedError as exc:
        logger.info("token rejected reason=%s", exc)
        return build_challenge(401, "invalid_token", str(exc))
    except InsufficientScopeError as exc:
        return build_challenge(403, "insufficient_scope", f"requires scope {exc}")
    except KeysUnavailableError as exc:
        # Not the caller's fault: a 401 would only make it fetch a new token.
        logger.warning("signing keys unavailable: %s", exc)
        return web.json_response({"error": "temporarily_unavailable"}, status=503)

    return web.json_response(
        {"hello": caller.client_id, "scope": " ".join(caller.scope)}
    )


def make_app(
    issuer: str,
    audience: str,
    scope: str | None = None,
    leeway: float = LEEWAY_SECONDS,
) -> web.Application:
    """Return the service: ``GET /orders`` for callers with a valid token.

    Args:
        issuer: the exact ``iss`` tokens must carry; its metadata names the JWKS.
        audience: this service's identifier, which the ``aud`` claim must contain.
        scope: a scope every token must grant, or None.
        leeway: seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat``.
    """
    app = web.Application()
    app[SETTINGS_KEY] = Settings(issuer, audience, scope, leeway)

    async def keep_http_session(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            app[KEYS_KEY] = IssuerKeys(session, issuer)
            yield

    app.cleanup_ctx.append(keep_http_session)
    app.router.add_get("/orders", handle_orders)

    return app


async def serve(args: argparse.Namespace) -> None:
    """Listen on 127.0.0.1, print the URL as JSON, serve until SIGINT/SIGTERM."""
    runner = web.AppRunner(make_app(args.issuer, args.audience, args.scope))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", args.port).start()
        host, port = runner.addresses[0][:2]
        sys.stdout.write(json.dumps({"url": f"http://{host}:{port}"}) + "\n")
        sys.stdout.flush()

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Serve GET /orders to callers with a valid bearer JWT."
    )
    parser.add_argument("--issuer", required=True, help="expected token issuer")
    parser.add_argument("--audience", required=True, help="this service's audience")
    parser.add_argument("--scope", help="scope every token must grant")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(serve(args))

    return 0


if __name__ == "__main__":
    sys.exit(main())
