"""A scriptable HTTP server on loopback that answers as badly as a test asks.

A real OAuth server answers correctly; this one answers with whatever status,
headers, body, content type and delays a test configures, and records every
request it receives. Use it for the quirks a real server won't produce.

From async code (the server runs in the test's event loop)::

    async with QuirkServer() as server:
        server.reply(token_response(expires_in="3600"))
        endpoint = TokenEndpoint(server.token_url, timeout=0.5)
        ...
        assert server.requests()[0].form["grant_type"] == "client_credentials"

From sync code, e.g. a daemon run in a subprocess or another loop (the server
runs its own event loop in a background thread)::

    with QuirkServer() as server:
        server.reply(QuirkResponse(status=503, body="<h1>down</h1>",
                                   content_type="text/html"))

API:

- ``QuirkServer(host="127.0.0.1")``: ``async with`` / ``await start()`` and
  ``await stop()`` in the running loop; ``with`` / ``start_in_thread()`` and
  ``stop_in_thread()`` in a thread. The port is chosen by the OS.
- ``url`` is the base URL (``http://127.0.0.1:PORT``), ``url_for(path)`` one
  path on it, ``token_url`` is ``url_for("/token")``.
- ``reply(answer, path="/token")`` sets the standing answer of a path;
  ``enqueue(*answers, path="/token")`` queues one-shot answers served first, in
  order. An answer is a :class:`QuirkResponse` or a ``Responder``: a function
  of the :class:`RecordedRequest` returning a :class:`QuirkResponse` (to echo
  the request, say). A path with no answer gets a 404.
- ``requests(path=None)`` returns the recorded requests (of one path, or all),
  oldest first; ``clear()`` forgets requests and answers.
- :class:`QuirkResponse` fields: ``status``, ``body`` (bytes and str are sent
  as they are, anything else as JSON), ``content_type`` (``None``: aiohttp's
  default), ``headers``, ``delay`` (seconds before the status line) and
  ``body_delay`` (seconds between the first ``split_at`` bytes of the body and
  the rest, for a slow body). Delays end early when the server stops.
- helpers: ``token_response(**fields)`` (a Bearer token answer; a field set to
  ``None`` is left out), ``error_response(status, error, description)`` and
  ``unsigned_jwt(claims)`` (a JWS compact token with a fake signature).

Everything a test calls is thread-safe.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from aiohttp import web
from multidict import CIMultiDict

START_TIMEOUT = 10.0
FAKE_SIGNATURE = "c2lnbmF0dXJlLW5vdC1jaGVja2Vk"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    body: bytes
    form_pairs: tuple[tuple[str, str], ...]

    @property
    def form(self) -> dict[str, str]:
        """The urlencoded form fields; the last one wins when repeated."""
        return dict(self.form_pairs)

    def basic_auth(self) -> tuple[str, str] | None:
        """Return the decoded (client_id, client_secret) of a Basic header.

        Both parts are form-decoded, as RFC 6749 §2.3.1 has them encoded.
        """
        header = self.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        pair = base64.b64decode(encoded).decode()
        client_id, _, secret = pair.partition(":")

        return unquote_plus(client_id), unquote_plus(secret)


@dataclass(frozen=True)
class QuirkResponse:
    """What the server answers to one request."""

    status: int = 200
    body: Any = None
    content_type: str | None = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body_delay: float = 0.0
    split_at: int | None = None

    def encoded_body(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        if self.body is None:
            return b""
        return json.dumps(self.body).encode()


Responder = Callable[[RecordedRequest], QuirkResponse]
Answer = QuirkResponse | Responder


def token_response(status: int = 200, **fields: Any) -> QuirkResponse:
    """Return a JSON token answer; ``fields`` override or, as None, drop members."""
    document: dict[str, Any] = {
        "access_token": "opaque-token-value",
        "token_type": "Bearer",
        "expires_in": 3600,
    }
    document.update(fields)
    document = {key: value for key, value in document.items() if value is not None}

    return QuirkResponse(status=status, body=document)


def error_response(
    status: int, error: str, description: str | None = None, **headers: str
) -> QuirkResponse:
    """Return an RFC 6749 §5.2 error answer."""
    document = {"error": error}
    if description is not None:
        document["error_description"] = description

    return QuirkResponse(status=status, body=document, headers=headers)


def unsigned_jwt(
    claims: Mapping[str, Any], header: Mapping[str, Any] | None = None
) -> str:
    """Return a JWS compact token with ``claims`` and a signature nobody checks."""

    def encode(part: Mapping[str, Any]) -> str:
        raw = base64.urlsafe_b64encode(json.dumps(part).encode())
        return raw.rstrip(b"=").decode()

    head = header if header is not None else {"alg": "RS256", "typ": "at+jwt"}

    return f"{encode(head)}.{encode(claims)}.{FAKE_SIGNATURE}"


class QuirkServer:
    """A loopback HTTP server whose every answer a test chooses."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._lock = threading.Lock()
        self._standing: dict[str, Answer] = {}
        self._queued: dict[str, deque[Answer]] = {}
        self._requests: list[RecordedRequest] = []
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the quirk server is not running")
        return f"http://{self.host}:{self.port}"

    @property
    def token_url(self) -> str:
        return self.url_for("/token")

    def url_for(self, path: str) -> str:
        return self.url + path

    def reply(self, answer: Answer, path: str = "/token") -> None:
        """Answer every request to ``path`` with ``answer`` from now on."""
        with self._lock:
            self._standing[path] = answer

    def enqueue(self, *answers: Answer, path: str = "/token") -> None:
        """Answer the next requests to ``path`` with ``answers``, in order."""
        with self._lock:
            self._queued.setdefault(path, deque()).extend(answers)

    def requests(self, path: str | None = None) -> list[RecordedRequest]:
        """Return the requests received (to ``path``, if given), oldest first."""
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    def clear(self) -> None:
        """Forget every recorded request and configured answer."""
        with self._lock:
            self._requests.clear()
            self._standing.clear()
            self._queued.clear()

    async def start(self) -> None:
        """Start serving in the running event loop."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._closing = asyncio.Event()
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=0.5, handle_signals=False
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop serving; delayed answers end at once."""
        if self._closing is not None:
            self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.port = 0

    async def __aenter__(self) -> QuirkServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def start_in_thread(self) -> None:
        """Start serving from a background thread with its own event loop."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=serve, name="quirk-server", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT):
            raise RuntimeError("the quirk server did not start")
        if failure:
            raise failure[0]

    def stop_in_thread(self) -> None:
        """Stop a server started by :meth:`start_in_thread` and join its thread."""
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._release_and_stop)
        self._thread.join(START_TIMEOUT)
        self._loop = None
        self._thread = None

    def _release_and_stop(self) -> None:
        if self._closing is not None:
            self._closing.set()
        asyncio.get_running_loop().stop()

    def __enter__(self) -> QuirkServer:
        self.start_in_thread()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_in_thread()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        form_pairs: tuple[tuple[str, str], ...] = ()
        if request.content_type == "application/x-www-form-urlencoded":
            text = body.decode(errors="replace")
            form_pairs = tuple(parse_qsl(text, keep_blank_values=True))
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=CIMultiDict(request.headers),
            body=body,
            form_pairs=form_pairs,
        )
        with self._lock:
            self._requests.append(recorded)
            answer = self._next_answer(request.path)
        if answer is None:
            return web.Response(status=404, text="no answer configured")
        response = answer(recorded) if callable(answer) else answer
        await self._pause(response.delay)
        try:
            return await self._send(request, response)
        except ConnectionResetError:
            # The client gave up (a timeout test); nobody is left to answer.
            return web.Response(status=499)

    def _next_answer(self, path: str) -> Answer | None:
        queued = self._queued.get(path)
        if queued:
            return queued.popleft()
        return self._standing.get(path)

    async def _send(
        self, request: web.Request, answer: QuirkResponse
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=answer.status, headers=answer.headers)
        if answer.content_type is not None:
            response.content_type = answer.content_type
        body = answer.encoded_body()
        response.content_length = len(body)
        await response.prepare(request)
        split = answer.split_at if answer.split_at is not None else len(body) // 2
        if answer.body_delay and body:
            await response.write(body[:split])
            await self._pause(answer.body_delay)
            await response.write(body[split:])
        else:
            await response.write(body)
        await response.write_eof()

        return response

    async def _pause(self, seconds: float) -> None:
        if seconds <= 0 or self._closing is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)
