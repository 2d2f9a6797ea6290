"""A fleet of daemons on virtual time: the load its schedule puts on the OAuth server.

10,000 daemons x 5 tokens, every token driven by tokend's own
:func:`tokend.schedule.refresh_after` and :func:`tokend.schedule.retry_after`,
called as :class:`tokend.lifecycle.Keeper` calls them: a token obtained off
schedule (at a start with no cached token, or after its token expired) is
refreshed from the wider first window, and a retry passes the validity the published
token has left. A heap-ordered event simulation runs 24 h. Every daemon
starts at the same instant with no cached token (a fleet-wide reboot:
``/run`` is tmpfs). A request takes no time; during an outage every request
fails as a retryable error (connection refused, no ``Retry-After``), as the
keeper classifies it.

Scenarios with tokend's default ``[refresh]`` settings carry ``"default":
true``; the others change only settings: ``min_share = 0.7, max_share = 0.8``
is the refresh window tokend had by default before 50-60 %, and with
``first_min_share = min_share`` and ``retry_spread = 0`` the schedule it had
before it spread first refreshes and retries.

    python -m tests.benchmarks.fleet [--daemons 10000] [--hours 24]

Writes ``docs/performance/fleet.json``, ``fleet_24h.png`` and
``fleet_outage.png``; asserts nothing.
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tests.benchmarks.measure import RESULTS, machine, say, write_result
from tokend.config import RefreshSettings
from tokend.schedule import refresh_after, retry_after

LIFETIME = 3600.0
TOKENS_PER_DAEMON = 5
OUTAGE_START = 12 * 3600.0
OUTAGE_SECONDS = 15 * 60.0
BIN = 60  # seconds per bin of the rates compared with the targets
PEAK_TARGET = 1.25
RECOVERY_TARGET = 2.0
# The schedule before first refreshes and retries were spread, and its window.
UNSPREAD = {
    "min_share": 0.7,
    "max_share": 0.8,
    "first_min_share": 0.7,
    "retry_spread": 0,
}
FORMER_WINDOW = {"min_share": 0.7, "max_share": 0.8}


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    outage: bool
    policy: RefreshSettings = field(default_factory=RefreshSettings)
    default: bool = False


@dataclass
class Outcome:
    """Requests per second (1-s bins) and what the tokens went through."""

    per_second: list[int]
    failed_per_second: list[int]
    requests: int = 0
    failed: int = 0
    expired_tokens: int = 0
    expired_token_seconds: float = 0.0
    seconds: float = 0.0


def simulate(scenario: Scenario, tokens: int, horizon: float, seed: int) -> Outcome:
    """Run every token from t=0 (all due at once) until ``horizon`` seconds."""
    rng = random.Random(seed)
    policy = scenario.policy
    started = time.monotonic()
    size = int(horizon) + 1
    outcome = Outcome([0] * size, [0] * size)
    attempts = [0] * tokens
    expiry = [0.0] * tokens  # 0: never had a token (start-up)
    off_schedule = [True] * tokens
    down_from = OUTAGE_START if scenario.outage else horizon + 1
    down_until = down_from + OUTAGE_SECONDS
    due: list[tuple[float, int]] = [(0.0, token) for token in range(tokens)]
    heapq.heapify(due)
    pop, push = heapq.heappop, heapq.heappush
    per_second, failed_per_second = outcome.per_second, outcome.failed_per_second
    while due:
        now, token = pop(due)
        if now >= horizon:
            break
        per_second[int(now)] += 1
        if down_from <= now < down_until:
            failed_per_second[int(now)] += 1
            attempts[token] += 1
            valid_for = expiry[token] - now if expiry[token] else None
            delay = retry_after(
                "retryable", attempts[token], policy, rng, None, valid_for
            )
            push(due, (now + delay, token))
            continue
        if expiry[token] and now > expiry[token]:
            outcome.expired_tokens += 1
            outcome.expired_token_seconds += now - expiry[token]
        first = off_schedule[token] or now > expiry[token]
        attempts[token] = 0
        off_schedule[token] = False
        expiry[token] = now + LIFETIME
        push(due, (now + refresh_after(LIFETIME, policy, rng, first), token))
    outcome.requests = sum(per_second)
    outcome.failed = sum(failed_per_second)
    outcome.seconds = time.monotonic() - started

    return outcome


def binned(per_second: list[int], width: int) -> list[float]:
    """Mean requests per second in consecutive bins of ``width`` seconds."""
    return [
        sum(per_second[i : i + width]) / width
        for i in range(0, len(per_second) - width + 1, width)
    ]


def rate_between(per_second: list[int], start: float, end: float) -> float:
    return sum(per_second[int(start) : int(end)]) / (end - start)


def peak_between(per_second: list[int], start: float, end: float, width: int) -> float:
    window = per_second[int(start) : int(end)]
    return max(binned(window, width))


def describe(scenario: Scenario, outcome: Outcome, horizon: float) -> dict[str, Any]:
    """The figures the issue asks for, per scenario."""
    rates = outcome.per_second
    after_first = rate_between(rates, LIFETIME, horizon)
    figures: dict[str, Any] = {
        "label": scenario.label,
        "default": scenario.default,
        "refresh_settings": scenario.policy.model_dump(),
        "requests": outcome.requests,
        "failed_requests": outcome.failed,
        "startup_peak_rps_1s": max(rates[:10]),
        "mean_rps_after_first_lifetime": round(after_first, 2),
        "peak_rps_after_first_lifetime_60s": round(
            peak_between(rates, LIFETIME, horizon, BIN), 2
        ),
        "peak_rps_after_first_lifetime_1s": max(rates[int(LIFETIME) : int(horizon)]),
        "expired_tokens": outcome.expired_tokens,
        "expired_token_seconds": round(outcome.expired_token_seconds),
        "simulated_in_seconds": round(outcome.seconds, 1),
    }
    figures["peak_to_mean_60s"] = round(
        figures["peak_rps_after_first_lifetime_60s"] / after_first, 2
    )
    if scenario.outage:
        end = OUTAGE_START + OUTAGE_SECONDS
        steady = rate_between(rates, OUTAGE_START - 3600, OUTAGE_START)
        recovery = peak_between(rates, end, end + 1800, BIN)
        echo = peak_between(rates, end + 1800, min(end + 2 * 3600, horizon), BIN)
        figures.update(
            {
                "steady_rps_hour_before_outage": round(steady, 2),
                "retry_rps_during_outage_mean": round(
                    rate_between(rates, OUTAGE_START, end), 2
                ),
                "retry_rps_during_outage_peak_60s": round(
                    peak_between(rates, OUTAGE_START, end, BIN), 2
                ),
                "recovery_peak_rps_60s": round(recovery, 2),
                "recovery_peak_rps_1s": max(rates[int(end) : int(end) + 1800]),
                "recovery_peak_to_steady": round(recovery / steady, 2),
                "recovery_peak_to_steady_300s_bins": round(
                    peak_between(rates, end, end + 1800, 300) / steady, 2
                ),
                "echo_peak_rps_60s_next_2h": round(echo, 2),
                "echo_peak_to_steady": round(echo / steady, 2),
            }
        )
    return figures


SCENARIOS = [
    Scenario("current", "tokend's default schedule, no outage", False, default=True),
    Scenario(
        "current_outage", "tokend's default schedule, 15-min outage", True, default=True
    ),
    Scenario(
        "unspread",
        "70-80 %, first refreshes and retries not spread, no outage",
        False,
        RefreshSettings(**UNSPREAD),
    ),
    Scenario(
        "unspread_outage",
        "70-80 %, first refreshes and retries not spread, 15-min outage",
        True,
        RefreshSettings(**UNSPREAD),
    ),
    Scenario(
        "former_outage",
        "refresh at 70-80 % (the former default), 15-min outage",
        True,
        RefreshSettings(**FORMER_WINDOW),
    ),
    Scenario(
        "retry_half_outage",
        "retry_spread = 0.5, 15-min outage",
        True,
        RefreshSettings(retry_spread=0.5),
    ),
]


def plot(results: dict[str, Outcome], horizon: float) -> list[str]:
    """Draw the 24-hour load and the outage close-up; return the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = [i * BIN / 3600 for i in range(int(horizon) // BIN)]
    figure, axes = plt.subplots(figsize=(10, 4.5))
    for name, colour in (("unspread", "tab:red"), ("current", "tab:blue")):
        rates = binned(results[name].per_second, BIN)[: len(hours)]
        label = next(s.label for s in SCENARIOS if s.name == name)
        axes.plot(hours, rates, color=colour, linewidth=0.8, label=label)
    mean = rate_between(results["current"].per_second, LIFETIME, horizon)
    axes.axhline(mean * PEAK_TARGET, color="grey", linestyle="--", linewidth=0.8)
    axes.text(0.2, mean * PEAK_TARGET * 1.05, "1.25 x mean (target peak)", color="grey")
    axes.set_yscale("log")
    axes.set_xlim(0, horizon / 3600)
    axes.set_xlabel("hours since every daemon started")
    axes.set_ylabel(f"token requests per second ({BIN}-s bins)")
    axes.set_title("10,000 daemons x 5 tokens, lifetime 3600 s, all started at once")
    axes.legend(loc="upper right")
    figure.tight_layout()
    names = ["fleet_24h.png"]
    figure.savefig(RESULTS / names[0], dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(10, 4.5))
    start, end = OUTAGE_START - 1800, OUTAGE_START + 3 * 3600
    for name, colour in (
        ("unspread_outage", "tab:red"),
        ("retry_half_outage", "tab:orange"),
        ("current_outage", "tab:blue"),
        ("former_outage", "tab:green"),
    ):
        rates = binned(results[name].per_second[int(start) : int(end)], BIN)
        xs = [(start + i * BIN - OUTAGE_START) / 60 for i in range(len(rates))]
        label = next(s.label for s in SCENARIOS if s.name == name)
        axes.plot(xs, rates, color=colour, linewidth=0.9, label=label)
    steady = rate_between(
        results["current_outage"].per_second, OUTAGE_START - 3600, OUTAGE_START
    )
    axes.axhline(steady * RECOVERY_TARGET, color="grey", linestyle="--", linewidth=0.8)
    axes.text(-29, steady * RECOVERY_TARGET * 1.05, "2 x steady (target)", color="grey")
    axes.axvspan(0, OUTAGE_SECONDS / 60, color="grey", alpha=0.15, label="outage")
    axes.set_yscale("log")
    axes.set_xlabel("minutes since the OAuth server went down")
    axes.set_ylabel(f"token requests per second ({BIN}-s bins)")
    axes.set_title("A 15-minute outage at 12:00")
    axes.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    names.append("fleet_outage.png")
    figure.savefig(RESULTS / names[1], dpi=110)
    plt.close(figure)

    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--daemons", type=int, default=10_000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    tokens = args.daemons * TOKENS_PER_DAEMON
    horizon = args.hours * 3600
    say(f"fleet: {len(SCENARIOS)} scenarios, {tokens} tokens, {args.hours:g} h")
    # One scenario per core: each is a plain CPU-bound Python loop.
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        runs = pool.map(
            simulate,
            SCENARIOS,
            [tokens] * len(SCENARIOS),
            [horizon] * len(SCENARIOS),
            [args.seed] * len(SCENARIOS),
        )
        results = {s.name: outcome for s, outcome in zip(SCENARIOS, runs, strict=True)}
    figures: dict[str, Any] = {}
    for scenario in SCENARIOS:
        figures[scenario.name] = describe(scenario, results[scenario.name], horizon)
        shown = {
            key: value
            for key, value in figures[scenario.name].items()
            if key.endswith(("to_mean_60s", "to_steady"))
        }
        say(f"  {scenario.label}: {shown}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    plots = plot(results, horizon)
    write_result(
        "fleet",
        {
            "benchmark": "fleet",
            "machine": machine(),
            "setup": {
                "daemons": args.daemons,
                "tokens_per_daemon": TOKENS_PER_DAEMON,
                "token_lifetime_seconds": LIFETIME,
                "hours": args.hours,
                "refresh_settings": RefreshSettings().model_dump(),
                "outage": f"{OUTAGE_SECONDS / 60:g} min from "
                f"{OUTAGE_START / 3600:g} h, every request fails retryable",
                "bin_seconds": BIN,
                "seed": args.seed,
            },
            "targets": {
                "peak_to_mean_after_first_lifetime": f"<= {PEAK_TARGET}",
                "recovery_peak_to_steady": f"<= {RECOVERY_TARGET}",
            },
            "scenarios": figures,
            "plots": plots,
        },
    )


if __name__ == "__main__":
    main()
