"""Reload end to end: rejected configs, signal bursts, early signals, removals.

``tokend run`` is a subprocess against real OpenBao and oidc-provider servers,
as in :mod:`tests.test_e2e`. The file watcher reloads too, so these tests
count outcomes (``reloaded``, ``reload rejected``) rather than signals.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import time
from collections.abc import Callable

import pytest

from tests.support.oauth_server import OAuthServer
from tests.support.stack import Stack, TokendProcess

pytestmark = pytest.mark.e2e

REJECTED = "reload rejected, keeping the running config: "
# Refresh after 10-15% of a 12 s lifetime: a refresh every ~1.5 s.
QUICK = {"min_share": 0.1, "max_share": 0.15}


def reloads(daemon: TokendProcess) -> int:
    return daemon.log().count(" reloaded added=")


def refreshes(daemon: TokendProcess, name: str) -> int:
    return daemon.log().count(f"token refreshed token={name} ")


def rejections(daemon: TokendProcess) -> list[str]:
    return [line for line in daemon.log().splitlines() if REJECTED in line]


def alive(daemon: TokendProcess) -> bool:
    return daemon.process is not None and daemon.process.poll() is None


def catches_sighup(pid: int) -> bool:
    """True once the process has a handler for SIGHUP (``SigCgt`` bit 1)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))
    except FileNotFoundError:
        pass
    return False


def write_syntax_error(stack: Stack) -> list[str]:
    stack.config_path.write_text(stack.config_path.read_text() + "\n[tokens.x\n")
    return [f"{stack.config_path}: invalid TOML"]


def write_unknown_key(stack: Stack) -> list[str]:
    entry = stack.token_entry("orders", colour="blue")
    stack.write_config({"orders": entry}, refresh=QUICK)
    return [f"{stack.config_path}: tokens.orders.colour: unknown key"]


def write_bad_mode(stack: Stack) -> list[str]:
    entry = stack.token_entry("orders", mode="0777")
    stack.write_config({"orders": entry}, refresh=QUICK)
    return [f"{stack.config_path}: tokens.orders.mode: "]


def write_duplicate_token(stack: Stack) -> list[str]:
    """Two drop-ins define ``extra``; both appear at once (a directory rename)."""
    staging = stack.root / "staging"
    staging.mkdir()
    entry = f'[tokens.extra]\ncredentials = "{stack.services["extra"].kv_path}"\n'
    (staging / "10-a.toml").write_text(entry)
    (staging / "20-b.toml").write_text(entry)
    dropins = stack.config_path.parent / "conf.d"
    staging.rename(dropins)
    return [
        f"{dropins / '20-b.toml'}: tokens.extra: token 'extra' is already "
        f"defined in {dropins / '10-a.toml'}"
    ]


def fix_config(stack: Stack) -> None:
    """Write a valid config that adds ``extra``, so applying it shows."""
    dropins = stack.config_path.parent / "conf.d"
    if dropins.exists():
        shutil.rmtree(dropins)
    stack.write_config(
        {"orders": stack.token_entry("orders"), "extra": stack.token_entry("extra")},
        refresh=QUICK,
    )


@pytest.mark.parametrize(
    "break_config",
    [write_syntax_error, write_unknown_key, write_bad_mode, write_duplicate_token],
    ids=["syntax", "unknown-key", "bad-mode", "duplicate-token"],
)
def test_invalid_config_on_sighup_keeps_running_then_the_fix_applies(
    stack: Stack, oauth: OAuthServer, break_config: Callable[[Stack], list[str]]
) -> None:
    stack.add_service("orders")
    stack.add_service("extra")
    oauth.set_ttl(12)
    stack.write_config({"orders": stack.token_entry("orders")}, refresh=QUICK)
    daemon = stack.start()
    daemon.wait_for_log("ready")

    expected = break_config(stack)
    daemon.send(signal.SIGHUP)
    daemon.wait_until(lambda: len(rejections(daemon)) >= 1, what=REJECTED)
    before = refreshes(daemon, "orders")
    daemon.wait_until(
        lambda: refreshes(daemon, "orders") >= before + 2,
        timeout=15,
        what="refreshes under the old config",
    )

    log = daemon.log()
    for fragment in expected:
        assert any(fragment in line for line in rejections(daemon)), (
            f"{fragment!r} not in {rejections(daemon)}"
        )
    assert reloads(daemon) == 0
    assert alive(daemon)
    token = stack.read_token("orders")
    stack.oauth.decode_access_token(token, "https://orders.example.test")
    assert not stack.token_path("extra").exists()
    assert "Traceback" not in log

    fix_config(stack)
    daemon.send(signal.SIGHUP)
    daemon.wait_for_log("reloaded added=extra removed=- changed=-")
    daemon.wait_until(lambda: stack.token_path("extra").exists(), what="extra file")
    stack.oauth.decode_access_token(
        stack.read_token("extra"), "https://extra.example.test"
    )


def test_a_burst_of_sighups_yields_at_most_two_reloads(stack: Stack) -> None:
    stack.add_service("orders")
    stack.add_service("extra")
    stack.write_config({"orders": stack.token_entry("orders")})
    daemon = stack.start()
    daemon.wait_for_log("ready")

    stack.write_config(
        {"orders": stack.token_entry("orders"), "extra": stack.token_entry("extra")}
    )
    started = time.monotonic()
    for _ in range(20):
        daemon.send(signal.SIGHUP)
        time.sleep(0.005)
    sent_in = time.monotonic() - started
    daemon.wait_for_log("reloaded added=extra")
    time.sleep(2)  # the watcher's debounce and any late reload

    assert sent_in < 0.2
    lines = [line for line in daemon.log().splitlines() if " reloaded added=" in line]
    assert 1 <= len(lines) <= 2, lines
    assert all(
        "added=extra" in line or "added=- removed=- changed=-" in line for line in lines
    )
    assert daemon.log().count("SIGHUP received") == 20
    assert stack.token_path("extra").exists()
    assert alive(daemon)


def test_sighup_once_handled_during_startup_reloads_after_ready(stack: Stack) -> None:
    """A SIGHUP between claiming the signal and ``ready`` is not lost."""
    stack.add_service("orders")
    stack.add_service("extra")
    stack.write_config({"orders": stack.token_entry("orders")})
    daemon = stack.start()
    daemon.wait_until(lambda: catches_sighup(daemon.pid), what="SIGHUP handler")
    stack.write_config(
        {"orders": stack.token_entry("orders"), "extra": stack.token_entry("extra")}
    )
    daemon.send(signal.SIGHUP)
    ready_before = "ready" in daemon.log()

    daemon.wait_for_log("ready")
    daemon.wait_until(lambda: stack.token_path("extra").exists(), what="extra file")

    assert not ready_before, "the signal came too late to test startup"
    assert "SIGHUP received" in daemon.log()
    assert alive(daemon)
    stack.oauth.decode_access_token(
        stack.read_token("orders"), "https://orders.example.test"
    )


def test_sighup_right_after_spawn_does_not_kill_the_daemon(stack: Stack) -> None:
    """``kill -HUP`` as the daemon starts (before ``ready``) must not stop it."""
    stack.add_service("orders")
    stack.write_config({"orders": stack.token_entry("orders")})
    daemon = stack.start()
    time.sleep(0.2)  # the interpreter is up; tokend's imports are not done
    daemon.send(signal.SIGHUP)

    daemon.wait_for_log("ready")

    assert alive(daemon)
    assert stack.token_path("orders").exists()


def test_removed_token_loses_its_files_while_a_reader_holds_one(stack: Stack) -> None:
    stack.add_service("orders")
    stack.add_service("drop")
    stack.write_config(
        {"orders": stack.token_entry("orders"), "drop": stack.token_entry("drop")}
    )
    daemon = stack.start()
    daemon.wait_for_log("ready")
    dropped = stack.read_token("drop")
    kept = stack.read_token("orders")
    state = stack.run_dir / ".state"
    assert any("drop" in name for name in os.listdir(state))

    with stack.token_path("drop").open() as reader:
        stack.write_config({"orders": stack.token_entry("orders")})
        daemon.send(signal.SIGHUP)
        daemon.wait_for_log("reloaded added=- removed=drop changed=-")

        assert reader.read() == dropped  # an open reader keeps what it opened
    assert not stack.token_path("drop").exists()
    assert not (stack.run_dir / "drop.json").exists()
    assert not any("drop" in name for name in os.listdir(state))
    assert stack.read_token("orders") == kept
    assert stack.temp_files() == []


def test_changing_only_the_mode_keeps_the_token_and_changes_the_mode(
    stack: Stack,
) -> None:
    service = stack.add_service("orders")
    stack.write_config({"orders": stack.token_entry("orders")})
    daemon = stack.start()
    daemon.wait_for_log("ready")
    token = stack.read_token("orders")
    metadata = json.loads((stack.run_dir / "orders.json").read_text())
    requests = stack.oauth.token_requests(service.client_id)
    assert stat.S_IMODE(stack.token_path("orders").stat().st_mode) == 0o640

    stack.write_config({"orders": stack.token_entry("orders", mode="0600")})
    daemon.send(signal.SIGHUP)
    daemon.wait_for_log("reloaded added=- removed=- changed=orders")
    daemon.wait_until(
        lambda: stat.S_IMODE(stack.token_path("orders").stat().st_mode) == 0o600,
        what="mode 0600",
    )
    time.sleep(1)  # give a wrong implementation the chance to ask anyway

    assert stack.read_token("orders") == token
    assert stack.oauth.token_requests(service.client_id) == requests
    assert stat.S_IMODE((stack.run_dir / "orders.json").stat().st_mode) == 0o600
    after = json.loads((stack.run_dir / "orders.json").read_text())
    assert after["expires_at"] == metadata["expires_at"]
    assert after["generation"] == metadata["generation"]
    assert alive(daemon)
