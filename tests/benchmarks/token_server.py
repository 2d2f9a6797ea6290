"""A fast token endpoint in a process of its own, so its CPU is not tokend's.

``python -m tests.benchmarks.token_server LIFETIME`` serves
:class:`tests.support.fast_endpoint.TokenMint` on ``/token`` (a new token
valid ``LIFETIME`` seconds per request) and the number issued so far on
``/count``; it prints its port on the first line of stdout and stops when
stdin closes. :class:`TokenServer` starts and drives it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from types import TracebackType

from tests.benchmarks.measure import ROOT
from tests.support.fast_endpoint import TokenMint
from tests.support.quirk_server import QuirkResponse, QuirkServer, RecordedRequest


class TokenServer:
    """The token endpoint subprocess; ``count()`` asks how many it issued."""

    def __init__(self, lifetime: int) -> None:
        self.lifetime = lifetime
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> TokenServer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.benchmarks.token_server", str(self.lifetime)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def count(self) -> int:
        """How many tokens the endpoint has issued."""
        url = f"http://127.0.0.1:{self.port}/count"
        with urllib.request.urlopen(url, timeout=10) as response:
            issued: int = json.load(response)["count"]
        return issued


def serve(lifetime: int) -> None:
    mint = TokenMint(lifetime)

    def count(request: RecordedRequest) -> QuirkResponse:
        return QuirkResponse(body={"count": mint.count})

    with QuirkServer() as server:
        server.reply(mint)
        server.reply(count, path="/count")
        sys.stdout.write(f"{server.port}\n")
        sys.stdout.flush()
        sys.stdin.read()  # until the benchmark closes our stdin


if __name__ == "__main__":
    serve(int(sys.argv[1]))
