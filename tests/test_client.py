"""tokend.client: reading token files, and the HTTP adapters' 401 path.

The adapters' refresh path runs against a real daemon, a real OAuth server and
the example resource service, which a gate in front of it makes reject a token
the test revokes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import anyio
import httpx
import pytest
import requests
from aiohttp import web
from pydantic import SecretStr

from docs.examples.resource_service import make_app
from tests.support.oauth_server import OAuthServer
from tests.support.stack import ROOT, Stack, TokendProcess
from tokend.client import (
    AiohttpMiddleware,
    HttpxAuth,
    TokendAuth,
    TokenFile,
    TokenUnavailableError,
    read_token,
)
from tokend.files import describe_metadata, render_metadata, render_token
from tokend.token import AccessToken

TOKEN_A = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlLWE"
TOKEN_B = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiIn0.c2lnbmF0dXJlLWI"
# What a consumer must never pull in by importing tokend.client.
HEAVY_MODULES = (
    "aiohttp",
    "anyio",
    "httpx",
    "hvac",
    "prometheus_client",
    "pydantic",
    "pydantic_settings",
    "requests",
    "systemd",
    "watchfiles",
)


def write_file(path: Path, text: str, mtime_ns: int | None = None) -> None:
    """Replace ``path`` by rename, as tokend does."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    if mtime_ns is not None:
        os.utime(temp, ns=(mtime_ns, mtime_ns))
    temp.rename(path)


def json_token(token: str, expires_at: str) -> str:
    return json.dumps({"access_token": token, "expires_at": expires_at})


@pytest.fixture
def token_path(tmp_path: Path) -> Path:
    path = tmp_path / "orders"
    write_file(path, TOKEN_A)
    return path


# -- reading ------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        TOKEN_A,
        TOKEN_A + "\n",
        f"Bearer {TOKEN_A}",
        json_token(TOKEN_A, "2999-01-01T00:00:00Z"),
    ],
    ids=["raw", "raw-newline", "header", "json"],
)
def test_read_token_detects_each_format(tmp_path: Path, content: str) -> None:
    write_file(tmp_path / "orders", content)

    assert read_token("orders", directory=str(tmp_path)) == TOKEN_A
    assert read_token(tmp_path / "orders") == TOKEN_A
    assert read_token(str(tmp_path / "orders")) == TOKEN_A


@pytest.mark.parametrize("fmt", ["raw", "header", "json"])
def test_read_token_reads_every_format_tokend_writes(tmp_path: Path, fmt: str) -> None:
    issued = datetime.now(UTC)
    token = AccessToken(SecretStr(TOKEN_A), "Bearer", issued, 300.0, ("read",))
    metadata = describe_metadata(token, generation=1, last_error=None)
    write_file(tmp_path / "orders", render_token(token, fmt, metadata).decode())
    write_file(tmp_path / "orders.json", render_metadata(metadata).decode())

    assert read_token("orders", directory=str(tmp_path)) == TOKEN_A


def test_token_file_rereads_only_when_the_file_changed(
    token_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = TokenFile(token_path)
    loads: list[int] = []
    original_load = TokenFile._load

    def counting_load(self: TokenFile) -> object:
        loads.append(1)
        return original_load(self)

    monkeypatch.setattr(TokenFile, "_load", counting_load)

    first = [token_file.token for _ in range(5)]
    write_file(token_path, TOKEN_B)
    second = [token_file.get() for _ in range(5)]

    assert first == [TOKEN_A] * 5 and second == [TOKEN_B] * 5
    assert len(loads) == 2


def test_token_file_sees_an_in_place_rewrite_of_the_same_size(
    token_path: Path,
) -> None:
    """Another writer may truncate and rewrite: the mtime still tells."""
    token_file = TokenFile(token_path)
    assert token_file.token == TOKEN_A
    before = token_path.stat().st_mtime_ns

    token_path.write_text(TOKEN_B)
    os.utime(token_path, ns=(before + 1_000, before + 1_000))

    assert token_file.token == TOKEN_B


def test_missing_file_names_it_and_points_at_tokend_status(tmp_path: Path) -> None:
    with pytest.raises(TokenUnavailableError) as raised:
        read_token("nothing", directory=str(tmp_path))

    message = str(raised.value)
    assert str(tmp_path / "nothing") in message
    assert "tokend status" in message and "'nothing'" in message
    assert raised.value.path == tmp_path / "nothing"


@pytest.mark.parametrize("content", ["", "\n", "Bearer ", '{"token": 1}', "a b"])
def test_file_without_a_usable_token_is_unavailable(
    tmp_path: Path, content: str
) -> None:
    write_file(tmp_path / "orders", content)

    with pytest.raises(TokenUnavailableError, match="tokend status"):
        read_token(tmp_path / "orders")


def test_expired_json_token_is_unavailable(tmp_path: Path) -> None:
    write_file(tmp_path / "orders", json_token(TOKEN_A, "2001-01-01T00:00:00Z"))

    with pytest.raises(TokenUnavailableError) as raised:
        read_token(tmp_path / "orders")

    assert "expired at 2001-01-01T00:00:00Z" in str(raised.value)
    assert "tokend status" in str(raised.value)


def test_expiry_in_the_metadata_beside_a_raw_file_counts(token_path: Path) -> None:
    write_file(
        token_path.with_name("orders.json"),
        json.dumps({"expires_at": "2001-01-01T00:00:00Z"}),
        mtime_ns=token_path.stat().st_mtime_ns + 1,
    )

    with pytest.raises(TokenUnavailableError, match="expired"):
        TokenFile(token_path).get()


def test_metadata_older_than_the_token_is_ignored(token_path: Path) -> None:
    """tokend writes the metadata after the token; until then it is the old one's."""
    write_file(
        token_path.with_name("orders.json"),
        json.dumps({"expires_at": "2001-01-01T00:00:00Z"}),
        mtime_ns=token_path.stat().st_mtime_ns - 1_000_000,
    )

    assert TokenFile(token_path).token == TOKEN_A


def test_a_token_that_expires_while_cached_becomes_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_file(tmp_path / "orders", json_token(TOKEN_A, "2030-01-01T00:00:00Z"))
    token_file = TokenFile(tmp_path / "orders")
    assert token_file.token == TOKEN_A

    monkeypatch.setattr("tokend.client.time.time", lambda: 1_900_000_000.0)

    with pytest.raises(TokenUnavailableError, match="expired"):
        token_file.get()


def test_importing_the_client_pulls_in_no_daemon_dependency() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import tokend.client"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }

    assert result.returncode == 0, result.stderr
    assert "tokend.client" in imported
    heavy = {name for name in imported if name.split(".")[0] in HEAVY_MODULES}
    assert heavy == set()
    assert {name for name in imported if name.startswith("tokend")} == {
        "tokend",
        "tokend.client",
    }


def test_the_read_path_benchmark_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.read_path", "--number", "200"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert "TokenFile.token" in result.stdout and "× open+read+close" in result.stdout


def test_an_adapter_without_its_library_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['httpx'] = None\n"
        "try:\n    from tokend.client import HttpxAuth\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )

    assert "pip install 'tokend[httpx]'" in result.stdout, result.stderr


def test_refresh_without_a_daemon_returns_false_and_says_why(
    token_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = TokenFile(token_path, socket_path=token_path.parent / "none.sock")

    with caplog.at_level(logging.WARNING, logger="tokend.client"):
        assert token_file.refresh() is False

    assert "tokend unreachable" in caplog.text and "none.sock" in caplog.text
    assert TOKEN_A not in caplog.text


def test_callers_rejected_together_ask_the_daemon_once(
    token_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = TokenFile(token_path)
    asked: list[Path] = []

    def fake_daemon(self: TokenFile, socket_path: Path) -> None:
        asked.append(socket_path)
        write_file(token_path, TOKEN_B)

    monkeypatch.setattr(TokenFile, "_ask_daemon", fake_daemon)
    results: list[str | None] = []
    threads = [
        threading.Thread(target=lambda: results.append(token_file.renew(TOKEN_A)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert results == [TOKEN_B] * 8
    assert asked == [token_path.parent / "control.sock"]


# -- the adapters, against a service that rejects revoked tokens ---------------


@dataclass
class Gate:
    """A middleware answering 401 for revoked tokens before the service sees them."""

    revoked: set[str] = field(default_factory=set)
    reject_all: bool = False
    on_reject: Callable[[], None] | None = None
    seen: list[tuple[str, bytes]] = field(default_factory=list)

    @web.middleware
    async def check(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.seen.append((token, await request.read()))
        if self.reject_all or token in self.revoked:
            if self.on_reject is not None:
                self.on_reject()
            return web.json_response(
                {"error": "invalid_token"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return await handler(request)

    @property
    def tokens(self) -> list[str]:
        return [token for token, _ in self.seen]


class ServedApp:
    """An aiohttp application on 127.0.0.1, served from a thread with its own loop."""

    def __init__(self, app: web.Application) -> None:
        self.app, self.url = app, ""
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def __enter__(self) -> str:
        self._thread.start()
        assert self._ready.wait(20), "the test service did not start"
        return self.url

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            self.url = f"http://{host}:{port}"
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()


def make_echo_app(gate: Gate) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[gate.check])
    app.router.add_route("*", "/orders", echo)
    return app


Call = Callable[[str, TokenFile, bytes | None], int]


def call_with_requests(url: str, token_file: TokenFile, body: bytes | None) -> int:
    with requests.Session() as session:
        response = session.request(
            "POST" if body else "GET", url, data=body, auth=TokendAuth(token_file)
        )
        return response.status_code


def call_with_httpx(url: str, token_file: TokenFile, body: bytes | None) -> int:
    with httpx.Client(auth=HttpxAuth(token_file), timeout=40) as client:
        return client.request("POST" if body else "GET", url, content=body).status_code


def call_with_async_httpx(url: str, token_file: TokenFile, body: bytes | None) -> int:
    async def call() -> int:
        async with httpx.AsyncClient(auth=HttpxAuth(token_file), timeout=40) as client:
            response = await client.request(
                "POST" if body else "GET", url, content=body
            )
            return response.status_code

    return anyio.run(call)


def call_with_aiohttp(url: str, token_file: TokenFile, body: bytes | None) -> int:
    async def call() -> int:
        middleware = AiohttpMiddleware(token_file)
        async with (
            aiohttp.ClientSession(middlewares=(middleware,)) as session,
            session.request("POST" if body else "GET", url, data=body) as response,
        ):
            return response.status

    return anyio.run(call)


CLIENTS: dict[str, Call] = {
    "requests": call_with_requests,
    "httpx": call_with_httpx,
    "httpx-async": call_with_async_httpx,
    "aiohttp": call_with_aiohttp,
}
each_client = pytest.mark.parametrize("call", CLIENTS.values(), ids=CLIENTS.keys())


@each_client
def test_adapter_sends_the_current_token_as_bearer(
    call: Call, token_path: Path
) -> None:
    gate = Gate()
    token_file = TokenFile(token_path)
    with ServedApp(make_echo_app(gate)) as url:
        first = call(url + "/orders", token_file, None)
        write_file(token_path, TOKEN_B)
        second = call(url + "/orders", token_file, None)

    assert (first, second) == (200, 200)
    assert gate.tokens == [TOKEN_A, TOKEN_B]


@each_client
def test_adapter_retries_with_a_token_already_replaced(
    call: Call, token_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file changed since the call began: retry without asking the daemon."""

    def no_daemon(self: TokenFile, socket_path: Path) -> None:
        raise AssertionError("asked the daemon")

    monkeypatch.setattr(TokenFile, "_ask_daemon", no_daemon)
    gate = Gate(revoked={TOKEN_A}, on_reject=lambda: write_file(token_path, TOKEN_B))
    with ServedApp(make_echo_app(gate)) as url:
        status = call(url + "/orders", TokenFile(token_path), b'{"n": 1}')

    assert status == 200
    assert gate.seen == [(TOKEN_A, b'{"n": 1}'), (TOKEN_B, b'{"n": 1}')]


@each_client
def test_adapter_retries_once_only(call: Call, token_path: Path) -> None:
    flips = iter([TOKEN_B, TOKEN_A])
    gate = Gate(reject_all=True, on_reject=lambda: write_file(token_path, next(flips)))
    with ServedApp(make_echo_app(gate)) as url:
        status = call(url + "/orders", TokenFile(token_path), None)

    assert status == 401
    assert gate.tokens == [TOKEN_A, TOKEN_B]


@each_client
def test_adapter_without_a_daemon_returns_the_401(call: Call, token_path: Path) -> None:
    gate = Gate(revoked={TOKEN_A})
    token_file = TokenFile(token_path, socket_path=token_path.parent / "none.sock")
    with ServedApp(make_echo_app(gate)) as url:
        status = call(url + "/orders", token_file, None)

    assert status == 401
    assert gate.tokens == [TOKEN_A]


def test_aiohttp_middleware_keeps_the_token_from_other_origins(
    token_path: Path,
) -> None:
    gate, other = Gate(), Gate()
    with (
        ServedApp(make_echo_app(gate)) as url,
        ServedApp(make_echo_app(other)) as other_url,
    ):
        middleware = AiohttpMiddleware(token_path, origin=url + "/orders")

        async def call() -> list[int]:
            async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
                statuses = []
                for target in (other_url, url):
                    async with session.get(target + "/orders") as response:
                        statuses.append(response.status)
                return statuses

        statuses = anyio.run(call)

    assert statuses == [200, 200]
    assert other.tokens == [""] and gate.tokens == [TOKEN_A]


def test_requests_auth_never_sends_the_token_after_a_redirect_elsewhere(
    token_path: Path,
) -> None:
    """requests drops the header on a redirect to another host; no retry adds it."""
    gate, other = Gate(), Gate(reject_all=True)
    with ServedApp(make_echo_app(other)) as other_url:

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound(other_url + "/orders")

        app = web.Application(middlewares=[gate.check])
        app.router.add_get("/orders", redirect)
        with ServedApp(app) as url:
            status = call_with_requests(url + "/orders", TokenFile(token_path), None)

    assert status == 401
    assert gate.tokens == [TOKEN_A] and other.tokens == [""]


# -- against a real daemon ----------------------------------------------------


@dataclass
class Deployment:
    stack: Stack
    daemon: TokendProcess
    client_id: str

    @property
    def token_path(self) -> Path:
        return self.stack.token_path("orders")

    def token_requests(self) -> int:
        return self.stack.oauth.token_requests(self.client_id)


@pytest.fixture
def deployment(stack: Stack) -> Deployment:
    """A daemon keeping one token, ``orders``, fresh; killed after the test."""
    service = stack.add_service("orders")
    stack.write_config({"orders": stack.token_entry("orders")})
    daemon = stack.start()
    daemon.wait_for_log("ready")

    return Deployment(stack, daemon, service.client_id)


@pytest.mark.e2e
@each_client
def test_adapter_gets_a_new_token_from_the_daemon_on_401(
    call: Call, deployment: Deployment, oauth: OAuthServer
) -> None:
    old = read_token(deployment.token_path)
    audience = deployment.stack.services["orders"].audience
    gate = Gate(revoked={old})
    app = make_app(oauth.issuer, audience, "read")
    app.middlewares.append(gate.check)
    before = deployment.token_requests()

    with ServedApp(app) as url:
        status = call(url + "/orders", TokenFile(deployment.token_path), None)

    new = read_token(deployment.token_path)
    assert status == 200
    assert new != old
    assert gate.tokens == [old, new]
    assert deployment.token_requests() == before + 1


@pytest.mark.e2e
def test_refresh_asks_the_daemon_and_is_rate_limited(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = TokenFile(deployment.token_path)
    old = token_file.token
    before = deployment.token_requests()

    refreshed = token_file.refresh()
    new = token_file.token
    with caplog.at_level(logging.DEBUG, logger="tokend.client"):
        again = token_file.refresh()

    assert refreshed is True and new != old
    assert again is False and token_file.token == new
    assert deployment.token_requests() == before + 1
    assert "refreshed just now" in caplog.text


@pytest.mark.e2e
def test_adapter_returns_the_401_when_the_daemon_cannot_refresh(
    deployment: Deployment, oauth: OAuthServer, caplog: pytest.LogCaptureFixture
) -> None:
    old = read_token(deployment.token_path)
    gate = Gate(revoked={old})
    oauth.fail_next(400, count=5, error="invalid_scope")

    with ServedApp(make_echo_app(gate)) as url, caplog.at_level(logging.WARNING):
        status = call_with_httpx(
            url + "/orders", TokenFile(deployment.token_path), None
        )

    assert status == 401
    assert gate.tokens == [old]
    assert read_token(deployment.token_path) == old
    assert "could not refresh" in caplog.text and "status=502" in caplog.text
