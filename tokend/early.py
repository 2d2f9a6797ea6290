"""Signals that arrive before the daemon's own handlers are installed."""

from __future__ import annotations

import signal
from types import FrameType

_pending: set[int] = set()


def _remember(signum: int, frame: FrameType | None) -> None:
    _pending.add(signum)


def catch_early_reload() -> None:
    """Remember a SIGHUP instead of dying of it, until the daemon listens."""
    signal.signal(signal.SIGHUP, _remember)


def reload_was_requested() -> bool:
    """True once if a SIGHUP came before the daemon's receiver was open."""
    requested = signal.SIGHUP in _pending
    _pending.discard(signal.SIGHUP)
    return requested
