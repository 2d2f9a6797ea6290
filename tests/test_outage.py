"""Outages end to end: the OAuth server or Vault goes away while tokend runs."""

from __future__ import annotations

import time

import pytest

from tests.support.stack import Stack

pytestmark = pytest.mark.e2e


def test_oauth_outage_keeps_the_token_and_recovers_within_one_backoff(
    stack: Stack,
) -> None:
    service = stack.add_service("orders")
    stack.oauth.set_ttl(20)
    stack.write_config(
        {"orders": stack.token_entry("orders")},
        # Plain backoff: no waiting within the validity left.
        refresh={"retry_initial": 1.0, "retry_max": 4.0, "retry_spread": 0.0},
    )
    daemon = stack.start()
    daemon.wait_for_log("ready")
    valid = stack.read_token("orders")
    stack.oauth.fail_next(503, count=10_000)
    before = stack.oauth.token_requests(service.client_id)

    daemon.wait_for_log("refresh failed token=orders kind=retryable", timeout=15)
    outage_started = time.monotonic()
    time.sleep(8)
    during = stack.oauth.token_requests(service.client_id) - before
    still = stack.read_token("orders")
    stack.oauth.fail_next(503, count=0)
    cleared = time.monotonic()
    daemon.wait_for_log("token refreshed token=orders", count=2, timeout=10)
    recovered_after = time.monotonic() - cleared

    assert still == valid  # the old token stays while it is valid
    # Backoff: ceilings 1, 2, 4, 4 ... s with full jitter (>= 0.1 s each); in
    # ~8 s at least 2 and, in all but absurd draws, at most ~25 tries.
    assert 2 <= during <= 40, during
    assert recovered_after <= 4.0 + 1.0, recovered_after
    assert time.monotonic() - outage_started < 20
    log = daemon.log()
    # Logged once per change of state, not once per retry.
    assert log.count("WARNING refresh failed token=orders") == 1


def test_oauth_outage_retries_within_the_validity_left_and_refreshes_in_time(
    stack: Stack,
) -> None:
    """With the default retry_spread, retries wait within the validity left,
    longer than any backoff, and the catch-up still lands before expiry."""
    stack.add_service("orders")
    stack.oauth.set_ttl(30)
    stack.write_config(
        {"orders": stack.token_entry("orders")},
        # Refreshed 1.5-4.5 s after issue: 20 s and more of validity to spread
        # over; plain backoff would retry every second at most.
        refresh={
            "min_share": 0.1,
            "max_share": 0.15,
            "retry_initial": 0.25,
            "retry_max": 1.0,
            "margin": 4.0,
        },
    )
    daemon = stack.start()
    daemon.wait_for_log("ready")
    expires = time.monotonic() + 30
    valid = stack.read_token("orders")
    stack.oauth.fail_next(503, count=10_000)

    # A repeated failure is logged at INFO only for a wait past retry_max:
    # one spread over the validity left (never with retry_spread = 0).
    spread = "INFO refresh failed token=orders kind=retryable retry_in="
    daemon.wait_for_log(spread, timeout=30)
    waited_at = time.monotonic()
    retry_in = int(daemon.log().split(spread, 1)[1].split("s", 1)[0])
    still = stack.read_token("orders")
    stack.oauth.fail_next(503, count=0)
    daemon.wait_for_log("token refreshed token=orders", count=2, timeout=30)
    refreshed_at = time.monotonic()

    assert still == valid
    assert 1 <= retry_in <= expires - 4 - waited_at + 1
    assert refreshed_at < expires
    assert stack.read_token("orders") != valid
    assert "token expired" not in daemon.log()


def reseed(stack: Stack) -> None:
    """OpenBao dev mode forgets everything on restart: set it up again."""
    bao = stack.bao
    bao.enable_approle()
    policy = stack.role_name
    bao.write_policy(
        policy,
        f'path "secret/data/{stack.prefix}/*" {{ capabilities = ["read"] }}\n'
        'path "auth/token/renew-self" { capabilities = ["update"] }\n',
    )
    stack.role_id_file.write_text(bao.create_approle(policy, [policy]))
    stack.secret_id_file.write_text(bao.new_secret_id(policy))
    for service in stack.services.values():
        bao.write_secret(
            service.kv_path,
            {"client_id": service.client_id, "client_secret": service.client_secret},
        )


def test_vault_outage_refreshes_with_credentials_held_in_memory(stack: Stack) -> None:
    stack.add_service("orders")
    stack.oauth.set_ttl(12)
    stack.write_config(
        {"orders": stack.token_entry("orders")},
        refresh={"retry_initial": 0.5, "retry_max": 2.0},
    )
    daemon = stack.start()
    daemon.wait_for_log("ready")

    stack.bao.stop()
    daemon.wait_for_log("token refreshed token=orders", count=2, timeout=15)
    assert "vault unavailable, using credentials read earlier" in daemon.log()
    assert "token refreshed token=orders" in daemon.log()

    stack.bao.restart()
    reseed(stack)
    daemon.wait_for_log("token refreshed token=orders", count=3, timeout=15)
    stack.oauth.decode_access_token(
        stack.read_token("orders"), "https://orders.example.test"
    )
    assert daemon.process is not None and daemon.process.poll() is None
