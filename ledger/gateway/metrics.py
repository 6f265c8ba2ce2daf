"""Prometheus metrics of one gateway worker (`GET /metrics`).

Counters and histograms are per worker process (each has its own registry; with
`--workers N` a scrape reaches one of them). The money gauges are read from the
database at scrape time, so every worker reports the same ledger-wide figures.
Amounts are summed as exact Decimal and converted to float USD only at the exposition boundary
(Prometheus's format is float64): monitoring figures, never used for money.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def _exposed(amount: Decimal) -> float:
    """The exposition boundary: Prometheus's text format carries float64 values. Amounts are summed
    as exact Decimal and converted here, once per scrape, never accumulated as floats."""
    return float(amount)


class _UsdCounter(Collector):
    """A counter of USD kept as an exact Decimal total (a float counter would drift with every
    increment), exposed as a float only when scraped."""

    def __init__(self, name: str, documentation: str) -> None:
        self._name, self._doc = name, documentation
        self._total = Decimal(0)
        self._lock = threading.Lock()

    def inc(self, amount: Decimal) -> None:
        with self._lock:
            self._total += amount

    @property
    def total(self) -> Decimal:
        return self._total

    def collect(self) -> Iterator[CounterMetricFamily]:
        counter = CounterMetricFamily(self._name, self._doc)
        counter.add_metric([], _exposed(self._total))
        yield counter


class _LedgerGauges(Collector):
    """Held (pending), unknown and settled spend, read from the ledger when scraped."""

    def __init__(self, read: Callable[[], dict[str, Decimal]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            figures = self._read()
        except Exception:  # noqa: BLE001 - a scrape never fails because the database is away
            figures = {}
        gauge = GaugeMetricFamily(
            "pixelgov_ledger_usd",
            "Ledger amounts by status (USD): held = pending "
            "estimates, unknown = counted estimates of unanswered requests, "
            "settled = actual cost of completed transactions today (UTC)",
            labels=["kind"],
        )
        for kind, amount in sorted(figures.items()):
            gauge.add_metric([kind], _exposed(amount))
        yield gauge


class Metrics:
    """The worker's metrics: requests by route and status, decisions, upstream latency, spend."""

    def __init__(self, ledger_figures: Callable[[], dict[str, Decimal]] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pixelgov_http_requests",
            "HTTP requests by route and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pixelgov_http_request_seconds",
            "Time to answer a request (seconds)",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "pixelgov_decisions",
            "Authorizations by outcome (allowed, denied, rate_limited)",
            ["outcome"],
            registry=self.registry,
        )
        self.runs = Counter(
            "pixelgov_runs", "Governed runs by final transaction status", ["status"], registry=self.registry
        )
        self.upstream_latency = Histogram(
            "pixelgov_upstream_seconds",
            "Upstream answer time (seconds)",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.spend = _UsdCounter("pixelgov_settled_usd", "Actual cost settled by this worker (USD)")
        self.estimated = _UsdCounter("pixelgov_authorized_usd", "Estimates held by this worker (USD)")
        self.registry.register(self.spend)
        self.registry.register(self.estimated)
        if ledger_figures is not None:
            self.registry.register(_LedgerGauges(ledger_figures))

    def observe_transaction(self, tx: Any) -> None:
        """Count a run's final transaction: its status, its actual cost, its upstream latency."""
        self.runs.labels(status=tx.status.value).inc()
        if tx.actual_cost is not None:
            self.spend.inc(tx.actual_cost)

    def observe_decision(self, outcome: str, estimate: Decimal | None = None) -> None:
        self.decisions.labels(outcome=outcome).inc()
        if estimate is not None and outcome == "allowed":
            self.estimated.inc(estimate)

    def render(self) -> bytes:
        return generate_latest(self.registry)
