"""A real OAuth 2.0 authorization server on loopback, for the test suite and the demo.

``tests/servers/oauth/server.mjs`` runs oidc-provider with the client_credentials
grant, resource indicators and introspection. A token request with an http(s)
``resource`` gets an RS256 JWT whose ``aud`` is that resource; one without gets an
opaque token, the only kind the introspection endpoint accepts. Clients are
registered at runtime through the server's ``/admin`` API, and the token endpoint
insists on each client's registered auth method.

Node.js comes from PATH and oidc-provider from ``tests/servers/oauth/node_modules``,
which ``make node`` installs.
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import jwt

SERVER_DIR = Path(__file__).resolve().parents[1] / "servers" / "oauth"
DEFAULT_TTL = 60
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
HTTP_TIMEOUT = 5.0

# Loopback traffic must not follow an HTTP(S)_PROXY from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class OAuthServerError(RuntimeError):
    """The OAuth test server could not be found, started or driven."""


def find_node_binary() -> str:
    """Return the path of ``node`` on PATH.

    Raises:
        OAuthServerError: node is missing, or oidc-provider is not installed.
    """
    node = shutil.which("node")
    if node is None:
        raise OAuthServerError("node not found on PATH; install Node.js 20 or later")
    if not (SERVER_DIR / "node_modules" / "oidc-provider").is_dir():
        raise OAuthServerError(
            f"oidc-provider is not installed in {SERVER_DIR / 'node_modules'}; "
            "run `make node`"
        )
    return node


def encode_basic_auth(client_id: str, client_secret: str) -> str:
    """Return an ``Authorization`` header value for client_secret_basic.

    RFC 6749 §2.3.1 form-urlencodes both parts before they are joined and base64d,
    so a ':' or '%' in either survives.
    """
    pair = (
        f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(client_secret)}"
    )
    return "Basic " + base64.b64encode(pair.encode()).decode()


class OAuthServer:
    """One oidc-provider child process on 127.0.0.1.

    The first ``start()`` picks a free port; ``restart()`` keeps it, and keeps the
    registered clients and TTL through a state file. Stats, fault injection and
    the signing key start afresh with every process.
    """

    def __init__(self, ttl: int = DEFAULT_TTL, port: int = 0) -> None:
        self.default_ttl = ttl
        self.port = port
        self.issuer = ""
        self.token_url = ""
        self.jwks_uri = ""
        self.introspection_url = ""
        self._state_dir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    def __enter__(self) -> OAuthServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server, wait for its ready line and read its discovery document.

        Raises:
            OAuthServerError: node or oidc-provider is missing, or the server
                exited or was not ready within 20 seconds; the message carries
                the server's stderr.
        """
        if self.running:
            raise OAuthServerError(f"OAuth server at {self.issuer} is already running")

        node = find_node_binary()
        if self._state_dir is None:
            self._state_dir = tempfile.TemporaryDirectory(prefix="tokend-oauth-")
        command = [
            node,
            str(SERVER_DIR / "server.mjs"),
            f"--port={self.port}",
            f"--ttl={self.default_ttl}",
            f"--state-file={Path(self._state_dir.name) / 'state.json'}",
            # Our stdin pipe closing (this process died) stops the server too.
            "--exit-with-stdin",
        ]
        # An unnamed file nobody has to drain; stop() closes it.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self._process = subprocess.Popen(
            command,
            cwd=SERVER_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        try:
            ready = self._read_ready_line()
            self.port = int(ready["port"])
            self._load_discovery(str(ready["issuer"]))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after 5 seconds. Idempotent."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()

        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def restart(self) -> None:
        """Stop and start again on the same port, with the same clients and TTL."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its state file; ``start()`` begins empty."""
        self.stop()
        if self._state_dir is not None:
            self._state_dir.cleanup()
            self._state_dir = None

    def output(self) -> str:
        """Return everything the current server process has written to stderr."""
        if self._stderr is None:
            return ""

        fd = self._stderr.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def put_client(
        self,
        client_id: str,
        client_secret: str,
        scopes: Sequence[str],
        auth_method: str = "client_secret_basic",
    ) -> None:
        """Create or replace a client; a new secret applies to the next request.

        Args:
            client_id: any printable ASCII, ':' and spaces included.
            client_secret: printable ASCII as well.
            scopes: the scopes tokens may carry; others requested are dropped.
            auth_method: ``client_secret_basic`` or ``client_secret_post``, the
                only method the token endpoint then accepts from this client.
        """
        body = {
            "client_secret": client_secret,
            "scope": " ".join(scopes),
            "token_endpoint_auth_method": auth_method,
        }
        self._call_admin("PUT", self._client_path(client_id), body)

    def delete_client(self, client_id: str) -> bool:
        """Delete a client and return whether it existed."""
        return bool(self._call_admin("DELETE", self._client_path(client_id))["deleted"])

    def token_requests(self, client_id: str | None = None) -> int:
        """Return how many token requests came in, for one client or in total.

        Every request counts, failed ones included, under the client_id it
        presented, since the last ``reset_stats()`` or start.
        """
        stats = self._call_admin("GET", "/admin/stats")
        if client_id is None:
            return int(stats["total"])
        return int(stats["token_requests"].get(client_id, 0))

    def auth_methods(self, client_id: str) -> dict[str, int]:
        """Return how often the client authenticated with each method."""
        stats = self._call_admin("GET", "/admin/stats")
        methods: dict[str, int] = stats["auth_methods"].get(client_id, {})

        return methods

    def reset_stats(self) -> None:
        self._call_admin("POST", "/admin/stats/reset")

    def set_ttl(self, seconds: int) -> None:
        """Set the lifetime in seconds of tokens issued from now on."""
        self._call_admin("PUT", "/admin/ttl", {"ttl": seconds})

    def fail_next(
        self,
        status: int,
        count: int = 1,
        error: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Make the next ``count`` token requests fail with ``status``.

        The body is ``{"error": error}``, by default ``temporarily_unavailable``
        for 5xx and ``invalid_request`` otherwise; ``retry_after`` (seconds) adds
        a Retry-After header. ``count=0`` cancels pending failures.
        """
        body: dict[str, Any] = {"status": status, "count": count}
        if error is not None:
            body["error"] = error
        if retry_after is not None:
            body["retry_after"] = retry_after
        self._call_admin("PUT", "/admin/fail", body)

    def introspect(
        self, token: str, client_id: str, client_secret: str
    ) -> dict[str, Any]:
        """Return the introspection response for an opaque token.

        oidc-provider refuses to introspect JWT access tokens (400
        ``unsupported_token_type``); verify those with ``decode_access_token``.
        """
        form = urllib.parse.urlencode({"token": token}).encode()
        headers = {"Authorization": encode_basic_auth(client_id, client_secret)}
        request = urllib.request.Request(
            self.introspection_url, data=form, headers=headers, method="POST"
        )
        return self._send(request)

    def jwks(self) -> dict[str, Any]:
        return self._get_json(self.jwks_uri)

    def decode_access_token(self, token: str, audience: str) -> dict[str, Any]:
        """Verify a JWT access token against this server's keys and return its claims.

        Raises:
            jwt.InvalidTokenError: bad signature, issuer or audience, or expired.
        """
        header = jwt.get_unverified_header(token)
        key_set = jwt.PyJWKSet.from_dict(self.jwks())
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key_set[header["kid"]],
            algorithms=["RS256"],
            audience=audience,
            issuer=self.issuer,
        )

        return claims

    def _read_ready_line(self) -> dict[str, Any]:
        process = self._process
        assert process is not None and process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if selector.select(timeout=0.1):
                    line = process.stdout.readline()
                    if line:
                        ready: dict[str, Any] = json.loads(line)
                        return ready
                if process.poll() is not None:
                    raise OAuthServerError(
                        f"OAuth server exited with {process.returncode} during "
                        f"startup; its stderr:\n{self.output()}"
                    )

        raise OAuthServerError(
            f"OAuth server did not report ready within {START_TIMEOUT:.0f} s; "
            f"its stderr:\n{self.output()}"
        )

    def _load_discovery(self, issuer: str) -> None:
        metadata = self._get_json(f"{issuer}/.well-known/openid-configuration")
        self.issuer = str(metadata["issuer"])
        self.token_url = str(metadata["token_endpoint"])
        self.jwks_uri = str(metadata["jwks_uri"])
        self.introspection_url = str(metadata["introspection_endpoint"])

    def _client_path(self, client_id: str) -> str:
        return "/admin/clients/" + urllib.parse.quote(client_id, safe="")

    def _call_admin(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if not self.running:
            raise OAuthServerError(f"OAuth server at {self.issuer} is not running")

        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.issuer}{path}",
            data=data,
            headers={"Content-Type": "application/json"},
            method=method,
        )
        return self._send(request)

    def _get_json(self, url: str) -> dict[str, Any]:
        return self._send(urllib.request.Request(url))

    def _send(self, request: urllib.request.Request) -> dict[str, Any]:
        try:
            with _OPENER.open(request, timeout=HTTP_TIMEOUT) as response:
                document: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise OAuthServerError(
                f"{request.get_method()} {request.full_url} answered "
                f"{exc.code}: {detail}"
            ) from exc

        return document
