"""Prometheus metrics, counted in every process that does work and added up in the database.

gunicorn's workers and `relay worker` share no memory and, on Heroku, no disk: they share only
the database. So each process counts in memory (a dict under a lock, as cheap on the ingest path
as a prometheus_client counter) and adds its counts to the `counters` table about once a second
(FLUSHER.start), and at exit; /metrics adds its own process's first, then renders the table.
Delivery states and the backlog are read from the deliveries themselves.

Counts are kept in memory until a flush commits them, so a storage outage delays them rather than
losing them; a process killed by SIGKILL loses at most its last second of counts.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import math
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa
from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from hookrelay import health, history
from hookrelay.database import counters

if TYPE_CHECKING:
    from hookrelay.store import Store

logger = logging.getLogger(__name__)
FLUSH_EVERY = 1.0  # seconds between two flushes of a process's counts, when it has some

Key = tuple[str, str]  # (sample name, labels as canonical JSON), the counters table's key
Rows = dict[str, list[tuple[dict[str, str], float]]]  # sample name -> (labels, value) pairs

# Both dialects: PostgreSQL and SQLite (3.24+) have this upsert, and `excluded`.
UPSERT = sa.text(
    "INSERT INTO counters (name, labels, value) VALUES (:name, :labels, :value) "
    "ON CONFLICT (name, labels) DO UPDATE SET value = counters.value + excluded.value"
)


class Tally:
    """Counts made in this process and not yet in the database."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._counts: dict[Key, float] = {}

    def __bool__(self) -> bool:
        return bool(self._counts)

    def add(self, increments: Iterable[tuple[Key, float]]) -> None:
        with self._lock:
            for key, amount in increments:
                self._counts[key] = self._counts.get(key, 0.0) + amount

    def flush(self, store: Store) -> None:
        """Add the counts to the database in one transaction, and forget them.

        On failure they are kept for the next flush, and the error is raised. One flush at a time,
        so a scrape that flushes also waits for the flush the thread may have under way.
        """
        with self._flushing:
            with self._lock:
                taken, self._counts = self._counts, {}
            if not taken:
                return
            # In key order: two processes updating the same rows lock them in the same order,
            # so PostgreSQL never has to break a deadlock between them.
            rows = [{"name": n, "labels": lb, "value": v} for (n, lb), v in sorted(taken.items())]
            try:
                with store.transaction() as conn:
                    conn.execute(UPSERT, rows)
            except BaseException:
                self.add(taken.items())
                raise


PENDING = Tally()


@functools.lru_cache(maxsize=4096)
def _key(name: str, label_names: tuple[str, ...], values: tuple[str, ...]) -> Key:
    if len(values) != len(label_names):
        raise ValueError(f"{name} takes labels {label_names}, got {values!r}")
    text = json.dumps(dict(zip(label_names, map(str, values), strict=True)), sort_keys=True)
    return name, text


class Counter:
    """A counter family, used as prometheus_client's is: `EVENTS.labels(source, outcome).inc()`."""

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], tally: Tally = PENDING
    ) -> None:
        self.name, self.documentation, self.label_names = name, documentation, tuple(labels)
        self.tally = tally

    def labels(self, *values: str) -> Count:
        return Count(self.tally, _key(f"{self.name}_total", self.label_names, values))

    def family(self, rows: Rows) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.label_names)
        for labels, value in rows.get(f"{self.name}_total", []):
            family.add_metric([labels.get(n, "") for n in self.label_names], value)
        return family


@dataclass(frozen=True, slots=True)
class Count:
    tally: Tally
    key: Key

    def inc(self, amount: float = 1.0) -> None:
        self.tally.add([(self.key, amount)])


class Histogram:
    """A histogram family: `LATENCY.labels(destination).observe(seconds)`. Stored as the samples
    Prometheus shows, cumulative `_bucket` rows (the +Inf one is the count) and a `_sum` row."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str],
        buckets: Sequence[float],
        tally: Tally = PENDING,
    ) -> None:
        self.name, self.documentation, self.label_names = name, documentation, tuple(labels)
        self.bounds = (*sorted(float(b) for b in buckets), math.inf)
        self.tally = tally

    def labels(self, *values: str) -> Observation:
        return Observation(self, values)

    def observe(self, values: tuple[str, ...], amount: float) -> None:
        names = (*self.label_names, "le")
        increments = [
            (_key(f"{self.name}_bucket", names, (*values, _le(b))), 1.0)
            for b in self.bounds
            if amount <= b
        ]
        increments.append((_key(f"{self.name}_sum", self.label_names, values), amount))
        self.tally.add(increments)

    def family(self, rows: Rows) -> Metric:
        buckets: dict[tuple[str, ...], list[tuple[float, float]]] = {}
        for labels, value in rows.get(f"{self.name}_bucket", []):
            bound = float(labels["le"])
            buckets.setdefault(self._values(labels), []).append((bound, value))
        sums = {self._values(lb): v for lb, v in rows.get(f"{self.name}_sum", [])}
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)
        for values, found in sorted(buckets.items()):
            cumulative = [(_le(b), v) for b, v in sorted(found)]
            family.add_metric(list(values), cumulative, sums.get(values, 0.0))
        return family

    def _values(self, labels: dict[str, str]) -> tuple[str, ...]:
        return tuple(labels.get(n, "") for n in self.label_names)


@dataclass(frozen=True, slots=True)
class Observation:
    histogram: Histogram
    values: tuple[str, ...]

    def observe(self, amount: float) -> None:
        self.histogram.observe(self.values, amount)


def _le(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(bound)


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
FAMILIES = (EVENTS, ATTEMPTS, LATENCY)


class Flusher:
    """The thread that adds this process's counts to the database about once a second."""

    def __init__(self, tally: Tally = PENDING) -> None:
        self.tally = tally
        self.store: Store | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._failing: str | None = None  # the last failure's type, until a flush succeeds

    def start(self, store: Store) -> None:
        """Flush into `store` from now on; start the thread (and the flush at exit) once. Each
        process that counts (a gunicorn worker, `relay worker`) calls it, after any fork; a
        later call only changes the store (a process has one; tests start many)."""
        with self._lock:
            self.store = store
            if self._thread is None:
                atexit.register(self.flush)
            if self._thread is None or not self._thread.is_alive():  # not alive: after a fork
                self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
                self._thread.start()

    def stop(self, store: Store) -> None:
        """Flush what is left into `store`, and flush there no more: it is about to close."""
        with self._lock:
            if self.store is store:
                self.flush()
                self.store = None

    def flush(self) -> None:
        """Flush now. The counts of a failed flush are kept for the next; the failure is logged
        (its type only) once, not every second while the database is down."""
        if not self.tally or self.store is None:
            return
        try:
            self.tally.flush(self.store)
        except Exception as exc:  # whatever the driver raises, the thread must go on
            if self._failing != type(exc).__name__:
                self._failing = type(exc).__name__
                logger.error("metrics not saved (%s); kept for the next try", self._failing)
            return
        if self._failing:
            self._failing = None
            logger.info("metrics saved again")

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_EVERY)
            self.flush()


FLUSHER = Flusher()


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def render(store: Store) -> bytes:
    """The Prometheus text for /metrics: every process's counts, this process's included (it
    flushes first), and the deliveries by state. Raises when the database does not answer."""
    PENDING.flush(store)
    rows = _read(store)
    return generate_latest(_Families([f.family(rows) for f in FAMILIES] + _gauges(store)))


def _read(store: Store) -> Rows:
    rows: Rows = {}
    with store.engine.connect() as conn:
        for name, labels, value in conn.execute(
            sa.select(counters).order_by(counters.c.name, counters.c.labels)
        ):
            rows.setdefault(name, []).append((json.loads(labels), value))
    return rows


def _gauges(store: Store) -> list[Metric]:
    """What the tables hold now: deliveries by state, the backlog, each destination's health."""
    states = GaugeMetricFamily(
        "hookrelay_deliveries",
        "Deliveries stored, by destination and status",
        labels=["destination", "status"],
    )
    backlog = GaugeMetricFamily(
        "hookrelay_backlog", "Deliveries waiting to be sent, by destination", labels=["destination"]
    )
    for (destination, status), n in sorted(history.counts(store).items()):
        states.add_metric([destination, status], n)
        if status == "pending":
            backlog.add_metric([destination], n)
    conditions = GaugeMetricFamily(
        "hookrelay_destination_state",
        "1 for the state each destination is in (ok, throttled, open); listed once it had trouble",
        labels=["destination", "state"],
    )
    for h, state in ((h, s) for h in health.read_all(store) for s in ("ok", "throttled", "open")):
        conditions.add_metric([h.destination, state], float(h.state == state))
    return [states, backlog, conditions]
