"""Read the tokens tokend keeps fresh, from any Python service.

This module imports only the standard library: a service needs none of the
daemon's dependencies to read its token. Read the token on every call; a
:class:`TokenFile` makes that cheaper than opening the file, since it re-reads
only when the file changed (tokend replaces it by rename, so a change always
shows in the inode, size or modification time).

::

    TokendClientError
    └── TokenUnavailableError   the file is missing, unreadable, empty or expired

HTTP client adapters put the token in ``Authorization: Bearer`` and, on a 401,
re-read the file, ask the daemon for a new token if the file still holds the
rejected one, and retry the request exactly once. Each needs its library,
imported only when the adapter is first used:

- :class:`TokendAuth` for requests (``pip install 'tokend[requests]'``)
- :class:`HttpxAuth` for httpx, sync and async (``tokend[httpx]``)
- :class:`AiohttpMiddleware` for aiohttp >= 3.12 (``tokend[aiohttp]``)
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    import http.client

    from aiohttp import ClientHandlerType, ClientRequest, ClientResponse

# TokendAuth and HttpxAuth are left out: a star import would import their
# libraries (see __getattr__ at the end).
__all__ = [
    "DEFAULT_DIRECTORY",
    "AiohttpMiddleware",
    "TokenFile",
    "TokenUnavailableError",
    "TokendClientError",
    "read_token",
]

logger = logging.getLogger(__name__)

DEFAULT_DIRECTORY = "/run/tokend"
SOCKET_NAME = "control.sock"
# The daemon waits up to 30 s for a refresh it was asked for (control.py).
REFRESH_TIMEOUT = 35.0
MAX_FILE_SIZE = 1 << 20

FileKey = tuple[int, int, int]


class TokendClientError(Exception):
    """Base class of every error this module raises on purpose."""


class TokenUnavailableError(TokendClientError):
    """There is no usable token in the file; ``path`` names it."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"token file {path} {problem}")
        self.path = path


def resolve_token_path(
    name_or_path: str | os.PathLike[str], directory: str | os.PathLike[str]
) -> Path:
    """Return ``directory/NAME`` for a bare name, else the path as given."""
    if isinstance(name_or_path, str) and os.sep not in name_or_path:
        return Path(directory, name_or_path)

    return Path(name_or_path)


def read_token(
    name_or_path: str | os.PathLike[str], directory: str = DEFAULT_DIRECTORY
) -> str:
    """Return the access token in a token file of any format (raw, header, json).

    Raises:
        TokenUnavailableError: the file is missing, unreadable, empty, holds no
            token, or says its token has expired.
    """
    return TokenFile(name_or_path, directory=directory).token


class TokenFile:
    """One token file, re-read only when it changed.

    Args:
        name_or_path: a token's name (``orders`` is ``directory/orders``) or a path.
        directory: where tokend writes token files (``files.directory``).
        name: the token's name in tokend's configuration, when the file name
            differs (a ``path`` set per token).
        socket_path: the daemon's control socket; default ``control.sock``
            beside the token file, as tokend places it by default.
        refresh_timeout: seconds to wait for the daemon's answer to a refresh.

    Safe to share between threads. Reading costs one ``stat`` while the file
    is unchanged.
    """

    def __init__(
        self,
        name_or_path: str | os.PathLike[str],
        *,
        directory: str | os.PathLike[str] = DEFAULT_DIRECTORY,
        name: str | None = None,
        socket_path: str | os.PathLike[str] | None = None,
        refresh_timeout: float = REFRESH_TIMEOUT,
    ) -> None:
        self.path = resolve_token_path(name_or_path, directory)
        self.name = name or self.path.name
        self.socket_path = Path(socket_path or self.path.parent / SOCKET_NAME)
        self.metadata_path = self.path.with_name(self.path.name + ".json")
        self.refresh_timeout = refresh_timeout
        self._path = os.fspath(self.path)  # os.stat is quicker on a str
        # One tuple, replaced whole, so that threads never see half an update.
        self._loaded: tuple[FileKey, str, float | None] | None = None
        self._refresh_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TokenFile({self._path!r})"

    @property
    def token(self) -> str:
        """The access token the file holds now.

        Raises:
            TokenUnavailableError: the file is missing, unreadable, empty,
                holds no token, or says its token has expired.
        """
        try:
            info = os.stat(self._path)
        except OSError as exc:
            raise self._explain(exc) from exc
        key = (info.st_ino, info.st_size, info.st_mtime_ns)
        loaded = self._loaded
        if loaded is None or loaded[0] != key:
            loaded = self._load()
        _, token, expires_at = loaded
        if expires_at is not None and time.time() >= expires_at:
            raise TokenUnavailableError(
                self.path,
                f"holds a token that expired at {_format_time(expires_at)}: tokend "
                "could not refresh it; `tokend status` and its log say why",
            )

        return token

    def get(self) -> str:
        """Return :attr:`token`."""
        return self.token

    def refresh(self, socket_path: str | os.PathLike[str] | None = None) -> bool:
        """Ask the daemon to refresh this token now; return whether it changed.

        Blocks until the daemon answers (up to ``refresh_timeout`` seconds).
        The daemon refreshes a token on demand at most once per 10 s; asked
        sooner, it declines, and this returns True only if the file changed
        meanwhile. An unreachable daemon is logged, not raised.
        """
        before = self._read_or_none()
        after = self._refresh_unless_changed(before, socket_path)

        return after is not None and after != before

    def renew(self, rejected: str) -> str | None:
        """Return a token to retry with after a server rejected ``rejected``.

        Re-reads the file first: tokend may have replaced the token already.
        If the file still holds the rejected token (or none), asks the daemon
        for a new one. Returns None when there is nothing new to retry with.
        """
        current = self._refresh_unless_changed(rejected, None)
        if current is None or current == rejected:
            return None
        logger.debug("token rejected, retrying with a new one file=%s", self.path)

        return current

    def _refresh_unless_changed(
        self, old: str | None, socket_path: str | os.PathLike[str] | None
    ) -> str | None:
        # Callers that were rejected together wait here while the first one
        # asks the daemon, then find the new token without asking again.
        with self._refresh_lock:
            current = self._read_or_none()
            if current is None or current == old:
                self._ask_daemon(Path(socket_path or self.socket_path))
                current = self._read_or_none()

        return current

    def _read_or_none(self) -> str | None:
        try:
            return self.token
        except TokenUnavailableError:
            return None

    def _load(self) -> tuple[FileKey, str, float | None]:
        try:
            with open(self._path, "rb") as stream:
                info = os.fstat(stream.fileno())
                data = stream.read(MAX_FILE_SIZE)
        except OSError as exc:
            raise self._explain(exc) from exc
        token, expires_at = self._parse(data)
        if expires_at is None:
            expires_at = self._read_metadata_expiry(info.st_mtime_ns)
        loaded = ((info.st_ino, info.st_size, info.st_mtime_ns), token, expires_at)
        self._loaded = loaded

        return loaded

    def _parse(self, data: bytes) -> tuple[str, float | None]:
        """Return the token and, for the json format, its expiry (epoch seconds)."""
        text = data.decode("ascii", errors="replace").strip()
        if not text:
            raise TokenUnavailableError(
                self.path, "is empty (tokend never writes it so); see `tokend status`"
            )
        expires_at = None
        if text.startswith("{"):
            document = _load_json(text)
            token = document.get("access_token")
            expires_at = _parse_time(document.get("expires_at"))
        else:
            scheme, _, rest = text.partition(" ")
            token = rest.strip() if scheme.lower() == "bearer" else text
        # Whitespace or control characters would corrupt the header line.
        if not isinstance(token, str) or not _is_header_safe(token):
            raise TokenUnavailableError(
                self.path, "holds no access token; see `tokend status`"
            )

        return token, expires_at

    def _read_metadata_expiry(self, token_mtime_ns: int) -> float | None:
        """Return the expiry ``NAME.json`` records, if it describes this token."""
        try:
            with open(self.metadata_path, "rb") as stream:
                info = os.fstat(stream.fileno())
                data = stream.read(MAX_FILE_SIZE)
        except OSError:
            return None
        # tokend writes the token first and its metadata right after: older
        # metadata describes the previous token.
        if info.st_mtime_ns < token_mtime_ns:
            return None

        return _parse_time(_load_json(data.decode(errors="replace")).get("expires_at"))

    def _explain(self, exc: OSError) -> TokenUnavailableError:
        if isinstance(exc, FileNotFoundError):
            problem = (
                f"does not exist: is tokend running, with a token {self.name!r} "
                "configured? See `tokend status`"
            )
        elif isinstance(exc, PermissionError):
            problem = (
                "is not readable by this user: add it to the token's group "
                "(`group` in tokend's configuration); see `tokend status`"
            )
        else:
            problem = f"cannot be read ({exc.strerror}); see `tokend status`"

        return TokenUnavailableError(self.path, problem)

    def _ask_daemon(self, socket_path: Path) -> None:
        import http.client

        route = f"/v1/tokens/{quote(self.name, safe='')}/refresh"
        connection = None
        try:
            connection = open_unix_http(os.fspath(socket_path), self.refresh_timeout)
            connection.request("POST", route)
            response = connection.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as exc:
            logger.warning(
                "tokend unreachable, token not refreshed token=%s socket=%s error=%s",
                self.name,
                socket_path,
                getattr(exc, "strerror", None) or str(exc) or type(exc).__name__,
            )
            return
        finally:
            if connection is not None:
                connection.close()
        if response.status == 200:
            logger.info("token refreshed on demand token=%s", self.name)
        elif response.status == 429:
            logger.debug("token was refreshed just now token=%s", self.name)
        else:
            reason = _load_json(answer.decode(errors="replace")).get("error")
            logger.warning(
                "tokend could not refresh token token=%s status=%d error=%s",
                self.name,
                response.status,
                reason or "see `tokend status`",
            )


def open_unix_http(socket_path: str, timeout: float) -> http.client.HTTPConnection:
    """Return an HTTP connection over a Unix socket, such as tokend's control socket.

    Raises:
        OSError: nobody listens there, or this user may not connect.
    """
    import http.client  # here, not at the top: it costs more than the rest

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(socket_path)
    except OSError:
        sock.close()
        raise
    connection = http.client.HTTPConnection("tokend", timeout=timeout)
    # With a socket already in place, http.client sends on it instead of
    # opening a TCP connection.
    connection.sock = sock

    return connection


def _is_header_safe(token: str) -> bool:
    return bool(token) and token.isascii() and token.isprintable() and " " not in token


def _load_json(text: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def _parse_time(value: object) -> float | None:
    """Return an RFC 3339 time as epoch seconds, or None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def _format_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _as_token_file(
    source: TokenFile | str | os.PathLike[str], directory: str | os.PathLike[str]
) -> TokenFile:
    if isinstance(source, TokenFile):
        return source
    return TokenFile(source, directory=directory)


def _bearer(token: str) -> str:
    return f"Bearer {token}"


def _sent_token(header: str | bytes | None) -> str:
    if isinstance(header, bytes):
        header = header.decode(errors="replace")
    return (header or "").removeprefix("Bearer ")


class AiohttpMiddleware:
    """An aiohttp client middleware sending the token (aiohttp >= 3.12).

    ``ClientSession(middlewares=(AiohttpMiddleware("orders"),))``. The token
    goes only to ``origin`` (scheme, host and port; default: the origin of the
    first request), never to another host a redirect leads to. On a 401 it
    re-reads the file, asks the daemon if need be (in a thread, so the loop
    goes on) and retries once.
    """

    def __init__(
        self,
        token: TokenFile | str | os.PathLike[str],
        *,
        directory: str | os.PathLike[str] = DEFAULT_DIRECTORY,
        origin: str | None = None,
    ) -> None:
        self.token_file = _as_token_file(token, directory)
        self.origin = _normalise_origin(origin) if origin else None

    async def __call__(
        self, request: ClientRequest, handler: ClientHandlerType
    ) -> ClientResponse:
        origin = str(request.url.origin())
        if self.origin is None:
            self.origin = origin
        elif origin != self.origin:
            return await handler(request)
        token = self.token_file.token
        request.headers["Authorization"] = _bearer(token)
        response = await handler(request)
        if response.status != 401:
            return response

        import asyncio

        replacement = await asyncio.to_thread(self.token_file.renew, token)
        if replacement is None:
            return response
        response.release()
        request.headers["Authorization"] = _bearer(replacement)

        return await handler(request)


def _normalise_origin(url: str) -> str:
    from yarl import URL  # an aiohttp dependency

    return str(URL(url).origin())


def _build_requests_auth() -> type:
    try:
        import requests
        import requests.auth
    except ImportError as exc:
        raise ImportError(_missing("TokendAuth", "requests")) from exc

    retried = "_tokend_retried"

    class TokendAuth(requests.auth.AuthBase):
        """requests authentication sending the token: ``auth=TokendAuth("orders")``.

        On a 401 it re-reads the file, asks the daemon if need be and retries
        once; a request whose body is a stream cannot be sent twice and is not
        retried.
        """

        def __init__(
            self,
            token: TokenFile | str | os.PathLike[str],
            *,
            directory: str | os.PathLike[str] = DEFAULT_DIRECTORY,
        ) -> None:
            self.token_file = _as_token_file(token, directory)

        def __call__(
            self, request: requests.PreparedRequest
        ) -> requests.PreparedRequest:
            request.headers["Authorization"] = _bearer(self.token_file.token)
            request.register_hook("response", self._retry_on_401)
            return request

        def _retry_on_401(
            self, response: requests.Response, **send: Any
        ) -> requests.Response:
            request = response.request
            if response.status_code != 401 or getattr(request, retried, False):
                return response
            # No token: a redirect to another host dropped it; never send it there.
            sent = _sent_token(request.headers.get("Authorization"))
            if not sent or not isinstance(request.body, bytes | str | None):
                return response
            replacement = self.token_file.renew(sent)
            if replacement is None:
                return response

            # Read and release the 401 so that its connection can be reused.
            _ = response.content
            response.close()
            retry = request.copy()
            retry.headers["Authorization"] = _bearer(replacement)
            setattr(retry, retried, True)
            second: requests.Response = response.connection.send(retry, **send)
            second.history.append(response)
            second.request = retry

            return second

    TokendAuth.__qualname__ = "TokendAuth"
    return TokendAuth


def _build_httpx_auth() -> type:
    try:
        import httpx
    except ImportError as exc:
        raise ImportError(_missing("HttpxAuth", "httpx")) from exc

    class HttpxAuth(httpx.Auth):
        """httpx authentication sending the token: ``auth=HttpxAuth("orders")``.

        Works with ``httpx.Client`` and ``httpx.AsyncClient``. On a 401 it
        re-reads the file, asks the daemon if need be (in a worker thread for
        the async client) and retries once.
        """

        def __init__(
            self,
            token: TokenFile | str | os.PathLike[str],
            *,
            directory: str | os.PathLike[str] = DEFAULT_DIRECTORY,
        ) -> None:
            self.token_file = _as_token_file(token, directory)

        def sync_auth_flow(
            self, request: httpx.Request
        ) -> Generator[httpx.Request, httpx.Response, None]:
            token = self.token_file.token
            request.headers["Authorization"] = _bearer(token)
            response = yield request
            if response.status_code == 401:
                replacement = self.token_file.renew(token)
                if replacement is not None:
                    request.headers["Authorization"] = _bearer(replacement)
                    yield request

        async def async_auth_flow(
            self, request: httpx.Request
        ) -> AsyncGenerator[httpx.Request, httpx.Response]:
            import anyio.to_thread  # an httpx dependency; runs under trio too

            token = self.token_file.token
            request.headers["Authorization"] = _bearer(token)
            response = yield request
            if response.status_code == 401:
                replacement = await anyio.to_thread.run_sync(
                    self.token_file.renew, token
                )
                if replacement is not None:
                    request.headers["Authorization"] = _bearer(replacement)
                    yield request

    HttpxAuth.__qualname__ = "HttpxAuth"
    return HttpxAuth


def _missing(adapter: str, package: str) -> str:
    return (
        f"tokend.client.{adapter} needs {package}: "
        f"pip install 'tokend[{package}]' (or {package} itself)"
    )


_ADAPTERS: dict[str, Callable[[], type]] = {
    "TokendAuth": _build_requests_auth,
    "HttpxAuth": _build_httpx_auth,
}


def __getattr__(name: str) -> Any:
    """Build an adapter on first use, so its library is imported only then."""
    build = _ADAPTERS.get(name)
    if build is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    adapter = build()
    globals()[name] = adapter

    return adapter
