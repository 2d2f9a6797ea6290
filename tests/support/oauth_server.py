"""A real OAuth 2.0 authorization server on loopback, for the test suite and the demo.

``tests/servers/oauth/server.mjs`` runs oidc-provider with the client_credentials
grant, resource indicators and introspection. A token request with an http(s)
``resource`` gets an RS256 JWT whose ``aud`` is that resource; one without gets an
opaque token, the only kind the introspection endpoint accepts. Clients are
registered at runtime through the server's ``/admin`` API, and the token endpoint
insists on each client's registered auth method: client_secret_basic,
client_secret_post, private_key_jwt (each assertion usable once, 5 s of clock
tolerance) or tls_client_auth.

Given a certificate and key the server speaks HTTPS; given a client CA too, it
opens a second HTTPS port for mutual TLS, named in its discovery document as the
``mtls_endpoint_aliases`` token endpoint (RFC 8705 §5). That port asks for a
client certificate but leaves judging it to the token endpoint, so a missing,
expired or untrusted one is an ``invalid_client`` answer, not a failed handshake.

Node.js comes from PATH and oidc-provider from ``tests/servers/oauth/node_modules``,
which ``make node`` installs.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import selectors
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import jwt

SERVER_DIR = Path(__file__).resolve().parents[1] / "servers" / "oauth"
DEFAULT_TTL = 60
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
HTTP_TIMEOUT = 5.0


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


def build_client_assertion(
    client_id: str,
    audience: str,
    key: Any,
    algorithm: str = "ES256",
    *,
    kid: str | None = None,
    lifetime: int = 60,
    issued_at: int | None = None,
    jti: str | None = None,
    claims: Mapping[str, Any] | None = None,
) -> str:
    """Return a private_key_jwt client assertion (RFC 7523 §3) signed with ``key``.

    ``iss`` and ``sub`` are the client id, ``aud`` the audience (the issuer or
    the token endpoint URL), ``iat`` now or ``issued_at``, ``exp`` ``lifetime``
    seconds later and ``jti`` random unless given; ``claims`` adds or overrides.
    ``key`` is a PEM private key or a ``cryptography`` key object.
    """
    now = int(time.time()) if issued_at is None else issued_at
    payload: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + lifetime,
        "jti": jti or secrets.token_urlsafe(16),
        **(claims or {}),
    }
    headers = None if kid is None else {"kid": kid}

    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


class OAuthServer:
    """One oidc-provider child process on 127.0.0.1.

    The first ``start()`` picks a free port (and mTLS port); ``restart()`` keeps
    them, and keeps the registered clients and TTL through a state file. Stats,
    fault injection and the signing key start afresh with every process; the
    TLS files are read again, so a restart picks up new ones.

    Args:
        tls_cert, tls_key: PEM files; with them the server speaks HTTPS only.
        ca_file: the CA that issued ``tls_cert``, which this class and the
            tests' clients trust (nothing else); required with ``tls_cert``.
        client_ca: PEM file of the CAs client certificates must chain to; with
            it a second listener on ``mtls_port`` asks for client certificates.
    """

    def __init__(
        self,
        ttl: int = DEFAULT_TTL,
        port: int = 0,
        *,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        ca_file: Path | None = None,
        client_ca: Path | None = None,
        mtls_port: int = 0,
    ) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if tls_cert is not None and ca_file is None:
            raise ValueError("an HTTPS server needs the ca_file its clients trust")
        if client_ca is not None and tls_cert is None:
            raise ValueError("client_ca needs tls_cert and tls_key")
        self.default_ttl = ttl
        self.port = port
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.ca_file = ca_file
        self.client_ca = client_ca
        self.mtls_port = mtls_port
        self.issuer = ""
        self.token_url = ""
        self.mtls_token_url = ""
        self.jwks_uri = ""
        self.introspection_url = ""
        self._opener = self._build_opener()
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
        if self.tls_cert is not None and self.tls_key is not None:
            command += [f"--tls-cert={self.tls_cert}", f"--tls-key={self.tls_key}"]
        if self.client_ca is not None:
            command += [
                f"--client-ca={self.client_ca}",
                f"--mtls-port={self.mtls_port}",
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
        # The CA file may hold a new CA since the last start, as the server's
        # certificate files may.
        self._opener = self._build_opener()
        try:
            ready = self._read_ready_line()
            self.port = int(ready["port"])
            if self.client_ca is not None:
                self.mtls_port = int(ready["mtls_port"])
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

    def ssl_context(
        self, cert_file: Path | None = None, key_file: Path | None = None
    ) -> ssl.SSLContext:
        """Return a client TLS context trusting ``ca_file`` only.

        With ``cert_file`` and ``key_file`` it presents that client certificate,
        as a tls_client_auth client does to ``mtls_token_url``.
        """
        context = ssl.create_default_context(cafile=self.ca_file)
        if cert_file is not None:
            context.load_cert_chain(cert_file, key_file)

        return context

    def put_client(
        self,
        client_id: str,
        client_secret: str | None,
        scopes: Sequence[str],
        auth_method: str = "client_secret_basic",
        *,
        jwks: dict[str, Any] | None = None,
        tls_client_auth_subject_dn: str | None = None,
    ) -> None:
        """Create or replace a client; new credentials apply to the next request.

        Args:
            client_id: any printable ASCII, ':' and spaces included.
            client_secret: printable ASCII as well; None for private_key_jwt and
                tls_client_auth clients, which have no secret.
            scopes: the scopes tokens may carry; others requested are dropped.
            auth_method: ``client_secret_basic``, ``client_secret_post``,
                ``private_key_jwt`` or ``tls_client_auth``, the only method the
                token endpoint then accepts from this client.
            jwks: ``{"keys": [...]}`` public JWKs that private_key_jwt
                assertions must verify against; a JWK's ``kid``, if it has one,
                must match the assertion header's.
            tls_client_auth_subject_dn: for tls_client_auth, the subject DN
                (RFC 4514, e.g. ``"CN=orders-client"``) the certificate must have.

        Raises:
            OAuthServerError: oidc-provider refused the metadata (400), e.g. a
                private_key_jwt client without jwks or a JWK with private parts.
        """
        body: dict[str, Any] = {
            "client_secret": client_secret,
            "scope": " ".join(scopes),
            "token_endpoint_auth_method": auth_method,
        }
        if jwks is not None:
            body["jwks"] = jwks
        if tls_client_auth_subject_dn is not None:
            body["tls_client_auth_subject_dn"] = tls_client_auth_subject_dn
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

    def certificate_serials(self, client_id: str) -> list[str]:
        """Return the serial of each certificate the client authenticated with.

        One entry per successful tls_client_auth token request, oldest first,
        formatted as OpenBao's PKI does (lowercase hex pairs joined by ':').
        """
        stats = self._call_admin("GET", "/admin/stats")
        serials: list[str] = stats["certificates"].get(client_id, [])

        return serials

    def assertions(self, client_id: str) -> list[str]:
        """Return the client_assertion JWTs received from the client, oldest first.

        Failed and replayed ones are included, so a test can replay one.
        """
        path = "/admin/assertions/" + urllib.parse.quote(client_id, safe="")
        received: list[str] = self._call_admin("GET", path)

        return received

    def reset_stats(self) -> None:
        """Forget request counts, auth methods, assertions and certificate serials."""
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
        details: dict[str, Any] = self._send(request)

        return details

    def jwks(self) -> dict[str, Any]:
        return self._get_json(self.jwks_uri)

    def discovery(self) -> dict[str, Any]:
        """Return the server's ``/.well-known/openid-configuration`` document."""
        return self._get_json(f"{self.issuer}/.well-known/openid-configuration")

    def refusals(self) -> list[str]:
        """Return why each refused token request of this process was refused.

        Clients only hear ``invalid_client`` ("client authentication failed");
        the server logs the reason, e.g. ``invalid_client: jwt expired``.
        """
        prefix = "token request refused: "
        return [
            line.removeprefix(prefix)
            for line in self.output().splitlines()
            if line.startswith(prefix)
        ]

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
        self.issuer = issuer
        metadata = self.discovery()
        self.issuer = str(metadata["issuer"])
        self.token_url = str(metadata["token_endpoint"])
        self.jwks_uri = str(metadata["jwks_uri"])
        self.introspection_url = str(metadata["introspection_endpoint"])
        aliases = metadata.get("mtls_endpoint_aliases", {})
        self.mtls_token_url = str(aliases.get("token_endpoint", ""))

    def _build_opener(self) -> urllib.request.OpenerDirector:
        # Loopback traffic must not follow an HTTP(S)_PROXY from the environment.
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if self.ca_file is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self.ssl_context()))

        return urllib.request.build_opener(*handlers)

    def _client_path(self, client_id: str) -> str:
        return "/admin/clients/" + urllib.parse.quote(client_id, safe="")

    def _call_admin(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> Any:
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
        document: dict[str, Any] = self._send(urllib.request.Request(url))

        return document

    def _send(self, request: urllib.request.Request) -> Any:
        try:
            with self._opener.open(request, timeout=HTTP_TIMEOUT) as response:
                document = json.load(response)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise OAuthServerError(
                f"{request.get_method()} {request.full_url} answered "
                f"{exc.code}: {detail}"
            ) from exc

        return document
