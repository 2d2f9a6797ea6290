"""When tokens refresh, how failures back off, and deadlines across clock jumps."""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokend.config import RefreshSettings as RefreshPolicy
from tokend.errors import ErrorKind
from tokend.schedule import (
    PLAIN_RETRIES,
    WAKE_SLICE,
    Deadline,
    SystemClock,
    refresh_after,
    retry_after,
)

DRAWS = 2000
POLICY = RefreshPolicy()


def draw_refreshes(lifetime: float, policy: RefreshPolicy = POLICY) -> list[float]:
    rng = random.Random(lifetime)
    return [refresh_after(lifetime, policy, rng) for _ in range(DRAWS)]


def draw_retries(
    attempt: int,
    policy: RefreshPolicy = POLICY,
    kind: ErrorKind = "retryable",
    server_hint: float | None = None,
) -> list[float]:
    rng = random.Random(attempt)
    return [retry_after(kind, attempt, policy, rng, server_hint) for _ in range(DRAWS)]


@pytest.mark.parametrize("lifetime", [300, 3600, 86400])
def test_refresh_after_long_lifetime_stays_in_share_window(lifetime: float) -> None:
    moments = draw_refreshes(lifetime)

    assert min(moments) >= 0.5 * lifetime
    assert max(moments) <= 0.6 * lifetime


@pytest.mark.parametrize("lifetime", [300, 3600])
def test_refresh_after_spreads_tokens_over_the_window(lifetime: float) -> None:
    """Tokens issued together must not all come back at the same moment."""
    moments = draw_refreshes(lifetime)

    assert len(set(moments)) > DRAWS * 0.99
    assert min(moments) < 0.51 * lifetime
    assert max(moments) > 0.59 * lifetime
    assert statistics.mean(moments) == pytest.approx(0.55 * lifetime, rel=0.01)


def test_refresh_after_follows_configured_shares() -> None:
    policy = RefreshPolicy(min_share=0.7, max_share=0.8)

    moments = draw_refreshes(1000, policy)

    assert 700 <= min(moments) < 705
    assert 795 < max(moments) <= 800


@pytest.mark.parametrize(
    ("lifetime", "margin"), [(30, 14), (40, 18), (100, 45), (600, 250)]
)
def test_refresh_after_short_lifetime_ends_margin_before_expiry(
    lifetime: float, margin: float
) -> None:
    moments = draw_refreshes(lifetime, RefreshPolicy(margin=margin))

    assert max(moments) <= lifetime - margin
    assert max(moments) > 0.99 * (lifetime - margin)
    assert len(set(moments)) > DRAWS * 0.99


@pytest.mark.parametrize(("lifetime", "margin"), [(12, 10), (10, 10), (2, 10)])
def test_refresh_after_tiny_lifetime_window_ends_at_half(
    lifetime: float, margin: float
) -> None:
    """A margin as long as the token does not force a refresh right at issue."""
    moments = draw_refreshes(lifetime, RefreshPolicy(margin=margin))

    assert max(moments) <= lifetime / 2
    assert max(moments) > 0.49 * lifetime
    assert min(moments) > 0


@settings(max_examples=200, deadline=None, database=None)
@given(
    lifetime=st.floats(min_value=1, max_value=31_536_000),
    shares=st.tuples(
        st.floats(min_value=0.01, max_value=0.99),
        st.floats(min_value=0.01, max_value=0.99),
    ).map(sorted),
    margin=st.floats(min_value=0, max_value=3600),
    seed=st.integers(),
    first=st.booleans(),
)
def test_refresh_after_is_before_expiry_for_any_policy(
    lifetime: float, shares: list[float], margin: float, seed: int, first: bool
) -> None:
    policy = RefreshPolicy(min_share=shares[0], max_share=shares[1], margin=margin)

    moment = refresh_after(lifetime, policy, random.Random(seed), first)

    assert 0 < moment <= shares[1] * lifetime
    assert moment <= max(lifetime - margin, lifetime / 2)


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 6])
def test_retry_after_ceiling_doubles_per_attempt(attempt: int) -> None:
    ceiling = 2 ** (attempt - 1)

    delays = draw_retries(attempt)

    assert min(delays) >= 0.1
    assert max(delays) <= ceiling
    assert max(delays) > 0.95 * ceiling


@pytest.mark.parametrize("attempt", [5, 7])
def test_retry_after_uses_full_jitter(attempt: int) -> None:
    """Delays spread from near zero up to the ceiling, not just near the top."""
    ceiling = 2 ** (attempt - 1)

    delays = draw_retries(attempt)

    assert min(delays) < 0.05 * ceiling
    assert statistics.mean(delays) == pytest.approx(ceiling / 2, rel=0.1)
    assert len(set(delays)) > DRAWS * 0.99


@pytest.mark.parametrize("attempt", [8, 20, 64, 10**6])
def test_retry_after_is_capped_at_retry_max(attempt: int) -> None:
    delays = draw_retries(attempt)

    assert max(delays) <= POLICY.retry_max
    assert max(delays) > 0.95 * POLICY.retry_max


def test_retry_after_follows_configured_initial_and_max() -> None:
    policy = RefreshPolicy(retry_initial=5, retry_max=30)

    assert max(draw_retries(1, policy)) <= 5
    assert max(draw_retries(2, policy)) <= 10
    assert 29 < max(draw_retries(9, policy)) <= 30


def test_retry_after_honours_server_retry_after() -> None:
    delays = draw_retries(1, server_hint=45)

    assert min(delays) >= 45


def test_retry_after_caps_server_retry_after_at_retry_max() -> None:
    delays = draw_retries(1, server_hint=86400)

    assert max(delays) <= POLICY.retry_max
    assert min(delays) >= POLICY.retry_max * 0.95


def test_retry_after_short_server_hint_does_not_shorten_backoff() -> None:
    delays = draw_retries(7, server_hint=1)

    assert max(delays) > 60


@pytest.mark.parametrize("kind", ["credentials", "persistent"])
def test_retry_after_waits_slowly_when_a_person_must_act(kind: ErrorKind) -> None:
    for attempt in (1, 2, 10):
        delays = draw_retries(attempt, kind=kind)

        assert min(delays) >= 0.8 * POLICY.retry_slow
        assert max(delays) <= POLICY.retry_slow
        assert len(set(delays)) > DRAWS * 0.99


def draw_first_refreshes(
    lifetime: float, policy: RefreshPolicy = POLICY
) -> list[float]:
    rng = random.Random(lifetime)
    return [refresh_after(lifetime, policy, rng, first=True) for _ in range(DRAWS)]


@pytest.mark.parametrize("lifetime", [300, 3600, 86400])
def test_first_refresh_window_spans_a_refresh_period(lifetime: float) -> None:
    """Tokens obtained together leave the shared 50-60 % tenth in one lifetime."""
    moments = draw_first_refreshes(lifetime)

    assert min(moments) >= 0.05 * lifetime
    assert min(moments) < 0.06 * lifetime
    assert 0.59 * lifetime < max(moments) <= 0.6 * lifetime
    assert statistics.mean(moments) == pytest.approx(0.325 * lifetime, rel=0.03)


def test_first_refresh_window_still_ends_margin_before_expiry() -> None:
    # The window would end at 18 s; the margin ends it at 16 s, scaled.
    moments = draw_first_refreshes(30, RefreshPolicy(margin=14))

    assert max(moments) <= 16
    assert min(moments) >= 0.05 * 30 * 16 / 18


@pytest.mark.parametrize(
    ("first_min_share", "expected_low"), [(0.3, 0.3), (0.5, 0.5), (0.9, 0.5)]
)
def test_first_refresh_window_opens_no_later_than_min_share(
    first_min_share: float, expected_low: float
) -> None:
    """``first_min_share = min_share`` turns spreading off; larger acts as it."""
    moments = draw_first_refreshes(1000, RefreshPolicy(first_min_share=first_min_share))

    assert expected_low * 1000 <= min(moments) < expected_low * 1000 + 5


def draw_valid_retries(
    attempt: int,
    valid_for: float,
    policy: RefreshPolicy = POLICY,
    server_hint: float | None = None,
) -> list[float]:
    rng = random.Random(attempt * 1000 + valid_for)
    return [
        retry_after("retryable", attempt, policy, rng, server_hint, valid_for)
        for _ in range(DRAWS)
    ]


@pytest.mark.parametrize("valid_for", [300, 900, 3000])
def test_retry_while_valid_spreads_over_the_validity_left(valid_for: float) -> None:
    """A fleet's retries during an outage trickle instead of every retry_max."""
    room = valid_for - POLICY.margin

    delays = draw_valid_retries(PLAIN_RETRIES + 1, valid_for)

    assert min(delays) >= 0.1
    assert max(delays) <= room
    assert max(delays) > 0.99 * room
    assert statistics.mean(delays) == pytest.approx(room / 2, rel=0.05)


@pytest.mark.parametrize("attempt", range(1, PLAIN_RETRIES + 1))
def test_first_retries_while_valid_are_plain_backoff(attempt: int) -> None:
    """A blip is retried within seconds: the token turns fresh again at once."""
    delays = draw_valid_retries(attempt, valid_for=900)

    assert max(delays) <= 2 ** (attempt - 1)


@pytest.mark.parametrize("attempt", [1, 4, 12])
def test_retry_while_valid_never_waits_past_the_margin(attempt: int) -> None:
    """Backoff longer than the validity left is cut to retry before expiry."""
    delays = draw_valid_retries(attempt, valid_for=15)

    assert max(delays) <= 15 - POLICY.margin
    assert min(delays) >= 0.1


@pytest.mark.parametrize("retry_spread", [0.0, 1.0])
def test_retry_while_valid_keeps_the_backoff_as_floor(retry_spread: float) -> None:
    """Little validity left: the backoff decides, cut to retry before expiry."""
    policy = RefreshPolicy(retry_spread=retry_spread)

    delays = draw_valid_retries(8, valid_for=30, policy=policy)

    assert max(delays) <= 20
    assert statistics.mean(delays) == pytest.approx(20, rel=0.1)


@pytest.mark.parametrize("valid_for", [None, 10, 5, -20])
def test_retry_without_validity_beyond_margin_is_plain_backoff(
    valid_for: float | None,
) -> None:
    """An expired or nearly expired token: retry as fast as backoff allows."""
    delays = draw_valid_retries(3, valid_for) if valid_for else draw_retries(3)

    assert max(delays) <= 4
    assert statistics.mean(delays) == pytest.approx(2, rel=0.1)


def test_retry_while_valid_honours_server_retry_after() -> None:
    delays = draw_valid_retries(PLAIN_RETRIES + 1, valid_for=20, server_hint=60)

    assert min(delays) >= 60
    assert max(delays) <= 120


@dataclass
class FakeClock:
    """Both of tokend's clocks, moved by hand."""

    boot: float = 1000.0
    now: float = 1_700_000_000.0

    def boottime(self) -> float:
        return self.boot

    def wall(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.boot += seconds
        self.now += seconds


def test_deadline_counts_down_on_both_clocks() -> None:
    clock = FakeClock()
    deadline = Deadline.after(clock, 15)

    assert deadline.remaining(clock) == 15
    assert deadline.next_sleep(clock) == 15
    clock.advance(10)
    assert deadline.next_sleep(clock) == 5
    clock.advance(5)
    assert deadline.next_sleep(clock) == 0


def test_deadline_sleeps_in_slices() -> None:
    clock = FakeClock()
    deadline = Deadline.after(clock, 3600)

    slept = 0.0
    wakeups = 0
    while (pause := deadline.next_sleep(clock)) > 0:
        assert pause <= WAKE_SLICE
        clock.advance(pause)
        slept += pause
        wakeups += 1

    assert slept == pytest.approx(3600)
    assert wakeups == pytest.approx(3600 / WAKE_SLICE, abs=1)


def test_deadline_passes_after_suspend() -> None:
    """A suspended VM: the boot clock and the wall clock both moved on."""
    clock = FakeClock()
    deadline = Deadline.after(clock, 600)

    clock.advance(7200)

    assert deadline.remaining(clock) == -6600
    assert deadline.next_sleep(clock) == 0


def test_deadline_passes_when_only_wall_clock_jumps_forward() -> None:
    clock = FakeClock()
    deadline = Deadline.after(clock, 600)

    clock.now += 3600
    clock.boot += 1

    assert deadline.next_sleep(clock) == 0


def test_deadline_passes_on_boot_clock_when_wall_clock_steps_back() -> None:
    clock = FakeClock()
    deadline = Deadline.after(clock, 600)

    clock.now -= 86400
    assert deadline.next_sleep(clock) == WAKE_SLICE
    clock.boot += 600

    assert deadline.next_sleep(clock) == 0


@settings(max_examples=200, deadline=None, database=None)
@given(
    seconds=st.floats(min_value=-1e6, max_value=1e9),
    boot_step=st.floats(min_value=-1e9, max_value=1e9),
    wall_step=st.floats(min_value=-1e9, max_value=1e9),
)
def test_deadline_next_sleep_is_between_zero_and_a_slice(
    seconds: float, boot_step: float, wall_step: float
) -> None:
    clock = FakeClock()
    deadline = Deadline.after(clock, seconds)
    clock.boot += boot_step
    clock.now += wall_step

    pause = deadline.next_sleep(clock)

    assert 0 <= pause <= WAKE_SLICE
    assert (pause == 0) == (deadline.remaining(clock) <= 0)


def test_system_clock_reads_boot_and_wall_time() -> None:
    clock = SystemClock()

    first = clock.boottime()
    assert clock.wall() == pytest.approx(time.time(), abs=1)
    assert clock.boottime() >= first
    assert first >= time.monotonic() - 1


def test_clock_watch_notices_a_wall_step_or_a_resume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wall-clock step or a suspend moves the clocks apart; the watch says so."""
    import time

    from tokend.schedule import ClockWatch

    watch = ClockWatch(tolerance=2.0)
    assert not watch.jumped()
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
    assert watch.jumped()
    assert not watch.jumped()  # the new offset is the norm now
    real_boot = time.clock_gettime
    monkeypatch.setattr(
        time,
        "clock_gettime",
        lambda clock: real_boot(clock) + (600 if clock == time.CLOCK_BOOTTIME else 0),
    )
    assert watch.jumped()
