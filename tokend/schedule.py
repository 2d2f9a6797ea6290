"""When to refresh a token and how long to wait after a failure.

Everything here is a pure function of its arguments (times in seconds, a
random source), so that tests and fleet simulations can drive tokend's real
scheduling on virtual time.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Protocol

from tokend.config import RefreshSettings as RefreshPolicy
from tokend.errors import ErrorKind

# Sleep in slices so a suspended VM or a jump of the wall clock is noticed
# within this many seconds after it happens.
WAKE_SLICE = 20.0
# Retries at plain backoff before a still-valid token's retries spread: a blip
# is over in seconds, and a fresh token is what the services and alerts expect.
PLAIN_RETRIES = 3


def refresh_after(
    lifetime: float, policy: RefreshPolicy, rng: random.Random, first: bool = False
) -> float:
    """Return how many seconds after issue a token should be refreshed.

    The moment is drawn uniformly between ``min_share`` and ``max_share`` of
    the lifetime, so that many tokens issued together spread out. If that
    window ends later than ``margin`` before expiry, it is scaled down to end
    there, but never below half the lifetime.

    ``first`` is for a token that was not obtained on schedule (a start with
    no cached token, a token that expired before it was replaced, a forced
    or changed request): its window opens at ``first_min_share`` instead. Daemons that
    all got their tokens at the same instant (a fleet rebooted, a server back
    from an outage) would otherwise stay in step, refreshing within the same
    tenth of every lifetime; a window about one refresh period wide scatters
    their phases in a single lifetime.
    """
    low = min(policy.first_min_share, policy.min_share) if first else policy.min_share
    start, end = low * lifetime, policy.max_share * lifetime
    latest = max(lifetime - policy.margin, lifetime / 2)
    if end > latest:
        scale = latest / end
        start, end = start * scale, latest

    return rng.uniform(start, end)


def retry_after(
    kind: ErrorKind,
    attempt: int,
    policy: RefreshPolicy,
    rng: random.Random,
    server_hint: float | None = None,
    valid_for: float | None = None,
) -> float:
    """Return the seconds to wait before retry number ``attempt`` (from 1).

    Retryable failures back off exponentially with full jitter; the server's
    ``Retry-After`` is honoured but capped at ``retry_max``. Credential and
    persistent failures wait about ``retry_slow``: a person has to act first.

    ``valid_for`` is how long the published token stays valid. While it
    does, and once ``PLAIN_RETRIES`` retries have failed too, a retryable
    failure may also wait a uniform share (up to ``retry_spread``) of that
    time less the margin: the services lose
    nothing, and a fleet whose server is down sends a trickle instead of a
    retry per token every ``retry_max``, then spreads its catch-up over the
    validity its tokens have left instead of arriving all at once. As the
    token nears its expiry the waits shrink with it, and none but a server's
    ``Retry-After`` waits past the margin before expiry.
    """
    if kind != "retryable":
        return policy.retry_slow * rng.uniform(0.8, 1.0)

    ceiling = min(policy.retry_max, policy.retry_initial * 2.0 ** min(attempt - 1, 30))
    delay = max(min(0.1, ceiling), rng.uniform(0, ceiling))
    if valid_for is not None and valid_for > policy.margin:
        room = valid_for - policy.margin
        if attempt > PLAIN_RETRIES:
            delay = max(delay, rng.uniform(0, policy.retry_spread) * room)
        delay = min(delay, room)
    if server_hint is not None:
        delay = max(delay, min(server_hint, policy.retry_max))

    return delay


class Clock(Protocol):
    """Time sources: ``boottime`` counts suspend and ignores wall-clock jumps."""

    def boottime(self) -> float: ...

    def wall(self) -> float: ...


class SystemClock:
    def boottime(self) -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME)

    def wall(self) -> float:
        return time.time()


@dataclass(frozen=True)
class Deadline:
    """A moment on both clocks; it has passed when either clock says so.

    The boot clock keeps the schedule right across wall-clock jumps; the wall
    clock catches a token that readers (and their callees) would already
    consider expired after the wall clock jumped forward.
    """

    boot: float
    wall: float

    @classmethod
    def after(cls, clock: Clock, seconds: float) -> Deadline:
        return cls(clock.boottime() + seconds, clock.wall() + seconds)

    def remaining(self, clock: Clock) -> float:
        return min(self.boot - clock.boottime(), self.wall - clock.wall())

    def next_sleep(self, clock: Clock, wake_slice: float | None = None) -> float:
        """Seconds to sleep before looking again; 0 once the deadline passed."""
        limit = WAKE_SLICE if wake_slice is None else wake_slice
        return max(0.0, min(self.remaining(clock), limit))


class ClockWatch:
    """Notices a suspend/resume or a wall-clock step by comparing clocks.

    Both show as a change in how far CLOCK_BOOTTIME and the wall clock are
    ahead of CLOCK_MONOTONIC, which neither counts suspend nor jumps.
    """

    def __init__(self, tolerance: float = 2.0) -> None:
        self.tolerance = tolerance
        self._offsets = self._read()

    @staticmethod
    def _read() -> tuple[float, float]:
        monotonic = time.monotonic()
        boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        return boot - monotonic, time.time() - monotonic

    def jumped(self) -> bool:
        """True if the clocks moved apart since the last call."""
        offsets = self._read()
        moved = any(
            abs(new - old) > self.tolerance
            for new, old in zip(offsets, self._offsets, strict=True)
        )
        self._offsets = offsets
        return moved
