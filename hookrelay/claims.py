"""What a claim hands the worker (Delivery) and what its record writes back (Outcome), and the
statements both run, built once per process.

Each claim and each batch's record run them with new values only: building a statement per call
cost more CPU than the database's own work (SQLAlchemy caches the SQL it compiles, not the
statement objects, nor their cache keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import sqlalchemy as sa
from sqlalchemy.sql.dml import ReturningUpdate

from hookrelay.database import Status, deliveries, events

Signal = Literal["up", "down", "throttled"]


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
    is_attempt: bool = True  # False when it spends none of max_attempts (a skip, a 429)
    #: What the attempt says of its destination (hookrelay.health): it answered ("up"), it
    #: failed ("down": 5xx, timeout, refused connection), it asked us to slow down
    #: ("throttled": 429); None when nothing was sent.
    signal: Signal | None = None


#: A claimed Delivery's columns, in the order of its fields.
CLAIMED = [
    *(deliveries.c[c] for c in ("id", "event_id", "mapping", "destination", "attempts")),
    deliveries.c.claimed_by,
    *(events.c[c] for c in ("source", "format", "payload", "received_at")),
]


class Claiming(NamedTuple):
    """A claim's statements, built once: `probe` reads whether any delivery is there to claim,
    `claim` marks up to `limit` of them (by primary key, through the index that serves the
    condition; SKIP LOCKED on PostgreSQL) and returns their ids."""

    probe: sa.Select[tuple[str]]
    claim: ReturningUpdate[tuple[str]]


def claiming(condition: sa.ColumnElement[bool]) -> Claiming:
    chosen = (
        sa.select(deliveries.c.id)
        .where(condition)
        .order_by(deliveries.c.next_attempt_at)
        .limit(sa.bindparam("limit", type_=sa.Integer))
        .with_for_update(skip_locked=True)
    )
    claim = (
        deliveries.update()
        .where(deliveries.c.id.in_(chosen.scalar_subquery()))
        .values(
            claimed_by=sa.bindparam("claim"),
            next_attempt_at=sa.bindparam("until"),
            updated_at=sa.bindparam("now"),
        )
        .returning(deliveries.c.id)
    )
    return Claiming(sa.select(deliveries.c.id).where(condition).limit(1), claim)


_pending = deliveries.c.status == "pending"
_due = deliveries.c.next_attempt_at <= sa.bindparam("now")
_names: sa.BindParameter[list[str]] = sa.bindparam("names", expanding=True)
DUE = claiming(_pending & _due)
DUE_TO = claiming(_pending & _due & deliveries.c.destination.in_(_names))
ORPHANS = claiming(
    _pending & deliveries.c.destination.not_in(_names) & (deliveries.c.claimed_by.is_(None) | _due)
)
READ_CLAIMED = (
    sa.select(*CLAIMED)
    .join_from(deliveries, events, events.c.id == deliveries.c.event_id)
    .where(deliveries.c.id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(events.c.received_at, deliveries.c.id)  # rows in a file: as received
)

#: Statements `record` runs for every batch, built once: building one per outcome cost more
#: CPU than the database's own work.
CLAIMS = sa.select(deliveries.c.id, deliveries.c.claimed_by).where(
    deliveries.c.id.in_(sa.bindparam("ids", expanding=True))
)
RECORD = (  # only while the claim is still ours: a late answer never overwrites a newer claim
    deliveries.update()
    .where(
        deliveries.c.id == sa.bindparam("the_id"),
        deliveries.c.claimed_by == sa.bindparam("the_claim"),
    )
    .values(claimed_by=None)
)
