"""The control socket and the CLI on top of it, against a real running daemon."""

from __future__ import annotations

import json
import stat
import urllib.parse
from pathlib import Path

import aiohttp
import anyio
import pytest

from tests.support.stack import Stack, TokendProcess

pytestmark = pytest.mark.e2e


def fetch(socket: Path, route: str) -> tuple[int, str]:
    async def get() -> tuple[int, str]:
        connector = aiohttp.UnixConnector(path=str(socket))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(f"http://tokend{route}") as response,
        ):
            return response.status, await response.text()

    return anyio.run(get)


def running(stack: Stack, *names: str, bad: str | None = None) -> TokendProcess:
    tokens = {name: stack.token_entry(name) for name in names}
    if bad:
        tokens[bad] = {
            "credentials": f"{stack.prefix}/nothing",
            "audience": "https://x",
        }
    stack.write_config(tokens)
    daemon = stack.start()
    daemon.wait_for_log("ready")
    return daemon


def test_status_shows_every_token_and_exits_0_when_all_fresh(stack: Stack) -> None:
    for name in ("orders", "billing"):
        stack.add_service(name)
    running(stack, "orders", "billing")
    socket = stack.run_dir / "control.sock"

    table = stack.tokend("status")
    as_json = stack.tokend("status", "--json")

    assert table.returncode == 0, table.stderr
    assert "2/2 tokens fresh" in table.stdout
    assert "orders" in table.stdout and "billing" in table.stdout
    document = json.loads(as_json.stdout)
    assert document["tokens"]["orders"]["state"] == "fresh"
    assert document["tokens"]["orders"]["file"] == str(stack.token_path("orders"))
    assert document["vault"]["logged_in"] is True
    assert stat.S_IMODE(socket.stat().st_mode) == 0o660
    for name in ("orders", "billing"):
        assert stack.read_token(name) not in as_json.stdout
        assert stack.services[name].client_secret not in as_json.stdout


def test_status_exits_1_when_a_token_is_not_fresh(stack: Stack) -> None:
    stack.add_service("orders")
    running(stack, "orders", bad="broken")

    result = stack.tokend("status")

    assert result.returncode == 1
    line = next(
        line for line in result.stdout.splitlines() if line.startswith("broken ")
    )
    assert "expired" in line or "failing" in line
    assert "404" in line


def test_status_exits_3_when_the_daemon_is_not_running(stack: Stack) -> None:
    stack.add_service("orders")
    stack.write_config({"orders": stack.token_entry("orders")})

    result = stack.tokend("status")

    assert result.returncode == 3
    assert "cannot reach the daemon" in result.stderr
    assert "control.sock" in result.stderr


def test_refresh_gets_a_new_token_and_is_rate_limited(stack: Stack) -> None:
    service = stack.add_service("orders")
    running(stack, "orders")
    first = stack.read_token("orders")
    before = stack.oauth.token_requests(service.client_id)

    refreshed = stack.tokend("refresh", "orders")
    again = stack.tokend("refresh", "orders")
    unknown = stack.tokend("refresh", "nope")

    assert refreshed.returncode == 0, refreshed.stderr
    assert "refreshed orders" in refreshed.stdout
    assert stack.read_token("orders") != first
    assert stack.oauth.token_requests(service.client_id) == before + 1
    assert again.returncode == 1 and "just now" in again.stderr
    assert unknown.returncode == 1 and "no token 'nope'" in unknown.stderr


def test_refresh_reports_a_failure_with_exit_1(stack: Stack) -> None:
    stack.add_service("orders")
    running(stack, "orders")
    stack.oauth.fail_next(400, count=5, error="invalid_scope")

    result = stack.tokend("refresh", "orders")

    assert result.returncode == 1
    assert "invalid_scope" in result.stderr


def test_metrics_expose_expiry_freshness_and_attempts(stack: Stack) -> None:
    stack.add_service("orders")
    running(stack, "orders", bad="broken")

    code, text = fetch(stack.run_dir / "control.sock", "/metrics")

    assert code == 200
    assert 'tokend_token_fresh{token="orders"} 1.0' in text
    assert 'tokend_token_fresh{token="broken"} 0.0' in text
    assert 'tokend_token_expiry_timestamp_seconds{token="orders"}' in text
    assert 'tokend_refresh_attempts_total{outcome="ok",token="orders"} 1.0' in text
    assert (
        'tokend_refresh_attempts_total{outcome="persistent",token="broken"} 1.0' in text
    )
    assert "tokend_refresh_duration_seconds_bucket" in text
    assert 'tokend_build_info{version="' in text
    assert stack.read_token("orders") not in text


def test_the_socket_refuses_nothing_but_answers_no_secret_anywhere(
    stack: Stack,
) -> None:
    """Every route, every answer: no client secret and no access token."""
    stack.add_service("orders")
    running(stack, "orders")
    socket = stack.run_dir / "control.sock"
    token = stack.read_token("orders")
    secret = stack.services["orders"].client_secret

    answers = [fetch(socket, route)[1] for route in ("/v1/status", "/metrics")]
    answers.append(stack.tokend("refresh", "orders").stdout)
    answers.append(fetch(socket, "/v1/" + urllib.parse.quote("x/../status"))[1])

    for answer in answers:
        assert token not in answer and secret not in answer


def test_metrics_listen_serves_metrics_over_tcp_only(stack: Stack) -> None:
    import socket
    import urllib.error
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stack.add_service("orders")
    stack.write_config(
        {"orders": stack.token_entry("orders")},
        raw=f'[metrics]\nlisten = "127.0.0.1:{port}"\n',
    )
    daemon = stack.start()
    daemon.wait_for_log("ready")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open(f"http://127.0.0.1:{port}/v1/status", timeout=5)
    refused.value.close()

    assert 'tokend_token_fresh{token="orders"} 1.0' in text
    assert "tokend_vault_failures" in text
    assert refused.value.code == 404
