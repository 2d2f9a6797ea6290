"""One token's life: refresh, failure, expiry, clock jumps, and no leaked secret.

The keeper runs in-process against the quirk token endpoint (real HTTP on
loopback) with a credential source that counts its reads.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import SecretStr

from tests.support.quirk_server import (
    QuirkResponse,
    QuirkServer,
    RecordedRequest,
    error_response,
    token_response,
)
from tokend import schedule
from tokend.config import RefreshSettings, Settings, TokenSettings
from tokend.config import VaultSettings as VaultConfig
from tokend.lifecycle import Flag, TokenKeeper
from tokend.oauth import TokenEndpoint
from tokend.resolve import resolve_tokens
from tokend.state import StateStore
from tokend.token import ClientCredentials
from tokend.vault import VaultSource

pytestmark = pytest.mark.anyio

SECRET = "s3cr3t-" + secrets.token_hex(8)


class CountingVault(VaultSource):
    """Serves fixed credentials and counts how often they were read."""

    def __init__(self, secret: str = SECRET) -> None:
        super().__init__(VaultConfig(address="http://127.0.0.1:9", auth="token"))
        self.secret = secret
        self.reads = 0
        self.fresh_reads = 0

    async def read_credentials(
        self, path: str, *, fresh: bool = False, secret: bool = True
    ) -> ClientCredentials:
        self.reads += 1
        self.fresh_reads += fresh
        return ClientCredentials("svc-client", SecretStr(self.secret))


@dataclass
class OffsetClock:
    """The system clocks plus offsets a test moves (a jump, a suspend)."""

    boot_offset: float = 0.0
    wall_offset: float = 0.0
    real: schedule.SystemClock = field(default_factory=schedule.SystemClock)

    def boottime(self) -> float:
        return self.real.boottime() + self.boot_offset

    def wall(self) -> float:
        return self.real.wall() + self.wall_offset


@pytest.fixture
async def server() -> AsyncIterator[QuirkServer]:
    async with QuirkServer() as quirk:
        yield quirk


@dataclass
class Harness:
    keeper: TokenKeeper
    endpoint: TokenEndpoint
    vault: CountingVault
    clock: OffsetClock
    path: Path


def make_keeper(
    server: QuirkServer,
    tmp_path: Path,
    policy: RefreshSettings | None = None,
    **token: Any,
) -> Harness:
    settings = Settings(
        vault={"address": "http://127.0.0.1:9", "auth": "token"},
        oauth={"token_url": server.token_url},
        files={"directory": tmp_path},
        tokens={
            "orders": TokenSettings(
                credentials="tokend/orders", audience="https://orders", **token
            )
        },
    )
    tokens, problems = resolve_tokens(settings)
    assert problems == []
    config = tokens["orders"]
    endpoint = TokenEndpoint(server.token_url, timeout=2)
    vault = CountingVault()
    clock = OffsetClock()
    store = StateStore(tmp_path / ".state")
    store.prepare()
    keeper = TokenKeeper(
        config,
        endpoint,
        vault,
        store,
        policy or RefreshSettings(retry_initial=0.2, retry_max=1, retry_slow=2),
        clock=clock,
    )
    return Harness(keeper, endpoint, vault, clock, config.path)


async def wait_for(predicate: Any, within: float = 10) -> None:
    with anyio.fail_after(within):
        # Polling observable state (files, status) is what these tests do.
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def test_failures_keep_the_valid_token_and_back_off(
    server: QuirkServer, tmp_path: Path
) -> None:
    server.enqueue(token_response(access_token="first-token", expires_in=30))
    server.reply(
        QuirkResponse(status=503, body="<h1>down</h1>", content_type="text/html")
    )
    # Plain backoff: no waiting within the validity left (retry_spread = 0).
    policy = RefreshSettings(retry_initial=0.2, retry_max=1, retry_spread=0)
    harness = make_keeper(server, tmp_path, policy)
    keeper = harness.keeper
    async with anyio.create_task_group() as group:
        group.start_soon(keeper.run)
        await wait_for(lambda: harness.path.exists())
        keeper.refresh_now()
        await anyio.sleep(4)
        group.cancel_scope.cancel()
    await harness.endpoint.aclose()

    assert harness.path.read_text() == "first-token"
    assert keeper.status.state == "failing"
    assert keeper.status.last_error_kind == "retryable"
    assert "503 text/html" in (keeper.status.last_error or "")
    # 1 success, then backoff 0.2 doubling to 1 s (full jitter) over ~4 s.
    failures = len(server.requests()) - 1
    assert 3 <= failures <= 40
    metadata = json.loads(harness.path.with_name("orders.json").read_text())
    assert "503" in metadata["last_error"]
    assert metadata["generation"] == 1


async def test_retry_after_is_honoured(server: QuirkServer, tmp_path: Path) -> None:
    moments: list[float] = []

    def timed(answer: QuirkResponse) -> Any:
        def respond(request: RecordedRequest) -> QuirkResponse:
            moments.append(time.monotonic())
            return answer

        return respond

    server.enqueue(timed(error_response(429, "slow_down", **{"Retry-After": "2"})))
    server.reply(timed(token_response(access_token="after-wait")))
    harness = make_keeper(server, tmp_path, RefreshSettings(retry_max=5))
    async with anyio.create_task_group() as group:
        group.start_soon(harness.keeper.run)
        await wait_for(lambda: harness.path.exists())
        group.cancel_scope.cancel()
    await harness.endpoint.aclose()

    assert len(moments) == 2
    assert moments[1] - moments[0] >= 1.9


async def test_expired_token_file_is_removed(
    server: QuirkServer, tmp_path: Path
) -> None:
    server.enqueue(token_response(access_token="short-lived", expires_in=11))
    server.reply(error_response(400, "invalid_scope", "scope x is unknown"))
    harness = make_keeper(server, tmp_path)
    async with anyio.create_task_group() as group:
        group.start_soon(harness.keeper.run)
        await wait_for(lambda: harness.path.exists())
        harness.clock.boot_offset += 12  # as if 12 s passed
        harness.keeper.refresh_now()
        await wait_for(lambda: not harness.path.exists())
        # The file goes before the refresh that fails: wait for its outcome.
        await wait_for(lambda: harness.keeper.status.failures == 1)
        group.cancel_scope.cancel()
    await harness.endpoint.aclose()

    assert harness.keeper.status.state == "expired"
    assert "invalid_scope: scope x is unknown" in (
        harness.keeper.status.last_error or ""
    )
    assert not harness.path.with_name("orders.json").exists()


async def test_on_expiry_keep_leaves_the_file(
    server: QuirkServer, tmp_path: Path
) -> None:
    server.enqueue(token_response(access_token="kept", expires_in=11))
    server.reply(error_response(400, "invalid_target"))
    harness = make_keeper(server, tmp_path, on_expiry="keep")
    async with anyio.create_task_group() as group:
        group.start_soon(harness.keeper.run)
        await wait_for(lambda: harness.path.exists())
        harness.clock.boot_offset += 12
        harness.keeper.refresh_now()
        await wait_for(lambda: harness.keeper.status.state == "expired")
        group.cancel_scope.cancel()
    await harness.endpoint.aclose()

    assert harness.path.read_text() == "kept"


@pytest.mark.parametrize("clock_field", ["wall_offset", "boot_offset"])
async def test_clock_jump_or_resume_refreshes_quickly(
    server: QuirkServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    clock_field: str,
) -> None:
    """A wall-clock jump or a suspend past the refresh time refreshes at once."""
    monkeypatch.setattr(schedule, "WAKE_SLICE", 0.2)
    server.reply(token_response(expires_in=3600))
    harness = make_keeper(server, tmp_path)
    async with anyio.create_task_group() as group:
        group.start_soon(harness.keeper.run)
        await wait_for(lambda: harness.keeper.status.generation == 1)
        setattr(harness.clock, clock_field, 3000.0)  # past 60 % of 3600 s
        started = time.monotonic()
        await wait_for(lambda: harness.keeper.status.generation == 2)
        group.cancel_scope.cancel()
    await harness.endpoint.aclose()

    assert time.monotonic() - started < 2
    assert len(server.requests()) == 2


async def test_invalid_client_rereads_credentials_once(
    server: QuirkServer, tmp_path: Path
) -> None:
    server.enqueue(error_response(401, "invalid_client"))
    server.reply(token_response(access_token="after-rotation"))
    harness = make_keeper(server, tmp_path)
    async with anyio.create_task_group() as group:
        group.start_soon(harness.keeper.run)
        await wait_for(lambda: harness.path.exists())
        group.cancel_scope.cancel()
    await harness.endpoint.aclose()

    assert harness.vault.fresh_reads == 1
    assert len(server.requests()) == 2
    assert harness.path.read_text() == "after-rotation"


def echo_everything(request: RecordedRequest) -> QuirkResponse:
    """An error page that echoes the request, as badly built servers do."""
    echoed = json.dumps(
        {"headers": dict(request.headers), "body": request.body.decode()}
    )
    return QuirkResponse(status=500, body=echoed, content_type="text/plain")


async def test_no_secret_or_token_reaches_any_log_record(
    server: QuirkServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Failing refreshes of every kind never log the secret or a token."""
    caplog.set_level(logging.DEBUG)
    token_value = "tok-" + secrets.token_hex(16)
    server.enqueue(
        token_response(access_token=token_value, expires_in=30),
        echo_everything,
        error_response(400, "invalid_request", f"bad secret {SECRET}"),
        error_response(401, "invalid_client", f"client secret {SECRET} wrong"),
        error_response(401, "invalid_client"),
        token_response(access_token="x y z"),
        token_response(token_type="DPoP"),
    )
    server.reply(echo_everything)
    harness = make_keeper(
        server,
        tmp_path,
        RefreshSettings(
            retry_initial=0.1, retry_max=0.2, retry_slow=0.2, retry_spread=0
        ),
    )
    async with anyio.create_task_group() as group:
        group.start_soon(harness.keeper.run)
        await wait_for(lambda: harness.path.exists())
        harness.keeper.refresh_now()
        await wait_for(lambda: len(server.requests()) >= 10)
        group.cancel_scope.cancel()
    await harness.endpoint.aclose()

    texts = []
    for record in caplog.records:
        texts.append(record.getMessage())
        texts.append(repr(record.args))
        if record.exc_info:
            texts.append(logging.Formatter().formatException(record.exc_info))
    texts.append(repr(harness.keeper.status.as_dict()))
    joined = "\n".join(texts)
    assert "refresh failed" in joined
    assert SECRET not in joined
    assert token_value not in joined
    assert harness.keeper.status.fingerprint is not None


async def test_recheck_after_a_jump_refreshes_a_long_sleeping_keeper(
    server: QuirkServer, tmp_path: Path
) -> None:
    """With a long wake slice (the daemon's), recheck() makes a jump count at once."""
    server.reply(token_response(expires_in=3600))
    harness = make_keeper(server, tmp_path)
    harness.keeper.wake_slice = 300.0
    async with anyio.create_task_group() as group:
        group.start_soon(harness.keeper.run)
        await wait_for(lambda: harness.keeper.status.generation == 1)
        harness.clock.wall_offset = 3000.0
        await anyio.sleep(0.5)
        assert harness.keeper.status.generation == 1  # asleep, nobody told it
        started = time.monotonic()
        harness.keeper.recheck()
        await wait_for(lambda: harness.keeper.status.generation == 2)
        group.cancel_scope.cancel()
    await harness.endpoint.aclose()

    assert time.monotonic() - started < 2
    assert harness.keeper.stalled_for() < 5


class LowRandom(random.Random):
    """Every draw at the low end of its range: the earliest refresh, no jitter."""

    def uniform(self, a: float, b: float) -> float:
        return a


class HighRandom(random.Random):
    """Every draw at the high end of its range: the longest wait."""

    def uniform(self, a: float, b: float) -> float:
        return b


def jump(harness: Harness, seconds: float) -> None:
    """Move both clocks on, as a long sleep would, and make the keeper look."""
    harness.clock.boot_offset += seconds
    harness.clock.wall_offset += seconds
    harness.keeper.recheck()


async def test_refreshes_off_schedule_are_followed_by_the_first_window(
    server: QuirkServer, tmp_path: Path
) -> None:
    """A start, an expired token or a forced refresh: next refresh from 5 %.

    A refresh on schedule (the token still valid) is followed by the usual
    min_share-max_share window, so a daemon keeps the phase a fleet's first
    window gave it.
    """
    server.reply(token_response(expires_in=100))
    harness = make_keeper(
        server, tmp_path, RefreshSettings(min_share=0.7, max_share=0.8)
    )
    keeper = harness.keeper
    keeper.rng = LowRandom()
    due: list[float] = []

    async def refreshed(generation: int) -> None:
        await wait_for(lambda: keeper.status.generation == generation)
        await wait_for(lambda: keeper.status.state == "fresh")
        await anyio.sleep(0.05)
        due.append(keeper.seconds_until_refresh() or 0.0)

    async with anyio.create_task_group() as group:
        group.start_soon(keeper.run)
        await refreshed(1)  # a start without a cached token
        jump(harness, 6)
        await refreshed(2)  # on schedule
        jump(harness, 200)
        await refreshed(3)  # the token had expired
        keeper.refresh_now()
        await refreshed(4)  # forced
        jump(harness, 71)
        await refreshed(5)  # on schedule again
        group.cancel_scope.cancel()
    await harness.endpoint.aclose()

    assert [round(d) for d in due] == [5, 70, 5, 5, 70]


@pytest.mark.parametrize(("retry_spread", "wait"), [(1.0, 90.0), (0.0, 0.8)])
async def test_retry_while_the_token_is_valid_waits_within_its_validity(
    server: QuirkServer, tmp_path: Path, retry_spread: float, wait: float
) -> None:
    """After 3 quick retries, the wait may reach the validity left less the margin."""
    server.enqueue(token_response(access_token="first-token", expires_in=100))
    server.reply(error_response(503, "temporarily_unavailable"))
    policy = RefreshSettings(retry_initial=0.1, retry_max=10, retry_spread=retry_spread)
    harness = make_keeper(server, tmp_path, policy)
    keeper = harness.keeper
    keeper.rng = HighRandom()
    async with anyio.create_task_group() as group:
        group.start_soon(keeper.run)
        await wait_for(lambda: keeper.status.generation == 1)
        keeper.refresh_now()
        # Plain backoff first: 0.1, 0.2 and 0.4 s (the longest draws).
        await wait_for(lambda: keeper.status.failures == schedule.PLAIN_RETRIES + 1)
        await anyio.sleep(0.05)
        next_retry = keeper.seconds_until_refresh() or 0.0
        group.cancel_scope.cancel()
    await harness.endpoint.aclose()

    assert harness.path.read_text() == "first-token"
    assert len(server.requests()) == 1 + schedule.PLAIN_RETRIES + 1
    assert wait - min(3, wait / 2) < next_retry <= wait


class MidRandom(random.Random):
    """Every draw in the middle of its range."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


async def obtain_once(server: QuirkServer, tmp_path: Path, lifetime: int) -> str:
    """Let a first keeper publish a token and stop; return the token."""
    server.reply(token_response(expires_in=lifetime))
    first = make_keeper(server, tmp_path, RefreshSettings())
    async with anyio.create_task_group() as group:
        group.start_soon(first.keeper.run)
        await wait_for(lambda: first.keeper.status.state == "fresh")
        group.cancel_scope.cancel()
    await first.endpoint.aclose()
    return first.path.read_text()


async def test_restore_cached_takes_over_an_intact_token_without_a_task(
    server: QuirkServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the daemon does for every keeper before READY=1 on a restart."""
    token = await obtain_once(server, tmp_path, 1000)
    requests = len(server.requests())

    again = make_keeper(server, tmp_path, RefreshSettings())
    again.keeper.load_cache()
    assert again.keeper.reuses_cache()
    assert again.keeper.restore_cached()
    assert again.keeper.settled.is_set()
    assert again.keeper.status.state == "fresh"
    assert again.keeper.reuses_cache()  # still true for the read-ahead split

    def no_disk() -> None:
        raise AssertionError("restore() read the cache again")

    monkeypatch.setattr(again.keeper, "_read_cache", no_disk)
    due = await again.keeper.restore()
    # Refreshed on schedule: 50-60 % of 1000 s after issue.
    assert 480 <= due.remaining(again.clock) <= 600
    assert len(server.requests()) == requests
    assert again.path.read_text() == token
    await again.endpoint.aclose()

    changed = make_keeper(server, tmp_path, RefreshSettings(), scopes=["other"])
    changed.keeper.load_cache()
    assert not changed.keeper.restore_cached()  # another request: fetched anew
    assert not changed.keeper.settled.is_set()
    await changed.endpoint.aclose()


async def test_a_restored_token_past_its_moment_is_refreshed_over_the_window(
    server: QuirkServer, tmp_path: Path
) -> None:
    """Tokens whose refresh moment passed (an upgrade moved the window) do not
    all refresh at once, and their next refresh comes from the first window."""
    await obtain_once(server, tmp_path, 1000)
    again = make_keeper(server, tmp_path, RefreshSettings())
    again.keeper.rng = MidRandom()
    again.clock.boot_offset = again.clock.wall_offset = 700  # past 50-60 %
    server.reply(token_response(expires_in=1000))
    due: list[float] = []

    async with anyio.create_task_group() as group:
        again.keeper.load_cache()
        assert again.keeper.restore_cached()
        group.start_soon(again.keeper.run)
        await anyio.sleep(0.05)
        due.append(again.keeper.seconds_until_refresh() or 0.0)
        jump(again, 60)
        await wait_for(lambda: again.keeper.status.generation == 2)
        await wait_for(lambda: again.keeper.status.state == "fresh")
        await anyio.sleep(0.05)
        due.append(again.keeper.seconds_until_refresh() or 0.0)
        group.cancel_scope.cancel()
    await again.endpoint.aclose()

    # Over the window's width (100 s, within the 290 s left less the
    # margin): the middle, not 0. Then the first window, 5-60 %: its middle.
    assert [round(d) for d in due] == [50, 325]


async def test_flag_wakes_every_waiter_and_a_late_one_at_once() -> None:
    flag = Flag()
    woken: list[int] = []

    async def waiter(number: int) -> None:
        await flag.wait()
        woken.append(number)

    async with anyio.create_task_group() as group:
        for number in range(3):
            group.start_soon(waiter, number)
        with anyio.move_on_after(0.05):  # a waiter that gives up leaves no trace
            await flag.wait()
        await anyio.sleep(0.05)
        assert woken == [] and not flag.is_set()
        flag.set()
    assert sorted(woken) == [0, 1, 2] and flag.is_set()
    with anyio.fail_after(1):
        await flag.wait()  # set before the wait: returns at once
