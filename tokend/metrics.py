"""Prometheus metrics, read from the daemon's state at each scrape.

Counters and the latency histogram are fed by the keepers; everything else
(expiry, freshness, Vault login) is computed when scraped, so no value can go
stale between refreshes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from tokend import __version__

if TYPE_CHECKING:
    from tokend.lifecycle import TokenKeeper
    from tokend.vault import LoginState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The daemon's registry: one per daemon, never the global one."""

    def __init__(
        self,
        keepers: Callable[[], Iterable[TokenKeeper]],
        vault: Callable[[], LoginState | None],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.attempts = Counter(
            "tokend_refresh_attempts",
            "Refresh attempts by outcome (ok, retryable, credentials, persistent).",
            ["token", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tokend_refresh_duration_seconds",
            "Time from the start of a refresh to its outcome.",
            ["token"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.reloads = Counter(
            "tokend_reloads",
            "Configuration reloads by outcome (applied, rejected).",
            ["outcome"],
            registry=self.registry,
        )
        self.registry.register(_StateCollector(keepers, vault))

    def observe(self, token: str, outcome: str, seconds: float) -> None:
        self.attempts.labels(token, outcome).inc()
        self.latency.labels(token).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(
        self,
        keepers: Callable[[], Iterable[TokenKeeper]],
        vault: Callable[[], LoginState | None],
    ) -> None:
        self._keepers, self._vault = keepers, vault

    def collect(self) -> Iterator[Metric]:
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
