"""Logging: journal fields per token, the journal/stderr choice, the text shape."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

import pytest

from tokend import systemd
from tokend.logs import TokenLog, event, setup_logging


@pytest.fixture
def restore_logging() -> Any:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_token_log_sends_structured_journal_fields(restore_logging: Any) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    def sender(MESSAGE: str, /, **fields: Any) -> None:  # journal.send's shape
        sent.append((MESSAGE, fields))

    logger = logging.getLogger("tokend.test.journal")
    logger.propagate = False
    logger.addHandler(systemd.journal_handler(sender))
    logger.setLevel(logging.INFO)
    log = TokenLog(logger, "orders")

    log.warning("refresh failed token=%s", "orders", extra=event("refresh_failed"))
    log.info("plain line")

    (first, fields), (_, plain) = sent
    assert first == "refresh failed token=orders"
    assert fields["TOKEND_TOKEN"] == "orders"
    assert fields["TOKEND_EVENT"] == "refresh_failed"
    assert fields["PRIORITY"] == "4"
    assert fields["SYSLOG_IDENTIFIER"] == "tokend"
    assert plain["TOKEND_TOKEN"] == "orders" and "TOKEND_EVENT" not in plain


def test_journal_is_chosen_only_when_stderr_is_the_journal_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    info = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
    assert systemd.journal_wanted()
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino + 1}")
    assert not systemd.journal_wanted()
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not systemd.journal_wanted()


def test_stderr_lines_are_one_event_per_line(restore_logging: Any) -> None:
    code = (
        "import logging; from tokend.logs import setup_logging;"
        "setup_logging('info', 'stderr');"
        "logging.getLogger('tokend.x').info('token refreshed token=%s', 'a');"
        "logging.getLogger('tokend.x').debug('hidden')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    (line,) = result.stderr.splitlines()
    assert line.endswith(" INFO token refreshed token=a")


def test_setup_logging_quiets_library_chatter(restore_logging: Any) -> None:
    setup_logging("debug", "stderr")

    assert logging.getLogger("aiohttp").level == logging.WARNING
    assert logging.getLogger().level == logging.DEBUG
