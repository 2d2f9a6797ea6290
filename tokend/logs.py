"""Logging setup: one short line per event, ``event key=value ...``."""

from __future__ import annotations

import logging
import sys

from tokend import systemd

TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def setup_logging(level: str = "info", target: str = "auto") -> None:
    """Send logs to the journal under systemd, else to stderr as text."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if target == "journal" or (target == "auto" and systemd.journal_wanted()):
        handler = systemd.journal_handler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(TEXT_FORMAT, "%Y-%m-%dT%H:%M:%S%z"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter would repeat what tokend already says, or worse.
    for name in ("aiohttp", "urllib3", "hvac", "watchfiles", "asyncio"):
        logging.getLogger(name).setLevel(logging.WARNING)
