"""The database: the relay's tables, their creation, and each dialect's engine settings.

SQLite and PostgreSQL differ only here and in a few attributes of Store: the URL chooses
(sqlite:///path, postgresql://... or Heroku's postgres://).
"""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateIndex, CreateTable

from hookrelay.errors import RelayError

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
    # When it last started waiting: stored, or replayed (a backlog's age, hookrelay.alerts).
    sa.Column("waiting_since", sa.Float),
    # What a claim reads, "due for destination D" (also: pending ones, by destination).
    sa.Index("deliveries_due_to", "status", "destination", "next_attempt_at"),
    sa.Index("deliveries_event", "event_id"),
    # The admin console: its deliveries list of one status, newest first, and the counts of the
    # last 24 hours, both read from this index alone (hookrelay.history, hookrelay.activity).
    sa.Index("deliveries_status_id", "status", "id", "destination"),
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
    sa.Index("attempts_started", "started_at"),  # the last 24 hours (hookrelay.activity)
)
counters = sa.Table(  # what hookrelay.metrics counted, added up from every process
    "counters",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),  # a sample's name, e.g. ..._total
    sa.Column("labels", sa.Text, primary_key=True),  # JSON, keys sorted: one text per label set
    sa.Column("value", sa.Float, nullable=False),
)
health = sa.Table(  # each destination's health, shared by every process (hookrelay.health)
    "destination_health",
    metadata,
    sa.Column("destination", sa.String(100), primary_key=True),
    sa.Column("state", sa.String(10), nullable=False),  # ok, throttled or open
    sa.Column("failures", sa.Integer, nullable=False),  # consecutive failed attempts
    sa.Column("paused_until", sa.Float, nullable=False),  # nothing is sent to it before then
    sa.Column("since", sa.Float),  # when it stopped being ok
    sa.Column("last_error", sa.Text),
    sa.Column("updated_at", sa.Float, nullable=False),
)
alerts = sa.Table(  # what hookrelay.alerts has to tell, one row per kind and destination
    "alerts",
    metadata,
    sa.Column("kind", sa.String(20), primary_key=True),  # dead, backlog or config_refused
    sa.Column("subject", sa.String(100), primary_key=True),  # a destination, or ""
    sa.Column("firing", sa.Boolean, nullable=False),  # the condition holds now
    sa.Column("reported", sa.Boolean, nullable=False),  # a message said so: "resolved" is owed
    sa.Column("since", sa.Float),  # when it started firing
    sa.Column("unsent", sa.Integer, nullable=False),  # occurrences no message has told yet
    sa.Column("unsent_since", sa.Float),  # the first of them: the message waits alert_wait
    sa.Column("total", sa.Integer, nullable=False),  # occurrences since it started firing
    sa.Column("last_error", sa.Text),  # masked: no participant's data
    sa.Column("last_at", sa.Float),  # the last occurrence
    sa.Column("sent_at", sa.Float),  # the last message: the next waits alert_every after it
)
alert_messages = sa.Table(  # the alerts' outbox: one row per message and channel, until sent
    "alert_messages",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("channel", sa.String(32), nullable=False),  # hookrelay.alerts.channels: its key
    sa.Column("body", sa.Text, nullable=False),  # the Message, as JSON
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_try_at", sa.Float, nullable=False),
    sa.Column("claimed_until", sa.Float, nullable=False),  # a process is sending it until then
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
)
schema_version = sa.Table(
    "schema_version", metadata, sa.Column("version", sa.Integer, nullable=False)
)
SCHEMA_VERSION = 6
#: What each version changed beyond new tables and indexes, which create_schema adds anyway: SQL
#: run once, in order, when an older database is opened.
STEPS: dict[int, tuple[str, ...]] = {
    2: (),  # the counters table
    3: ("DROP INDEX IF EXISTS deliveries_due",),  # replaced by deliveries_due_to
    4: (),  # the destination_health table
    5: (),  # the admin console's indexes: deliveries_status_id, attempts_started
    6: (  # alerts: their tables, and how long each pending delivery has waited
        "ALTER TABLE deliveries ADD COLUMN waiting_since FLOAT",
        "UPDATE deliveries SET waiting_since = updated_at WHERE status = 'pending'",
    ),
}
EVENT_COLUMNS = "id, source, format, dedupe_key, payload, received_at"
DELIVERY_COLUMNS = (
    "id, event_id, mapping, destination, status, attempts, next_attempt_at, updated_at, "
    "waiting_since"
)
SCHEMA_LOCK = 0x686F6F6B  # "hook": the advisory lock id schema changes take on PostgreSQL
MAX_ROWS = 1000  # rows per INSERT: 8,000 parameters, under SQLite's 32,766


def new_id() -> str:
    """32 hex digits: milliseconds since the epoch, then 80 random bits.

    Time-ordered, so new rows land at the end of the primary-key index. Not uuid4: os.urandom
    releases the GIL at every call, and the group-commit writer would wait to get it back twice
    per event. A generator of its own, reseeded in each forked process (so gunicorn's workers
    draw different bits), leaves the `random` module's state to others.
    """
    return f"{time.time_ns() // 1_000_000:012x}{_ids.getrandbits(80):020x}"


def unindexed(column: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
    """`column` in a form no index can serve: SQLite plans without statistics (the relay never
    runs ANALYZE) and, offered an index on a column compared to a value, takes it even when
    another path reads a thousand times fewer rows. Its own advice is a unary +; coalesce()
    says the same on PostgreSQL, whose statistics lead it to the right path anyway."""
    return sa.func.coalesce(column, "")


def id_at(timestamp: float) -> str:
    """The smallest id new_id gives at `timestamp` (seconds): ids compare as their times do, so
    a time range of rows is a range of their primary key."""
    return f"{int(timestamp * 1000):012x}" + "0" * 20


_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def create_schema(conn: Connection) -> None:
    """Create the tables, or check they are this version's, or bring an older version's up to
    this one, in the caller's write transaction.

    Safe when many processes start at once: SQLite's writers queue on the store's file lock,
    PostgreSQL's on an advisory lock (its CREATE TABLE IF NOT EXISTS is not safe against a
    concurrent one).
    """
    if conn.dialect.name == "postgresql":
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
    elif found < SCHEMA_VERSION:
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for sql in STEPS[version]:
                conn.exec_driver_sql(sql)
        conn.execute(schema_version.update().values(version=SCHEMA_VERSION))
        logger.info("database schema upgraded from version %d to %d", found, SCHEMA_VERSION)


def is_current(engine: Engine) -> bool:
    """Whether the tables are there at this version: one read, no write lock."""
    try:
        with engine.connect() as conn:
            found = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
    except sa.exc.SQLAlchemyError:  # no tables yet
        return False
    return found == SCHEMA_VERSION


def insert_rows(
    conn: Connection,
    table: str,
    columns: str,
    rows: list[tuple[Any, ...]],
    conflict: str | None = None,
) -> int:
    """Multi-row INSERT (ON CONFLICT DO NOTHING when `conflict` names the unique columns);
    returns how many rows went in. Written in the driver's own parameter style."""
    count = 0
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    one = "(" + ", ".join([mark] * (columns.count(",") + 1)) + ")"
    for start in range(0, len(rows), MAX_ROWS):
        chunk = rows[start : start + MAX_ROWS]
        sql = f"INSERT INTO {table} ({columns}) VALUES {', '.join([one] * len(chunk))}"
        if conflict:
            sql += f" ON CONFLICT ({conflict}) DO NOTHING"
        count += conn.exec_driver_sql(sql, tuple(v for row in chunk for v in row)).rowcount
    return count


def engine(url: str, timeout: float) -> Engine:
    """The engine for a storage URL; `timeout` is how long SQLite waits for its lock."""
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
    # autocommit, and writes BEGIN IMMEDIATE (Store.transaction), so no transaction ever has to
    # upgrade a read lock, which fails at once under contention.
    dbapi_conn.isolation_level = None
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
        dbapi_conn.execute(f"PRAGMA {pragma}")
