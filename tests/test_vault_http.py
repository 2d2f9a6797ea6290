"""hvac's transport on urllib3 (tokend.vault_http) against a small local server.

OpenBao itself answers the ordinary calls in test_vault; these are the
answers it does not give on its own: a standby's redirect, a 204, a JSON
error document, a redirect loop.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import hvac
import hvac.exceptions
import pytest
import urllib3.exceptions

from tokend.http import USER_AGENT
from tokend.vault_http import PoolAdapter


class Recorder(BaseHTTPRequestHandler):
    """Answers by path; records what arrived."""

    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append((self.command, self.path, dict(self.headers), body))
        path = self.path.split("?")[0]
        if path == "/v1/standby/login":
            self._send(307, b"", {"Location": "/v1/active/login"})
        elif path == "/v1/moved":
            self._send(301, b"", {"Location": "/v1/active/login"})
        elif path == "/v1/loop":
            self._send(307, b"", {"Location": "/v1/loop"})
        elif path == "/v1/empty":
            self._send(204, b"")
        elif path == "/v1/bad":
            document = json.dumps({"errors": ["missing client token"]}).encode()
            self._send(400, document, {"Content-Type": "application/json"})
        else:
            document = json.dumps({"auth": {"client_token": "t"}, "data": {}})
            self._send(200, document.encode(), {"Content-Type": "application/json"})

    do_GET = do_POST = _answer

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def client(address: str, **options: object) -> hvac.Client:
    return hvac.Client(url=address, token="", adapter=PoolAdapter, **options)


def test_a_standby_redirect_resends_the_login_with_its_body(server: str) -> None:
    vault = client(server, namespace="team-a")
    vault.token = "vault-token"

    answer = vault.adapter.post(
        "/v1/standby/login", json={"role_id": "r"}, wrap_ttl="60s"
    )

    assert answer == {"auth": {"client_token": "t"}, "data": {}}
    (first, *_), (second_method, second_path, headers, body) = Recorder.seen
    assert (first, second_method, second_path) == ("POST", "POST", "/v1/active/login")
    assert json.loads(body) == {"role_id": "r"}
    assert headers["X-Vault-Token"] == "vault-token"
    assert headers["X-Vault-Namespace"] == "team-a"
    assert headers["X-Vault-Wrap-TTL"] == "60s"
    assert headers["X-Vault-Request"] == "true"
    assert headers["User-Agent"] == USER_AGENT
    assert headers["Content-Type"] == "application/json"


def test_answers_other_than_json_200(server: str) -> None:
    vault = client(server)

    empty = vault.adapter.get("/v1/empty")
    moved = vault.adapter.post("/v1/moved", json={"secret_id": "s"})
    with pytest.raises(hvac.exceptions.InvalidRequest) as bad:
        vault.adapter.get("/v1/bad", params={"list": "true"})
    with pytest.raises(urllib3.exceptions.ProtocolError, match="redirects"):
        vault.adapter.get("/v1/loop")

    assert empty.status_code == 204 and not empty.content
    # Only a standby's 307/308 is followed: the secret_id goes nowhere else.
    assert moved.status_code == 301
    assert [path for _, path, _, _ in Recorder.seen if "active" in path] == []
    assert bad.value.errors == ["missing client token"]
    assert ("GET", "/v1/bad?list=true") in [(m, p) for m, p, _, _ in Recorder.seen]


def test_unreachable_vault_raises_urllib3s_error_itself() -> None:
    vault = client("http://127.0.0.1:9", timeout=2)

    with pytest.raises(urllib3.exceptions.HTTPError) as caught:
        vault.adapter.get("/v1/sys/health")

    assert not isinstance(caught.value, urllib3.exceptions.MaxRetryError)
