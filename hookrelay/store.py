"""Store: events, their deliveries and every attempt, on SQLite or PostgreSQL (SQLAlchemy Core).

A 2xx means "stored durably", so ingest commits before it answers, many requests sharing one
commit (see hookrelay.commit). Claims mark deliveries with a claim token and push
`next_attempt_at` one lease ahead: a worker that dies loses its claim when the lease ends, and a
late answer from it cannot overwrite a newer claim's outcome. What was stored is read through
hookrelay.history, and erased through hookrelay.retention.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from hookrelay.commit import FileLock, GroupCommit, NamedLocks, write_lock
from hookrelay.database import (
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    Status,
    attempts,
    create_schema,
    deliveries,
    engine,
    events,
    insert_rows,
    is_current,
    new_id,
)
from hookrelay.sources import Incoming

Job = tuple[str, str, Sequence[Incoming], Sequence[tuple[str, str]]]


@dataclass(frozen=True, slots=True)
class Stored:
    event_id: str
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Delivery:
    """A claimed delivery, with what the worker needs to map and send it."""

    id: str
    event_id: str
    mapping: str
    destination: str
    attempts: int
    claim: str
    source: str
    format: str
    payload: str
    received_at: float


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt at a delivery ended in; `pending` means "retry at next_attempt_at"."""

    delivery: Delivery
    status: Status
    started_at: float
    duration_ms: int
    detail: str | None = None
    http_status: int | None = None
    next_attempt_at: float | None = None
    is_attempt: bool = True  # False for a skip decided before anything was sent


#: A claimed Delivery's columns, in the order of its fields.
CLAIMED = [
    *(deliveries.c[c] for c in ("id", "event_id", "mapping", "destination", "attempts")),
    deliveries.c.claimed_by,
    *(events.c[c] for c in ("source", "format", "payload", "received_at")),
]


class Store:
    """The relay's storage; the URL chooses the dialect (sqlite:///..., postgresql://...)."""

    def __init__(
        self, url: str, timeout: float = 10.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.engine = engine(url, timeout)
        self.clock = clock
        self.dialect = self.engine.dialect.name
        self._write_lock = write_lock(url, timeout)
        self._locks = NamedLocks(url, self.engine)
        self._writer = GroupCommit(self._write_batch, timeout)
        try:
            self.create_schema()
        except BaseException:
            self.close()
            raise

    def create_schema(self) -> None:
        """Create or upgrade the tables; only read when they are current, so that commands that
        only read work on a read-only disk."""
        if is_current(self.engine):
            return
        with self.transaction() as conn:
            create_schema(conn)

    def close(self) -> None:
        self.engine.dispose()
        self._locks.close()
        if isinstance(self._write_lock, FileLock):
            self._write_lock.close()

    def writer_is_alive(self) -> bool:
        return self._writer.is_alive()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    # --- ingest ---------------------------------------------------------------------------------

    def store_events(
        self,
        source: str,
        fmt: str,
        incoming: Sequence[Incoming],
        targets: Sequence[tuple[str, str]],
    ) -> list[Stored]:
        """Store events and one pending delivery per (mapping, destination), durably, at once.

        :raise StorageUnavailable: the database did not commit; nothing was stored.
        """
        result: list[Stored] = self._writer.submit((source, fmt, incoming, targets))
        return result

    def _write_batch(self, jobs: list[Job]) -> list[list[Stored]]:
        """Write every waiting request's events in one transaction, with a fixed number of
        statements whatever the batch size: per-row statements would hand the GIL back and forth
        with the request threads at every row, and that, not the disk, would set the pace."""
        now = self.clock()
        first: dict[tuple[str, str], str] = {}  # (source, dedupe key) -> the id it gets here
        new_events, new_deliveries = [], []
        for source, fmt, incoming, targets in jobs:
            for inc in incoming:
                if (source, inc.dedupe_key) not in first:
                    event_id = first[source, inc.dedupe_key] = new_id()
                    new_events.append((event_id, source, fmt, inc.dedupe_key, inc.payload, now))
                    new_deliveries += [
                        (new_id(), event_id, m, d, "pending", 0, now, now) for m, d in targets
                    ]
        with self.transaction() as conn:
            inserted = insert_rows(conn, "events", EVENT_COLUMNS, new_events, "source, dedupe_key")
            existing: dict[tuple[str, str], str] = {}
            if inserted < len(new_events):  # some were stored before: find the first ids
                existing = self._existing(conn, list(first))
                stored_here = {i for key, i in first.items() if existing.get(key) == i}
                existing = {k: i for k, i in existing.items() if i != first[k]}
                new_deliveries = [d for d in new_deliveries if d[1] in stored_here]
            insert_rows(conn, "deliveries", DELIVERY_COLUMNS, new_deliveries)
        return self._answers(jobs, first, existing)

    @staticmethod
    def _answers(
        jobs: list[Job], first: dict[tuple[str, str], str], existing: dict[tuple[str, str], str]
    ) -> list[list[Stored]]:
        """Per request, per event: its id, and whether an earlier one had the same key."""
        seen: set[tuple[str, str]] = set()
        results = []
        for source, _, incoming, _ in jobs:
            stored = []
            for inc in incoming:
                key = (source, inc.dedupe_key)
                stored.append(Stored(existing.get(key, first[key]), key in existing or key in seen))
                seen.add(key)
            results.append(stored)
        return results

    @staticmethod
    def _existing(conn: Connection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """The stored event id of each (source, dedupe key) in `keys`."""
        found = conn.execute(
            sa.select(events.c.source, events.c.dedupe_key, events.c.id).where(
                events.c.dedupe_key.in_([k for _, k in keys])
            )
        )
        wanted = set(keys)
        return {(s, k): i for s, k, i in found if (s, k) in wanted}

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction. On SQLite, writers of every process first queue on a file lock,
        woken by the kernel the moment it is free, rather than sleeping in SQLite's busy handler;
        BEGIN IMMEDIATE then takes SQLite's write lock at once, with nothing to upgrade."""
        with self._write_lock, self.engine.begin() as conn:
            if self.dialect == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn

    def exclusive(self, name: str) -> AbstractContextManager[None]:
        """Hold the lock called `name` in every process that uses this database."""
        return self._locks.hold(name)

    # --- delivery -------------------------------------------------------------------------------

    def claim_due(
        self, limit: int, lease: float, destinations: Iterable[str] | None = None
    ) -> list[Delivery]:
        """Atomically claim up to `limit` due deliveries (to `destinations`, default any) for
        `lease` seconds."""
        due = deliveries.c.next_attempt_at <= self.clock()
        if destinations is not None:
            due &= deliveries.c.destination.in_(list(destinations))
        return self._claim(due, limit, lease)

    def claim_orphans(self, known: Iterable[str], limit: int, lease: float) -> list[Delivery]:
        """Claim pending deliveries to a destination not in `known`, due or not (none will be
        sent again), unless a live claim holds them."""
        free = deliveries.c.claimed_by.is_(None) | (deliveries.c.next_attempt_at <= self.clock())
        return self._claim(free & deliveries.c.destination.not_in(list(known)), limit, lease)

    def _claim(self, where: sa.ColumnElement[bool], limit: int, lease: float) -> list[Delivery]:
        now, claim = self.clock(), new_id()
        chosen = (
            sa.select(deliveries.c.id)
            .where(deliveries.c.status == "pending", where)
            .order_by(deliveries.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with self.transaction() as conn:
            claimed = conn.execute(
                deliveries.update()
                .where(deliveries.c.id.in_(chosen.scalar_subquery()))
                .values(claimed_by=claim, next_attempt_at=now + lease, updated_at=now)
            ).rowcount
            if not claimed:
                return []
            rows = conn.execute(
                sa.select(*CLAIMED)
                .join_from(deliveries, events, events.c.id == deliveries.c.event_id)
                .where(deliveries.c.claimed_by == claim)
            )
            return [Delivery(*row) for row in rows]

    def record(self, outcomes: Sequence[Outcome]) -> int:
        """Record outcomes in one transaction; returns how many still held their claim."""
        now, kept = self.clock(), 0
        with self.transaction() as conn:
            for o in outcomes:
                d = o.delivery
                kept += conn.execute(
                    deliveries.update()
                    .where(deliveries.c.id == d.id, deliveries.c.claimed_by == d.claim)
                    .values(
                        status=o.status,
                        attempts=d.attempts + o.is_attempt,
                        claimed_by=None,
                        last_error=o.detail if o.status != "delivered" else None,
                        next_attempt_at=o.next_attempt_at or now,
                        updated_at=now,
                    )
                ).rowcount
            # A late answer is logged too; an erased delivery (`relay forget`) has no log.
            alive = set(
                conn.execute(
                    sa.select(deliveries.c.id).where(
                        deliveries.c.id.in_([o.delivery.id for o in outcomes])
                    )
                ).scalars()
            )
            logged = [
                dict(
                    delivery_id=o.delivery.id,
                    started_at=o.started_at,
                    duration_ms=o.duration_ms,
                    outcome=o.status,
                    http_status=o.http_status,
                    detail=o.detail,
                )
                for o in outcomes
                if o.delivery.id in alive
            ]
            if logged:
                conn.execute(attempts.insert(), logged)
        return kept

    def replay(
        self, event_ids: Sequence[str] = (), dead: bool = False, destination: str | None = None
    ) -> int:
        """Make deliveries due again with a fresh attempt budget; returns how many."""
        where: list[sa.ColumnElement[bool]] = []
        if event_ids:
            where.append(deliveries.c.event_id.in_(list(event_ids)))
        if dead:
            where.append(deliveries.c.status == "dead")
        if destination:
            where.append(deliveries.c.destination == destination)
        now = self.clock()
        with self.transaction() as conn:
            return conn.execute(
                deliveries.update()
                .where(*where, deliveries.c.claimed_by.is_(None))
                .values(status="pending", attempts=0, next_attempt_at=now, updated_at=now)
            ).rowcount
