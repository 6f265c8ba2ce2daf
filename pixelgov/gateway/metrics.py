"""Prometheus metrics of the gateway (`GET /metrics`).

With one worker, counters and histograms live in the process. With `--workers N`, `pixelgov serve`
gives the workers a private directory (`PROMETHEUS_MULTIPROC_DIR`, prometheus-client's
multiprocess mode): each worker writes its counts there and a scrape, whichever worker answers it,
sums every worker's, so counters never appear to go backwards between scrapes. The money gauges are
read from the database at scrape time (ledger-wide in any case).

USD counters are exact: whole nano-USD in a Python int, shared between workers as two integer
gauges (whole USD, nano-USD remainder) that a float64 holds exactly. They become a float only at
the exposition boundary (Prometheus's format is float64): monitoring figures, never used for money.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pricing.money import NANO_PER_USD, from_nano, to_nano

#: Set (by `pixelgov serve --workers N`) when the workers share their counts through files.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def _exposed(amount: Decimal) -> float:
    """The exposition boundary: Prometheus's text format carries float64 values. Amounts are summed
    as exact Decimal and converted here, once per scrape, never accumulated as floats."""
    return float(amount)


class _UsdCounter(Collector):
    """A counter of USD kept exactly, as a whole number of nano-USD in a Python int (a float
    counter would drift with every increment), exposed as a float only when scraped.

    With several workers (`shared`) each worker also publishes its own total as two gauges — whole
    USD and the nano-USD remainder, each an integer a float64 holds exactly — which a scrape sums
    over every worker (`usd_families`)."""

    def __init__(self, name: str, documentation: str, *, shared: bool = False) -> None:
        self._name, self._doc = name, documentation
        self._nano = 0
        self._lock = threading.Lock()
        self._parts: tuple[Gauge, Gauge] | None = None
        if shared:  # not registered: a scrape reads them from the shared files
            self._parts = (
                Gauge(name + "_whole", documentation, registry=None, multiprocess_mode="sum"),
                Gauge(name + "_nano", documentation, registry=None, multiprocess_mode="sum"),
            )

    def inc(self, amount: Decimal) -> None:
        with self._lock:
            self._nano += to_nano(amount)
            if self._parts is not None:
                whole, nano = divmod(self._nano, NANO_PER_USD)
                self._parts[0].set(whole)
                self._parts[1].set(nano)

    @property
    def total(self) -> Decimal:
        """This worker's total."""
        return from_nano(self._nano)

    def collect(self) -> Iterator[CounterMetricFamily]:
        counter = CounterMetricFamily(self._name, self._doc)
        counter.add_metric([], _exposed(self.total))
        yield counter


def usd_families(families: Iterable[Metric], usd: Mapping[str, str]) -> Iterator[Metric]:
    """`families` (every worker's, summed) with each USD counter's two part gauges (`usd`: counter
    name → documentation) put back together as the counter; the rest as they are."""
    parts: dict[str, int] = {}
    for family in families:
        base, _, part = family.name.rpartition("_")
        if base in usd and part in ("whole", "nano"):
            value = int(sum(s.value for s in family.samples))  # integers, exact in float64
            parts[family.name] = value * (NANO_PER_USD if part == "whole" else 1)
        else:
            yield family
    for name, documentation in usd.items():
        counter = CounterMetricFamily(name, documentation)
        total = parts.get(f"{name}_whole", 0) + parts.get(f"{name}_nano", 0)
        counter.add_metric([], _exposed(from_nano(total)))
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
        shared = bool(os.environ.get(MULTIPROCESS_ENV))
        self.spend = _UsdCounter(
            "pixelgov_settled_usd", "Actual cost settled through the gateway since it started (USD)", shared=shared
        )
        self.estimated = _UsdCounter(
            "pixelgov_authorized_usd", "Estimates authorized through the gateway since it started (USD)", shared=shared
        )
        self.registry.register(self.spend)
        self.registry.register(self.estimated)
        self._gauges = _LedgerGauges(ledger_figures) if ledger_figures is not None else None
        if self._gauges is not None:
            self.registry.register(self._gauges)

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
        """The exposition: this worker's registry, or, in multiprocess mode, every worker's counts
        summed (and the ledger gauges, which are ledger-wide anyway)."""
        if not os.environ.get(MULTIPROCESS_ENV):
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        shared = CollectorRegistry()
        summing: Callable[[CollectorRegistry], object] = MultiProcessCollector  # reads every worker's files
        summing(shared)
        usd = {c._name: c._doc for c in (self.spend, self.estimated)}
        merged = CollectorRegistry()
        merged.register(_Families(lambda: usd_families(shared.collect(), usd)))
        if self._gauges is not None:
            merged.register(self._gauges)
        return generate_latest(merged)


class _Families(Collector):
    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families()
