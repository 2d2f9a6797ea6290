"""Prometheus metrics, read from the daemon's state at each scrape.

Counters and the latency histogram are fed by the keepers; everything else
(expiry, freshness, Vault login) is computed when scraped, so no value can go
stale between refreshes.

The counts are kept in plain dicts and lists; ``prometheus_client`` is
imported, and the exposition built from them, only when metrics are scraped.
Its own metric objects cost about 2 KB per token (a lock per bucket) and its
import a megabyte, for a daemon that may never be scraped.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from tokend import __version__

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

    from tokend.lifecycle import TokenKeeper
    from tokend.vault import LoginState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ATTEMPTS_HELP = "Refresh attempts by outcome (ok, retryable, credentials, persistent)."
LATENCY_HELP = "Time from the start of a refresh to its outcome."
RELOADS_HELP = "Configuration reloads by outcome (applied, rejected)."


def _bucket_label(bound: float) -> str:
    """``le`` as prometheus_client writes it (Go's float format: 1.0, 0.05)."""
    return repr(float(bound))


class _Count:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()


class _Latency:
    __slots__ = ("buckets", "count", "created", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * len(BUCKETS)  # per bucket, not cumulative
        self.count = 0
        self.sum = 0.0
        self.created = time.time()


class Metrics:
    """The daemon's metrics: one per daemon, never the global registry."""

    def __init__(
        self,
        keepers: Callable[[], Iterable[TokenKeeper]],
        vault: Callable[[], LoginState | None],
    ) -> None:
        self._keepers, self._vault = keepers, vault
        self.attempts: defaultdict[tuple[str, str], _Count] = defaultdict(_Count)
        self.latency: defaultdict[str, _Latency] = defaultdict(_Latency)
        self.reloads: defaultdict[str, _Count] = defaultdict(_Count)
        self._registry: CollectorRegistry | None = None

    def observe(self, token: str, outcome: str, seconds: float) -> None:
        self.attempts[token, outcome].value += 1
        latency = self.latency[token]
        index = bisect.bisect_left(BUCKETS, seconds)  # the first bound >= seconds
        if index < len(BUCKETS):
            latency.buckets[index] += 1
        latency.count += 1
        latency.sum += seconds

    def count_reload(self, outcome: str) -> None:
        self.reloads[outcome].value += 1

    def render(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        if self._registry is None:
            registry = CollectorRegistry(auto_describe=True)
            registry.register(_CountsCollector(self))
            registry.register(_StateCollector(self._keepers, self._vault))
            self._registry = registry
        return generate_latest(self._registry)


class _CountsCollector:
    """What prometheus_client's Counter and Histogram would expose."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            HistogramMetricFamily,
        )
        from prometheus_client.samples import Sample

        metrics = self._metrics
        attempts = CounterMetricFamily(
            "tokend_refresh_attempts", ATTEMPTS_HELP, labels=["token", "outcome"]
        )
        for (token, outcome), count in list(metrics.attempts.items()):
            attempts.add_metric([token, outcome], count.value, created=count.created)
        yield attempts
        latency = HistogramMetricFamily(
            "tokend_refresh_duration_seconds", LATENCY_HELP, labels=["token"]
        )
        for token, seen in list(metrics.latency.items()):
            cumulative, buckets = 0, []
            for bound, value in zip(BUCKETS, seen.buckets, strict=True):
                cumulative += value
                buckets.append((_bucket_label(bound), float(cumulative)))
            buckets.append(("+Inf", float(seen.count)))
            latency.add_metric([token], buckets, seen.sum)
            # As prometheus_client's Histogram: when the token's series began.
            created = Sample(
                "tokend_refresh_duration_seconds_created",
                {"token": token},
                seen.created,
            )
            latency.samples.append(created)
        yield latency
        reloads = CounterMetricFamily(
            "tokend_reloads", RELOADS_HELP, labels=["outcome"]
        )
        for outcome, count in list(metrics.reloads.items()):
            reloads.add_metric([outcome], count.value, created=count.created)
        yield reloads


class _StateCollector:
    def __init__(
        self,
        keepers: Callable[[], Iterable[TokenKeeper]],
        vault: Callable[[], LoginState | None],
    ) -> None:
        self._keepers, self._vault = keepers, vault

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

        info = InfoMetricFamily("tokend_build", "tokend version.")
        info.add_metric([], {"version": __version__})
        yield info
        expiry = GaugeMetricFamily(
            "tokend_token_expiry_timestamp_seconds",
            "When the published token expires (Unix time).",
            labels=["token"],
        )
        until = GaugeMetricFamily(
            "tokend_token_refresh_in_seconds",
            "Seconds until the next refresh attempt.",
            labels=["token"],
        )
        fresh = GaugeMetricFamily(
            "tokend_token_fresh", "1 if the token is fresh, else 0.", labels=["token"]
        )
        for keeper in self._keepers():
            expires = keeper.expires_at()
            if expires is not None:
                expiry.add_metric([keeper.name], expires)
            refresh_in = keeper.seconds_until_refresh()
            if refresh_in is not None:
                until.add_metric([keeper.name], max(0.0, refresh_in))
            fresh.add_metric(
                [keeper.name], 1.0 if keeper.status.state == "fresh" else 0
            )
        yield from (expiry, until, fresh)
        state = self._vault()
        if state is not None:
            logins = GaugeMetricFamily(
                "tokend_vault_logins", "Vault logins since start (counter)."
            )
            logins.add_metric([], state.logins)
            renewals = GaugeMetricFamily(
                "tokend_vault_renewals", "Vault token renewals since start (counter)."
            )
            renewals.add_metric([], state.renewals)
            failures = GaugeMetricFamily(
                "tokend_vault_failures",
                "Failed Vault calls (login, renewal, reads) since start (counter).",
            )
            failures.add_metric([], state.failures)
            yield failures
            logged_in = GaugeMetricFamily(
                "tokend_vault_logged_in", "1 while the Vault login is good."
            )
            logged_in.add_metric([], 1.0 if state.logged_in else 0.0)
            yield from (logins, renewals, logged_in)
