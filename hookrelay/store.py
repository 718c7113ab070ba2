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
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from hookrelay import wakeups
from hookrelay.alerts import state as alert_state
from hookrelay.claims import (
    CLAIMS,
    DUE,
    DUE_TO,
    ORPHANS,
    READ_CLAIMED,
    RECORD,
    Claiming,
    Delivery,
    Outcome,
)
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
        self._fifos = wakeups.fifo_directory(self.engine.url) if self.dialect == "sqlite" else None
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
                        (new_id(), event_id, m, d, "pending", 0, now, now, now) for m, d in targets
                    ]
        with self.transaction(wakes=True) as conn:
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
    def transaction(self, wakes: bool = False) -> Iterator[Connection]:
        """A write transaction; `wakes`: it makes deliveries due, so it rings the workers of every
        process (hookrelay.wakeups) once committed.

        On SQLite, writers of every process first queue on a file lock, woken by the kernel the
        moment it is free, rather than sleeping in SQLite's busy handler; BEGIN IMMEDIATE then
        takes SQLite's write lock at once, with nothing to upgrade."""
        with self._write_lock, self.engine.begin() as conn:
            if self.dialect == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn
            if wakes and self.dialect == "postgresql":
                conn.exec_driver_sql(f"NOTIFY {wakeups.CHANNEL}")  # sent at commit
        if wakes and self._fifos:
            wakeups.ring_fifos(self._fifos)

    def exclusive(self, name: str) -> AbstractContextManager[None]:
        """Hold the lock called `name` in every process that uses this database."""
        return self._locks.hold(name)

    # --- delivery -------------------------------------------------------------------------------

    def claim_due(
        self, limit: int, lease: float, destinations: Iterable[str] | None = None
    ) -> list[Delivery]:
        """Atomically claim up to `limit` due deliveries (to `destinations`, default any) for
        `lease` seconds. Nothing due is found by a read, without the write lock."""
        claiming = DUE if destinations is None else DUE_TO
        params = {"now": self.clock(), "names": list(destinations or ())}
        with self.engine.connect() as conn:
            if conn.execute(claiming.probe, params).first() is None:
                return []
        return self._claim(claiming, params, limit, lease)

    def claim_orphans(self, known: Iterable[str], limit: int, lease: float) -> list[Delivery]:
        """Claim pending deliveries to a destination not in `known`, due or not (none will be
        sent again), unless a live claim holds them."""
        return self._claim(ORPHANS, {"now": self.clock(), "names": list(known)}, limit, lease)

    def _claim(
        self, claiming: Claiming, params: dict[str, Any], limit: int, lease: float
    ) -> list[Delivery]:
        """Mark up to `limit` deliveries as ours, then read them with their events."""
        now = params["now"]
        values = {"limit": limit, "claim": new_id(), "until": now + lease}
        with self.transaction() as conn:
            ids = list(conn.execute(claiming.claim, {**params, **values}).scalars())
            if not ids:
                return []
            return [Delivery(*row) for row in conn.execute(READ_CLAIMED, {"ids": ids})]

    def record(self, outcomes: Sequence[Outcome]) -> int:
        """Record a batch's outcomes and attempts in one transaction, with a fixed number of
        statements whatever its size; returns how many still held their claim (a late answer
        changes nothing but is logged, unless its delivery was erased meanwhile)."""
        if not outcomes:
            return 0
        now, ids = self.clock(), [o.delivery.id for o in outcomes]
        with self.transaction() as conn:
            held = dict(conn.execute(CLAIMS, {"ids": ids}).all())  # id -> its claim now
            kept = [
                o
                for o in outcomes
                if o.delivery.id in held and held[o.delivery.id] == o.delivery.claim
            ]
            if kept:
                conn.execute(
                    RECORD,
                    [
                        {
                            "the_id": o.delivery.id,
                            "the_claim": o.delivery.claim,
                            "status": o.status,
                            "attempts": o.delivery.attempts + o.is_attempt,
                            "last_error": o.detail if o.status != "delivered" else None,
                            "next_attempt_at": o.next_attempt_at or now,
                            "updated_at": now,
                        }
                        for o in kept
                    ],
                )
            logged = [
                {
                    "delivery_id": o.delivery.id,
                    "started_at": o.started_at,
                    "duration_ms": o.duration_ms,
                    "outcome": o.status,
                    "http_status": o.http_status,
                    "detail": o.detail,
                }
                for o in outcomes
                if o.delivery.id in held
            ]
            if logged:
                conn.execute(attempts.insert(), logged)
            dead = [o for o in kept if o.status == "dead"]
            if dead:  # counted for hookrelay.alerts, with the outcomes that say so
                alert_state.note_dead(conn, dead, now)
        return len(kept)

    def replay(
        self,
        event_ids: Sequence[str] = (),
        dead: bool = False,
        destination: str | None = None,
        *,
        states: Sequence[Status] = ("pending", "skipped", "dead"),
        delivery_ids: Sequence[str] = (),
    ) -> int:
        """Make deliveries due again with a fresh attempt budget; returns how many.

        Only deliveries in `states`: by default every state but `delivered`, so a replay never
        sends again what reached its destination unless asked to. `dead=True` means
        `states=("dead",)`; `event_ids`, `delivery_ids` and `destination`, when given, narrow the
        choice. A delivery a worker holds at this moment is left to it.
        """
        where: list[sa.ColumnElement[bool]] = [
            deliveries.c.status.in_(["dead"] if dead else list(states))
        ]
        if event_ids:
            where.append(deliveries.c.event_id.in_(list(event_ids)))
        if delivery_ids:
            where.append(deliveries.c.id.in_(list(delivery_ids)))
        if destination:
            where.append(deliveries.c.destination == destination)
        now = self.clock()
        with self.transaction(wakes=True) as conn:
            return conn.execute(
                deliveries.update()
                .where(*where, deliveries.c.claimed_by.is_(None))
                .values(
                    status="pending",
                    attempts=0,
                    next_attempt_at=now,
                    updated_at=now,
                    waiting_since=now,
                )
            ).rowcount
