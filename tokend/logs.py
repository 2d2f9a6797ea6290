"""Logging setup: one short line per event, ``event key=value ...``."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

from tokend import systemd
from tokend.token import AccessToken, format_time

TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class TokenLog(logging.LoggerAdapter[logging.Logger]):
    """A logger for one token: every record carries ``TOKEND_TOKEN=NAME``.

    The journal handler turns upper-case record attributes into journal
    fields, so ``journalctl TOKEND_TOKEN=orders`` shows one token's story.
    """

    def __init__(self, logger: logging.Logger, name: str) -> None:
        super().__init__(logger, {"TOKEND_TOKEN": name})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def event(
    name: str, token: AccessToken | None = None, kind: str | None = None
) -> dict[str, str]:
    """Journal fields of one lifecycle event (``TOKEND_EVENT`` and details)."""
    fields = {"TOKEND_EVENT": name}
    if token is not None:
        fields["TOKEND_EXPIRES_AT"] = format_time(token.expires_at)
        fields["TOKEND_FINGERPRINT"] = token.fingerprint
    if kind is not None:
        fields["TOKEND_ERROR_KIND"] = kind
    return fields


def setup_logging(level: str = "info", target: str = "auto") -> None:
    """Send logs to the journal under systemd, else to stderr as text."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    fallback = target == "journal" and not systemd.journal_available()
    if not fallback and (
        target == "journal" or (target == "auto" and systemd.journal_wanted())
    ):
        handler = systemd.journal_handler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(TEXT_FORMAT, "%Y-%m-%dT%H:%M:%S%z"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter would repeat what tokend already says, or worse.
    for name in ("aiohttp", "urllib3", "hvac", "watchfiles", "asyncio"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if fallback:
        logging.getLogger(__name__).warning(
            "no journal at %s; logging to stderr instead", systemd.JOURNAL_SOCKET
        )
