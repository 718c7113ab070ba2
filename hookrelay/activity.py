"""The last 24 hours at a glance, for the admin console's overview: per destination, where the
deliveries stand, the oldest pending one and the last error; per source, the events received;
per minute, events received and deliveries delivered.

Names, counts, times and error messages only, never a payload. The reads of the last day go
through indexes (deliveries_status_id, since a delivery's id begins with its time;
events_received; attempts_started), so they cost what the day holds, not what the database
does. The all-time counts (hookrelay.history.counts, which /metrics reads too) read every
delivery: Totals reads them at most once a minute.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from hookrelay import history
from hookrelay.database import STATUSES, attempts, deliveries, events, id_at, unindexed
from hookrelay.store import Store

DAY = 86400.0
TOTALS_MAX_AGE = 60.0  # seconds the all-time counts are shown before they are read again


class Totals:
    """The all-time counts by (destination, status), read again when a minute old: they read
    every delivery (about 150 ms for two million on SQLite), and counts of a minute ago serve an
    overview as well. One reader at a time; the others wait for its counts."""

    def __init__(self, max_age: float = TOTALS_MAX_AGE) -> None:
        self._max_age = max_age
        self._read: tuple[float, dict[tuple[str, str], int]] | None = None
        self._lock = threading.Lock()

    def get(self, store: Store) -> tuple[dict[tuple[str, str], int], float]:
        """The counts, and when they were read (a timestamp)."""
        with self._lock:
            if self._read is None or time.time() - self._read[0] > self._max_age:
                self._read = (time.time(), history.counts(store))
            return self._read[1], self._read[0]


@dataclass(slots=True)
class Destination:
    """One destination's deliveries: of the events received since the window began (`recent`)
    and all those stored (`total`), by status."""

    name: str
    recent: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    oldest_pending: float | None = None  # when the event of its oldest pending delivery came
    last_error: str | None = None  # the last failed attempt's detail, within the window
    last_error_at: float | None = None


def destinations(
    store: Store,
    names: list[str],
    since: float,
    totals: dict[tuple[str, str], int] | None = None,
) -> list[Destination]:
    """Each destination in `names`, and any other that deliveries name (one no longer in the
    configuration), by name; `totals` are the all-time counts when already read (Totals)."""
    found = {n: Destination(n) for n in names}
    for (name, status), n in (history.counts(store) if totals is None else totals).items():
        found.setdefault(name, Destination(name)).total[status] = n
    with store.engine.connect() as conn:
        for name, status, n in conn.execute(_recent(since)):
            found.setdefault(name, Destination(name)).recent[status] = n
        for name, oldest in conn.execute(_OLDEST_PENDING):
            found.setdefault(name, Destination(name)).oldest_pending = oldest
        for name, detail, at in conn.execute(_last_errors(since)):
            one = found.setdefault(name, Destination(name))
            one.last_error, one.last_error_at = detail, at
    return [found[n] for n in sorted(found)]


def _recent(since: float) -> sa.Select[Any]:
    """By destination and status, the deliveries stored since `since`: one range of
    deliveries_status_id per status, read from the index alone. (Without the statuses named,
    SQLite would read the whole of deliveries_due_to, whose order suits the GROUP BY.)"""
    return (
        sa.select(deliveries.c.destination, deliveries.c.status, sa.func.count())
        .where(deliveries.c.status.in_(STATUSES), deliveries.c.id >= id_at(since))
        .group_by(deliveries.c.destination, deliveries.c.status)
    )


# Proportional to the backlog, which the relay keeps small unless a destination is down.
_OLDEST_PENDING = (
    sa.select(deliveries.c.destination, sa.func.min(events.c.received_at))
    .join_from(deliveries, events, events.c.id == deliveries.c.event_id)
    .where(deliveries.c.status == "pending")
    .group_by(deliveries.c.destination)
)


def _last_errors(since: float) -> sa.Select[Any]:
    """Each destination's last failed attempt since `since`: one that ended its delivery dead or
    left it to retry (a skip is a reason, not an error)."""
    failed = (
        sa.select(sa.func.max(attempts.c.id))
        .join_from(attempts, deliveries, deliveries.c.id == attempts.c.delivery_id)
        .where(attempts.c.started_at >= since, attempts.c.outcome.in_(["pending", "dead"]))
        .group_by(deliveries.c.destination)
    )
    return (
        sa.select(deliveries.c.destination, attempts.c.detail, attempts.c.started_at)
        .join_from(attempts, deliveries, deliveries.c.id == attempts.c.delivery_id)
        .where(attempts.c.id.in_(failed.scalar_subquery()))
    )


def received_by_source(store: Store, since: float) -> dict[str, int]:
    """Events received since `since`, by source."""
    source = unindexed(events.c.source)  # else SQLite reads all of events_dedupe, by source
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(source, sa.func.count()).where(events.c.received_at >= since).group_by(source)
        )
        return dict(sorted((s, n) for s, n in rows))


def per_minute(store: Store, since: float, minutes: int) -> tuple[list[int], list[int]]:
    """Events received, and deliveries delivered, in each minute from `since` on: two lists of
    `minutes` counts, the oldest minute first."""
    received, delivered = [0] * minutes, [0] * minutes
    with store.engine.connect() as conn:
        minute = _minute(conn.dialect.name, events.c.received_at, since)
        for m, n in conn.execute(
            sa.select(minute, sa.func.count()).where(events.c.received_at >= since).group_by(minute)
        ):
            if 0 <= m < minutes:
                received[m] = n
        minute = _minute(conn.dialect.name, attempts.c.started_at, since)
        for m, n in conn.execute(
            sa.select(minute, sa.func.count())
            .where(attempts.c.started_at >= since, attempts.c.outcome == "delivered")
            .group_by(minute)
        ):
            if 0 <= m < minutes:
                delivered[m] = n
    return received, delivered


def _minute(dialect: str, column: sa.ColumnElement[float], since: float) -> sa.ColumnElement[int]:
    """The minute of `column` since `since`, counted from 0. CAST truncates on SQLite but rounds
    on PostgreSQL, which has floor(). Written as literals, not parameters, so that PostgreSQL
    sees the same expression in SELECT and GROUP BY."""
    offset = (column - sa.literal_column(repr(float(since)))) / sa.literal_column("60.0")
    if dialect == "postgresql":
        return sa.cast(sa.func.floor(offset), sa.Integer)
    return sa.cast(offset, sa.Integer)
