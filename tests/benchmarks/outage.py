"""How many token requests one token sends during an OAuth-server outage.

Drives tokend's own backoff (:func:`tokend.schedule.retry_after`) on virtual
time: no server, no sleeping. Prints figures; asserts nothing.

    python -m tests.benchmarks.outage [--minutes 5] [--trials 10000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys

from tokend.config import RefreshSettings
from tokend.schedule import retry_after


def requests_during(outage: float, policy: RefreshSettings, rng: random.Random) -> int:
    """Requests sent from the first failure until ``outage`` seconds later."""
    elapsed, attempt = 0.0, 0
    while elapsed < outage:
        attempt += 1
        elapsed += retry_after("retryable", attempt, policy, rng)
    return attempt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--trials", type=int, default=10_000)
    args = parser.parse_args()
    policy = RefreshSettings()
    rng = random.Random(7)
    counts = sorted(
        requests_during(args.minutes * 60, policy, rng) for _ in range(args.trials)
    )
    p99 = counts[int(len(counts) * 0.99) - 1]
    sys.stdout.write(
        f"outage {args.minutes:g} min, retry_initial {policy.retry_initial:g} s, "
        f"retry_max {policy.retry_max:g} s, {args.trials} trials: requests per "
        f"token mean {statistics.mean(counts):.1f}, p99 {p99}, max {counts[-1]}; "
        f"then one per {policy.retry_max / 2:g} s on average\n"
    )


if __name__ == "__main__":
    main()
