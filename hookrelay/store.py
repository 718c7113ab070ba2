"""Store: events, their deliveries and every attempt, on SQLite or PostgreSQL (SQLAlchemy Core).

A 2xx means "stored durably", so ingest commits before it answers. Many requests share one commit
(group commit): request threads hand their events to one writer thread, which writes everything
waiting in one transaction and one fsync, then wakes them all. Claims mark deliveries with a claim
token and push `next_attempt_at` one lease ahead: a worker that dies loses its claim when the lease
ends, and a late answer from it cannot overwrite a newer claim's outcome.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import CreateIndex, CreateTable

from hookrelay.errors import RelayError, StorageUnavailable
from hookrelay.sources import Incoming

logger = logging.getLogger(__name__)

Status = Literal["pending", "delivered", "skipped", "dead"]
STATUSES: tuple[Status, ...] = ("pending", "delivered", "skipped", "dead")

metadata = sa.MetaData()
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("source", sa.String(100), nullable=False),
    sa.Column("format", sa.String(20), nullable=False),
    sa.Column("dedupe_key", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Index("events_dedupe", "source", "dedupe_key", unique=True),
    sa.Index("events_received", "received_at"),
)
deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column(
        "event_id", sa.String(32), sa.ForeignKey("events.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("mapping", sa.String(100), nullable=False),
    sa.Column("destination", sa.String(100), nullable=False),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("claimed_by", sa.String(32)),
    sa.Column("last_error", sa.Text),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("deliveries_due", "status", "next_attempt_at"),
    sa.Index("deliveries_event", "event_id"),
)
attempts = sa.Table(
    "attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "delivery_id",
        sa.String(32),
        sa.ForeignKey("deliveries.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("duration_ms", sa.Integer, nullable=False),
    sa.Column("outcome", sa.String(10), nullable=False),
    sa.Column("http_status", sa.Integer),
    sa.Column("detail", sa.Text),
    sa.Index("attempts_delivery", "delivery_id"),
)


EVENT_COLUMNS = "id, source, format, dedupe_key, payload, received_at"
DELIVERY_COLUMNS = (
    "id, event_id, mapping, destination, status, attempts, next_attempt_at, updated_at"
)
MAX_ROWS = 1000  # rows per INSERT: 8,000 parameters, under SQLite's 32,766

Job = tuple[str, str, Sequence[Incoming], Sequence[tuple[str, str]]]


schema_version = sa.Table(
    "schema_version", metadata, sa.Column("version", sa.Integer, nullable=False)
)
SCHEMA_VERSION = 1  # a change to the tables adds a step from the previous version here
SCHEMA_LOCK = 0x686F6F6B  # "hook": the advisory lock id schema changes take on PostgreSQL


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


def new_id() -> str:
    """32 hex digits: milliseconds since the epoch, then 80 random bits.

    Time-ordered, so new rows land at the end of the primary-key index. Not uuid4: os.urandom
    releases the GIL at every call, and the group-commit writer would wait to get it back twice
    per event. (`random` is reseeded in each forked process, so workers draw different bits.)
    """
    return f"{time.time_ns() // 1_000_000:012x}{random.getrandbits(80):020x}"


class Store:
    """The relay's storage; the URL chooses the dialect (sqlite:///..., postgresql://...)."""

    def __init__(
        self, url: str, timeout: float = 10.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.engine = _engine(url, timeout)
        self.clock = clock
        self.dialect = self.engine.dialect.name
        self._placeholder = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        self._write_lock = _write_lock(url)
        self._writer = _GroupCommit(self._write_batch, timeout)
        try:
            self.create_schema()
        except BaseException:
            self.close()
            raise

    def create_schema(self) -> None:
        """Create the tables, or check they are this version's. Safe when many processes start
        at once: SQLite's writers queue on the file lock, PostgreSQL's on an advisory lock (its
        CREATE TABLE IF NOT EXISTS is not safe against a concurrent one)."""
        with self._transaction() as conn:
            if self.dialect == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
            for table in metadata.sorted_tables:
                conn.execute(CreateTable(table, if_not_exists=True))
                for index in table.indexes:
                    conn.execute(CreateIndex(index, if_not_exists=True))
            found = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
            if found is None:
                conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))
            elif found > SCHEMA_VERSION:
                raise RelayError(
                    f"the database has schema version {found}, newer than this relay's "
                    f"{SCHEMA_VERSION}: upgrade hookrelay"
                )

    def close(self) -> None:
        self.engine.dispose()
        if isinstance(self._write_lock, _FileLock):
            self._write_lock.close()

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
        with self._transaction() as conn:
            inserted = self._insert_rows(
                conn, "events", EVENT_COLUMNS, new_events, "source, dedupe_key"
            )
            existing: dict[tuple[str, str], str] = {}
            if inserted < len(new_events):  # some were stored before: find the first ids
                existing = self._existing(conn, list(first))
                stored_here = {i for key, i in first.items() if existing.get(key) == i}
                existing = {k: i for k, i in existing.items() if i != first[k]}
                new_deliveries = [d for d in new_deliveries if d[1] in stored_here]
            self._insert_rows(conn, "deliveries", DELIVERY_COLUMNS, new_deliveries)
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

    def _insert_rows(
        self,
        conn: Connection,
        table: str,
        columns: str,
        rows: list[tuple[Any, ...]],
        conflict: str | None = None,
    ) -> int:
        """Multi-row INSERT (ON CONFLICT DO NOTHING when `conflict` names the unique columns);
        returns how many rows went in."""
        count = 0
        one = "(" + ", ".join([self._placeholder] * (columns.count(",") + 1)) + ")"
        for start in range(0, len(rows), MAX_ROWS):
            chunk = rows[start : start + MAX_ROWS]
            sql = f"INSERT INTO {table} ({columns}) VALUES {', '.join([one] * len(chunk))}"
            if conflict:
                sql += f" ON CONFLICT ({conflict}) DO NOTHING"
            count += conn.exec_driver_sql(sql, tuple(v for row in chunk for v in row)).rowcount
        return count

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
    def _transaction(self) -> Iterator[Connection]:
        """A write transaction. On SQLite, writers of every process first queue on a file lock,
        woken by the kernel the moment it is free, rather than sleeping in SQLite's busy handler;
        BEGIN IMMEDIATE then takes SQLite's write lock at once, with nothing to upgrade."""
        with self._write_lock, self.engine.begin() as conn:
            if self.dialect == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn

    # --- delivery -------------------------------------------------------------------------------

    def claim_due(
        self, limit: int, lease: float, destinations: Iterable[str] | None = None
    ) -> list[Delivery]:
        """Atomically claim up to `limit` due deliveries for `lease` seconds."""
        now, claim = self.clock(), new_id()
        due = (
            sa.select(deliveries.c.id)
            .where(deliveries.c.status == "pending", deliveries.c.next_attempt_at <= now)
            .order_by(deliveries.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        if destinations is not None:
            due = due.where(deliveries.c.destination.in_(list(destinations)))
        with self._transaction() as conn:
            claimed = conn.execute(
                deliveries.update()
                .where(deliveries.c.id.in_(due.scalar_subquery()))
                .values(claimed_by=claim, next_attempt_at=now + lease, updated_at=now)
            ).rowcount
            if not claimed:
                return []
            rows = conn.execute(
                sa.select(
                    deliveries,
                    events.c.source,
                    events.c.format,
                    events.c.payload,
                    events.c.received_at,
                )
                .join(events, events.c.id == deliveries.c.event_id)
                .where(deliveries.c.claimed_by == claim)
            ).mappings()
            return [
                Delivery(
                    r["id"],
                    r["event_id"],
                    r["mapping"],
                    r["destination"],
                    r["attempts"],
                    claim,
                    r["source"],
                    r["format"],
                    r["payload"],
                    r["received_at"],
                )
                for r in rows
            ]

    def record(self, outcomes: Sequence[Outcome]) -> int:
        """Record outcomes in one transaction; returns how many still held their claim."""
        now, kept = self.clock(), 0
        with self._transaction() as conn:
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
            conn.execute(
                attempts.insert(),
                [
                    dict(
                        delivery_id=o.delivery.id,
                        started_at=o.started_at,
                        duration_ms=o.duration_ms,
                        outcome=o.status,
                        http_status=o.http_status,
                        detail=o.detail,
                    )
                    for o in outcomes
                ],
            )
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
        with self._transaction() as conn:
            return conn.execute(
                deliveries.update()
                .where(*where, deliveries.c.claimed_by.is_(None))
                .values(status="pending", attempts=0, next_attempt_at=now, updated_at=now)
            ).rowcount

    # --- reading --------------------------------------------------------------------------------

    def list_events(self, status: Status | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Newest events first, each with its deliveries (ids, names and states only)."""
        query = sa.select(events.c.id, events.c.source, events.c.received_at)
        if status:
            query = query.where(
                events.c.id.in_(
                    sa.select(deliveries.c.event_id).where(deliveries.c.status == status)
                )
            )
        query = query.order_by(events.c.received_at.desc()).limit(limit)
        with self.engine.connect() as conn:
            found = [dict(r) for r in conn.execute(query).mappings()]
            rows = (
                conn.execute(
                    sa.select(
                        deliveries.c.id,
                        deliveries.c.event_id,
                        deliveries.c.mapping,
                        deliveries.c.destination,
                        deliveries.c.status,
                        deliveries.c.attempts,
                        deliveries.c.last_error,
                    )
                    .where(deliveries.c.event_id.in_([e["id"] for e in found]))
                    .order_by(deliveries.c.destination)
                )
                .mappings()
                .all()
            )
        for event in found:
            event["deliveries"] = [dict(r) for r in rows if r["event_id"] == event["id"]]
        return found

    def known_events(self, event_ids: Sequence[str]) -> set[str]:
        with self.engine.connect() as conn:
            return set(
                conn.execute(sa.select(events.c.id).where(events.c.id.in_(event_ids))).scalars()
            )

    def attempts_of(self, delivery_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [
                dict(r)
                for r in conn.execute(
                    sa.select(attempts)
                    .where(attempts.c.delivery_id == delivery_id)
                    .order_by(attempts.c.id)
                ).mappings()
            ]

    def counts(self) -> dict[tuple[str, str], int]:
        """Deliveries by (destination, status): the backlog and outcomes /metrics reports."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(deliveries.c.destination, deliveries.c.status, sa.func.count()).group_by(
                    deliveries.c.destination, deliveries.c.status
                )
            )
            return {(d, s): n for d, s, n in rows}


def _engine(url: str, timeout: float) -> Engine:
    if url.startswith("postgres://"):  # Heroku's spelling
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": timeout}
        )
        sa.event.listen(engine, "connect", _sqlite_connect)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets reads go on while ingest writes; synchronous=FULL fsyncs every commit, so a 2xx
    # survives power loss. The driver's own transaction handling is off: reads run in
    # autocommit, and writes BEGIN IMMEDIATE (Store._transaction), so no transaction ever has to
    # upgrade a read lock, which fails at once under contention.
    dbapi_conn.isolation_level = None
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
        dbapi_conn.execute(f"PRAGMA {pragma}")


def _write_lock(url: str) -> AbstractContextManager[Any]:
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        return nullcontext()  # PostgreSQL queues writers itself, row by row
    return _FileLock(url[len("sqlite:///") :] + ".lock")


class _FileLock:
    """One writer at a time across threads and processes; waiting is a blocking flock."""

    def __init__(self, path: str) -> None:
        self.path, self._thread_lock = path, threading.Lock()
        self._file: Any = None
        self._pid = 0

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        if self._pid != os.getpid():  # after a fork, a shared open file would share the lock
            self._file, self._pid = open(self.path, "a"), os.getpid()
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._thread_lock.release()

    def close(self) -> None:
        with self._thread_lock:
            if self._file is not None:
                self._file.close()
                self._file, self._pid = None, 0


class _GroupCommit:
    """Many request threads, one writer thread, one transaction per batch of waiting requests.

    The writer takes everything queued while the previous commit was fsyncing, so the number of
    commits per second adapts to the disk, not to the request rate.
    """

    max_batch = 500

    def __init__(self, write: Callable[[list[Any]], list[Any]], wait: float) -> None:
        self._write, self.wait = write, wait  # wait: seconds before a request answers 503
        self._queue: queue.SimpleQueue[tuple[Any, Future[Any]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pid = 0

    def submit(self, job: Any) -> Any:
        self._start()
        future: Future[Any] = Future()
        self._queue.put((job, future))
        try:
            return future.result(timeout=self.wait)
        except (SQLAlchemyError, TimeoutError) as exc:
            logger.error("storage unavailable: %s", type(exc).__name__)
            raise StorageUnavailable("storage is unavailable; retry later") from None

    def _start(self) -> None:
        # Started on first use, in the process that uses it: gunicorn forks after import.
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    threading.Thread(target=self._run, name="group-commit", daemon=True).start()
                    self._pid = os.getpid()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                results = self._write([job for job, _ in batch])
            except Exception as exc:  # every waiting request answers 503; none is half-stored
                for _, future in batch:
                    future.set_exception(exc)
            else:
                for (_, future), result in zip(batch, results, strict=True):
                    future.set_result(result)
