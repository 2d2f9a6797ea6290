"""Small HTTP helpers shared by the token and discovery clients.

aiohttp is imported only where a request is made (see :mod:`tokend.oauth`):
the config and a restart whose cached tokens are valid do without it.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from tokend import __version__

if TYPE_CHECKING:
    import ssl

    import aiohttp

USER_AGENT = f"tokend/{__version__}"


def client_tls_context(cafile: str | None = None) -> ssl.SSLContext:
    """A verifying client context: ``cafile`` or the system store, no key log.

    ``$SSLKEYLOGFILE`` would otherwise make every TLS session's keys land in
    a file (blocking: reads the CA file or store).
    """
    import ssl

    context = ssl.create_default_context(cafile=cafile)
    context.keylog_filename = None  # type: ignore[assignment]
    return context


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and loopback IP literals (not names like 127.x.nip.io)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def read_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """Read a whole body, or its first ``limit`` bytes if it is longer.

    ``StreamReader.read(n)`` returns what has arrived so far, so a body that
    comes in pieces must be read in a loop.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break

    return b"".join(chunks)[:limit]
