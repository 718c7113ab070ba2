"""Prometheus metrics. Counters live in each process (gunicorn's are merged through
PROMETHEUS_MULTIPROC_DIR, set by hookrelay.gunicorn_conf); delivery states and the backlog are
read from the store at scrape time, so they are right whichever process does the work."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hookrelay import history

if TYPE_CHECKING:
    from hookrelay.store import Store

EVENTS = Counter(
    "hookrelay_events_received", "Events received, by source and outcome", ["source", "outcome"]
)
ATTEMPTS = Counter(
    "hookrelay_delivery_attempts",
    "Delivery attempts, by destination and outcome",
    ["destination", "outcome"],
)
LATENCY = Histogram(
    "hookrelay_delivery_latency_seconds",
    "From receiving an event to its delivery, by destination",
    ["destination"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400),
)


class StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = history.counts(self.store)
        states = GaugeMetricFamily(
            "hookrelay_deliveries",
            "Deliveries stored, by destination and status",
            labels=["destination", "status"],
        )
        backlog = GaugeMetricFamily(
            "hookrelay_backlog",
            "Deliveries waiting to be sent, by destination",
            labels=["destination"],
        )
        for (destination, status), n in sorted(counts.items()):
            states.add_metric([destination, status], n)
            if status == "pending":
                backlog.add_metric([destination], n)
        yield states
        yield backlog


def render(store: Store) -> bytes:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        for collector in (EVENTS, ATTEMPTS, LATENCY):
            registry.register(collector)
    registry.register(StoreCollector(store))
    return generate_latest(registry)
