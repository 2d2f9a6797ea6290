"""A token endpoint that mints a fresh, self-checking token per request.

:class:`TokenMint` is a ``Responder`` for
:class:`tests.support.quirk_server.QuirkServer`: every request gets a new
token ``T<seq>-<padding>-<seq>E`` of exactly :data:`TOKEN_LENGTH` characters,
the padding letter also derived from ``seq``. Any partial, empty or mixed
content fails :func:`token_sequence`, so a reader needs no shared state to
tell a torn file from a whole one; the mint also remembers every token it
issued, for the test to check what readers saw against.

Run as ``python -m tests.support.fast_endpoint SECONDS DIRECTORY NAME...`` it
is a reader: it opens, reads and closes each token file and its ``NAME.json``
in a tight loop for SECONDS, then prints one JSON line of counts.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.quirk_server import QuirkResponse, RecordedRequest, token_response

TOKEN_LENGTH = 800
SEQ_DIGITS = 9


def make_token(seq: int) -> str:
    head, tail = f"T{seq:0{SEQ_DIGITS}d}-", f"-{seq:0{SEQ_DIGITS}d}E"
    letter = chr(ord("a") + seq % 26)
    return head + letter * (TOKEN_LENGTH - len(head) - len(tail)) + tail


def token_sequence(data: bytes | None) -> int | None:
    """Return the sequence number of a whole minted token, else None."""
    if data is None or len(data) != TOKEN_LENGTH:
        return None
    try:
        seq = int(data[1 : 1 + SEQ_DIGITS])
    except ValueError:
        return None
    return seq if data == make_token(seq).encode() else None


class TokenMint:
    """Responder issuing a new unique token per request; thread-safe."""

    def __init__(self, lifetime: int) -> None:
        self.lifetime = lifetime
        self._lock = threading.Lock()
        self._lifetimes: dict[int, int] = {}

    def __call__(self, request: RecordedRequest) -> QuirkResponse:
        with self._lock:
            seq = len(self._lifetimes) + 1
            lifetime = self.lifetime
            self._lifetimes[seq] = lifetime
        return token_response(access_token=make_token(seq), expires_in=lifetime)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._lifetimes)

    def lifetime_of(self, data: bytes | None) -> int | None:
        """The lifetime the mint gave this token, or None if it never issued it."""
        seq = token_sequence(data)
        with self._lock:
            return None if seq is None else self._lifetimes.get(seq)

    def issued(self, data: bytes | None) -> bool:
        return self.lifetime_of(data) is not None


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except FileNotFoundError:
        return None


def read_loop(seconds: float, directory: Path, names: list[str]) -> dict[str, Any]:
    """Read every token file and its metadata until ``seconds`` have passed."""
    files = [(str(directory / n), str(directory / f"{n}.json")) for n in names]
    reads = bad = metadata_reads = metadata_bad = 0
    seen: set[int] = set()
    examples: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for token_path, metadata_path in files:
            data = _read(token_path)
            reads += 1
            seq = token_sequence(data)
            if seq is None:
                bad += 1
                if len(examples) < 5:
                    shown = None if data is None else data[:40] + b"..." + data[-20:]
                    size = None if data is None else len(data)
                    examples.append(f"{token_path}: {size} bytes {shown!r}")
            else:
                seen.add(seq)
            metadata = _read(metadata_path)
            metadata_reads += 1
            try:
                document = json.loads(metadata) if metadata is not None else None
                if not isinstance(document, dict) or "generation" not in document:
                    raise ValueError("not a metadata document")
            except ValueError:
                metadata_bad += 1
                if len(examples) < 5:
                    examples.append(f"{metadata_path}: {metadata!r:.80}")
    return {
        "reads": reads,
        "bad": bad,
        "metadata_reads": metadata_reads,
        "metadata_bad": metadata_bad,
        "seen": sorted(seen),
        "examples": examples,
    }


def main(argv: list[str]) -> int:
    seconds, directory, *names = argv
    result = read_loop(float(seconds), Path(directory), names)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
