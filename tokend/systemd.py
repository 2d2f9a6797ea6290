"""sd_notify and the journal.

Notifications go out on a non-blocking datagram socket of our own, not
through libsystemd's ``sd_notify``: that call blocks when the receiver's
queue is full, and a blocked event loop would not even stop on SIGTERM.
Without ``NOTIFY_SOCKET`` nothing is sent. The journal is written through
systemd-python.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

import anyio

try:
    import systemd.journal as _journal
except ImportError as exc:  # pragma: no cover - the dependency is required
    raise ImportError(
        "tokend needs systemd-python: install libsystemd-dev and pkg-config, "
        "then pip install systemd-python"
    ) from exc

logger = logging.getLogger(__name__)

JOURNAL_SOCKET = "/run/systemd/journal/socket"


def notify(*fields: str) -> bool:
    """Send ``KEY=VALUE`` fields without waiting; False if not delivered."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return True
    if address.startswith("@"):  # abstract namespace (sd_notify(3))
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.setblocking(False)
        try:
            s.sendto("\n".join(fields).encode(), address)
        except BlockingIOError:
            return False
        except OSError as exc:
            logger.debug("sd_notify failed error=%s", exc)
            return False
    return True


async def notify_surely(*fields: str, within: float = 2.0) -> None:
    """Send a state change (READY, RELOADING, STOPPING), retrying briefly.

    A full queue means the service manager is not reading; after ``within``
    seconds the message is dropped with a warning rather than hang.
    """
    deadline = time.monotonic() + within
    while not notify(*fields):
        if time.monotonic() > deadline:
            logger.warning("service manager not reading; dropped %s", fields[0])
            return
        await anyio.sleep(0.05)


async def notify_ready(status: str) -> None:
    await notify_surely("READY=1", f"STATUS={status}")


async def notify_reloading() -> None:
    # systemd 253+ wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload).
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    await notify_surely("RELOADING=1", f"MONOTONIC_USEC={usec}")


def notify_status(status: str) -> None:
    notify(f"STATUS={status}")


async def notify_stopping() -> None:
    await notify_surely("STOPPING=1", within=0.5)


def watchdog_interval() -> float | None:
    """Return seconds between ``WATCHDOG=1`` pings (half the timeout), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        interval = int(usec) / 2_000_000
    except ValueError:
        return None
    return interval if interval > 0 else None  # 0 means disabled, as for systemd


def journal_wanted() -> bool:
    """True when stderr is connected to the journal (``$JOURNAL_STREAM``)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        info = os.fstat(2)
    except OSError:
        return False
    return bool(inode) and f"{info.st_dev}:{info.st_ino}" == f"{device}:{inode}"


def journal_available() -> bool:
    return os.path.exists(JOURNAL_SOCKET)


def journal_handler(sender: Any = None) -> logging.Handler:
    """A handler writing to the journal; ``sender`` replaces it in tests."""
    options: dict[str, Any] = {"SYSLOG_IDENTIFIER": "tokend"}
    if sender is not None:
        options["sender_function"] = sender
    handler: logging.Handler = _journal.JournalHandler(**options)
    return handler
