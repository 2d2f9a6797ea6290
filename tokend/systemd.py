"""sd_notify and the journal, through systemd-python.

Every function is silent and harmless when not run by systemd: without
``NOTIFY_SOCKET`` nothing is sent.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

try:
    import systemd.daemon as _daemon
    import systemd.journal as _journal
except ImportError as exc:  # pragma: no cover - the dependency is required
    raise ImportError(
        "tokend needs systemd-python: install libsystemd-dev and pkg-config, "
        "then pip install systemd-python"
    ) from exc

logger = logging.getLogger(__name__)


def notify(*fields: str) -> None:
    """Send ``KEY=VALUE`` fields to the service manager, if there is one."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    try:
        _daemon.notify("\n".join(fields))
    except OSError as exc:
        logger.debug("sd_notify failed error=%s", exc)


def notify_ready(status: str) -> None:
    notify("READY=1", f"STATUS={status}")


def notify_reloading() -> None:
    # systemd 253+ wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload).
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def notify_status(status: str) -> None:
    notify(f"STATUS={status}")


def notify_stopping() -> None:
    notify("STOPPING=1")


def watchdog_interval() -> float | None:
    """Return seconds between ``WATCHDOG=1`` pings (half the timeout), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


def journal_wanted() -> bool:
    """True when stderr is connected to the journal (``$JOURNAL_STREAM``)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        info = os.fstat(2)
    except OSError:
        return False
    return bool(inode) and f"{info.st_dev}:{info.st_ino}" == f"{device}:{inode}"


def journal_handler(sender: Any = None) -> logging.Handler:
    """A handler writing to the journal; ``sender`` replaces it in tests."""
    options: dict[str, Any] = {"SYSLOG_IDENTIFIER": "tokend"}
    if sender is not None:
        options["sender_function"] = sender
    handler: logging.Handler = _journal.JournalHandler(**options)
    return handler
