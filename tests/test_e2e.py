"""End to end: ``tokend`` as a subprocess against real OpenBao and oidc-provider."""

from __future__ import annotations

import json
import math
import signal
import stat
import sys
import time

import pytest

from tests.support.stack import Stack
from tokend.config import RefreshSettings

pytestmark = pytest.mark.e2e


def test_run_writes_a_verified_token_with_restrictive_mode(stack: Stack) -> None:
    stack.add_service("orders")
    stack.write_config({"orders": stack.token_entry("orders")})
    daemon = stack.start()
    daemon.wait_for_log("ready")

    path = stack.token_path("orders")
    token = path.read_text()
    claims = stack.oauth.decode_access_token(token, "https://orders.example.test")
    assert claims["client_id"] == stack.services["orders"].client_id
    assert not token.endswith("\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    metadata = json.loads((path.parent / "orders.json").read_text())
    assert metadata["generation"] == 1
    assert metadata["audience"] == "https://orders.example.test"
    assert metadata["scope"] == "read"
    assert token not in (path.parent / "orders.json").read_text()
    assert stat.S_IMODE((path.parent / "orders.json").stat().st_mode) == 0o640
    assert "token refreshed token=orders" in daemon.log()
    assert token not in daemon.log()


def test_header_and_json_formats(stack: Stack) -> None:
    stack.add_service("a")
    stack.add_service("b")
    stack.write_config(
        {
            "a": stack.token_entry("a", format="header", mode="0600"),
            "b": stack.token_entry("b", format="json"),
        }
    )
    assert stack.tokend("once").returncode == 0

    header = stack.read_token("a")
    assert header.startswith("Bearer ") and header.count(" ") == 1
    assert stat.S_IMODE(stack.token_path("a").stat().st_mode) == 0o600
    document = json.loads(stack.read_token("b"))
    assert document["token_type"] == "Bearer"
    assert document["audience"] == "https://b.example.test"
    assert document["expires_at"].endswith("Z")
    stack.oauth.decode_access_token(document["access_token"], "https://b.example.test")


def test_restart_with_valid_cache_sends_no_token_request(stack: Stack) -> None:
    service = stack.add_service("orders")
    stack.write_config({"orders": stack.token_entry("orders")})
    daemon = stack.start()
    daemon.wait_for_log("ready")
    token = stack.read_token("orders")
    code, _ = daemon.stop()
    assert code == 0
    before = stack.oauth.token_requests(service.client_id)

    again = stack.start()
    again.wait_for_log("ready")
    again.wait_for_log("cached token reused token=orders")
    time.sleep(1)  # give a wrong implementation the chance to ask anyway

    assert stack.oauth.token_requests(service.client_id) == before
    assert stack.read_token("orders") == token


def test_restart_refreshes_a_cached_token_whose_client_changed_in_vault(
    stack: Stack,
) -> None:
    """A reused token's keeper still reads its secret, after every cache is restored."""
    old = stack.add_service("orders")
    stays = stack.add_service("stays")
    stack.write_config({name: stack.token_entry(name) for name in ("orders", "stays")})
    daemon = stack.start()
    daemon.wait_for_log("ready")
    assert daemon.stop()[0] == 0
    stays_before = stack.oauth.token_requests(stays.client_id)
    new = stack.add_service("orders")  # another client under the same Vault path

    again = stack.start()
    again.wait_for_log("client_id changed, refreshing token=orders")
    again.wait_for_log("token refreshed token=orders")

    claims = stack.oauth.decode_access_token(
        stack.read_token("orders"), "https://orders.example.test"
    )
    assert claims["client_id"] == new.client_id != old.client_id
    assert stack.oauth.token_requests(stays.client_id) == stays_before
    log = again.log()
    # Vault is asked only once every cached token was taken over.
    login = log.index("vault login ok")
    assert log.index("cached token reused token=stays") < login
    assert log.index("cached token reused token=orders") < login


def test_changed_request_invalidates_the_cache(stack: Stack) -> None:
    service = stack.add_service("orders", scopes=("read", "write"))
    stack.write_config({"orders": stack.token_entry("orders")})
    assert stack.tokend("once").returncode == 0
    before = stack.oauth.token_requests(service.client_id)
    assert stack.tokend("once").returncode == 0
    assert stack.oauth.token_requests(service.client_id) == before

    stack.write_config({"orders": stack.token_entry("orders", scopes=["write"])})
    assert stack.tokend("once").returncode == 0

    assert stack.oauth.token_requests(service.client_id) == before + 1
    claims = stack.oauth.decode_access_token(
        stack.read_token("orders"), "https://orders.example.test"
    )
    assert claims["scope"] == "write"


def test_sighup_adds_removes_and_changes_tokens(stack: Stack) -> None:
    for name in ("keep", "drop", "change", "new"):
        stack.add_service(name, scopes=("read", "write"))
    stack.write_config(
        {name: stack.token_entry(name) for name in ("keep", "drop", "change")}
    )
    daemon = stack.start()
    daemon.wait_for_log("ready")
    kept_token = stack.read_token("keep")
    keep_id = stack.services["keep"].client_id
    keep_requests = stack.oauth.token_requests(keep_id)

    stack.write_config(
        {
            "keep": stack.token_entry("keep"),
            "change": stack.token_entry("change", scopes=["write"]),
            "new": stack.token_entry("new"),
        }
    )
    daemon.send(signal.SIGHUP)
    daemon.wait_for_log("reloaded added=new removed=drop changed=change")
    daemon.wait_until(lambda: stack.token_path("new").exists(), what="new token")

    assert not stack.token_path("drop").exists()
    assert not (stack.run_dir / "drop.json").exists()
    assert stack.read_token("keep") == kept_token
    assert stack.oauth.token_requests(keep_id) == keep_requests
    daemon.wait_until(
        lambda: (
            stack.oauth.decode_access_token(
                stack.read_token("change"), "https://change.example.test"
            )["scope"]
            == "write"
        ),
        what="changed token",
    )


def test_config_edit_reloads_without_a_signal(stack: Stack) -> None:
    stack.add_service("orders")
    stack.add_service("extra")
    stack.write_config({"orders": stack.token_entry("orders")})
    daemon = stack.start()
    daemon.wait_for_log("ready")

    dropin = stack.config_path.parent / "conf.d" / "10-extra.toml"
    dropin.parent.mkdir()
    dropin.write_text(
        f'[tokens.extra]\ncredentials = "{stack.services["extra"].kv_path}"\n'
        'audience = "https://extra.example.test"\nscopes = ["read"]\n'
    )
    daemon.wait_for_log("reloaded added=extra", timeout=15)
    daemon.wait_until(lambda: stack.token_path("extra").exists(), what="extra file")

    stack.write_config({"orders": stack.token_entry("orders", mode="0600")})
    daemon.wait_for_log("reloaded added=- removed=- changed=orders", timeout=15)
    daemon.wait_until(
        lambda: stat.S_IMODE(stack.token_path("orders").stat().st_mode) == 0o600,
        what="new mode",
    )
    assert daemon.log().count("SIGHUP") == 0


def test_invalid_config_on_sighup_keeps_the_old_one(stack: Stack) -> None:
    stack.add_service("orders")
    stack.write_config({"orders": stack.token_entry("orders")})
    daemon = stack.start()
    daemon.wait_for_log("ready")
    token = stack.read_token("orders")

    stack.config_path.write_text(stack.config_path.read_text() + "\n[tokens.x\n")
    daemon.send(signal.SIGHUP)
    daemon.wait_for_log("reload rejected, keeping the running config")

    assert f"{stack.config_path}: invalid TOML" in daemon.log()
    assert stack.read_token("orders") == token
    assert daemon.process is not None and daemon.process.poll() is None


def test_sigterm_stops_quickly_and_leaves_files(stack: Stack) -> None:
    for name in ("a", "b", "c"):
        stack.add_service(name)
    stack.write_config({name: stack.token_entry(name) for name in ("a", "b", "c")})
    daemon = stack.start()
    daemon.wait_for_log("ready")

    code, seconds = daemon.stop(signal.SIGTERM)

    assert code == 0
    assert seconds < 2.0
    assert all(stack.token_path(name).exists() for name in ("a", "b", "c"))
    assert stack.temp_files() == []


def test_second_daemon_on_the_same_directory_is_refused(stack: Stack) -> None:
    stack.add_service("orders")
    stack.write_config({"orders": stack.token_entry("orders")})
    first = stack.start()
    first.wait_for_log("ready")

    result = stack.tokend("once")

    assert result.returncode == 1
    assert f"another tokend (pid {first.pid})" in result.stderr


def test_once_names_the_token_that_failed(stack: Stack) -> None:
    stack.add_service("good")
    stack.write_config(
        {
            "good": stack.token_entry("good"),
            "bad": {"credentials": f"{stack.prefix}/missing", "audience": "https://x"},
        }
    )

    result = stack.tokend("once")

    assert result.returncode == 1
    assert stack.token_path("good").exists()
    assert not stack.token_path("bad").exists()
    assert "failed tokens=bad" in result.stderr
    assert f"secret/data/{stack.prefix}/missing" in result.stderr


def test_check_reports_problems_with_exit_2(stack: Stack) -> None:
    stack.write_config(
        {"orders": {"credentials": "x", "audience": "https://x", "mode": "0777"}}
    )

    result = stack.tokend("check")

    assert result.returncode == 2
    assert f"{stack.config_path}: tokens.orders.mode:" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_online_requests_without_writing(stack: Stack) -> None:
    service = stack.add_service("orders")
    stack.write_config({"orders": stack.token_entry("orders")})
    before = stack.oauth.token_requests(service.client_id)

    result = stack.tokend("check", "--online")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok     orders" in result.stdout
    assert stack.oauth.token_requests(service.client_id) == before + 1
    assert not stack.token_path("orders").exists()

    stack.rotate_secret("orders", in_vault=False)
    failed = stack.tokend("check", "--online")
    assert failed.returncode == 1
    assert "FAILED orders" in failed.stdout and "invalid_client" in failed.stdout


def test_invalid_client_recovers_once_vault_has_the_new_secret(stack: Stack) -> None:
    service = stack.add_service("orders")
    stack.oauth.set_ttl(12)
    stack.write_config(
        {"orders": stack.token_entry("orders")},
        refresh={"retry_slow": 1.0},
    )
    daemon = stack.start()
    daemon.wait_for_log("ready")
    first = stack.read_token("orders")

    new_secret = stack.rotate_secret("orders", in_vault=False)
    daemon.wait_for_log("invalid_client, re-reading credentials", timeout=20)
    daemon.wait_for_log("refresh failed token=orders kind=credentials")
    assert stack.read_token("orders") == first  # the valid token stays

    stack.bao.write_secret(
        service.kv_path, {"client_id": service.client_id, "client_secret": new_secret}
    )
    daemon.wait_for_log("token refreshed token=orders", count=2, timeout=10)

    assert stack.read_token("orders") != first
    log = daemon.log()
    assert log.count("ERROR refresh failed token=orders kind=credentials") == 1
    assert service.client_secret not in log and new_secret not in log


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_keeps_a_60s_token_fresh_for_5_minutes(stack: Stack) -> None:
    """Every read for 5 minutes sees a token the server's JWKS accepts."""
    service = stack.add_service("orders")
    stack.oauth.set_ttl(60)
    stack.write_config({"orders": stack.token_entry("orders")})
    daemon = stack.start()
    daemon.wait_for_log("ready")
    before = stack.oauth.token_requests(service.client_id) - 1
    duration, reads, tokens = 300.0, 0, set()
    started = time.monotonic()
    while time.monotonic() - started < duration:
        token = stack.read_token("orders")
        # decode_access_token checks signature, issuer, audience and expiry.
        stack.oauth.decode_access_token(token, "https://orders.example.test")
        tokens.add(token)
        reads += 1
        time.sleep(0.25)

    requests = stack.oauth.token_requests(service.client_id) - before
    # Refreshes come after min_share-max_share of the 60 s lifetime (30-36 s
    # by default; the 10-s margin does not cut that), the first one from 5 %
    # (3 s) on. The count includes the token that was there at the start.
    policy = RefreshSettings()
    shortest, longest = policy.min_share * 60, policy.max_share * 60
    fewest = math.floor(duration / longest) + 1
    most = math.ceil(duration / shortest) + 1
    sys.stdout.write(
        f"\n5-minute run: {reads} reads, all verified; {len(tokens)} tokens; "
        f"{requests} requests (schedule allows {fewest}-{most})\n"
    )
    assert fewest <= requests <= most
    assert len(tokens) == requests
    assert reads > 1000
