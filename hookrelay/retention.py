"""What the relay keeps, and for how long: the retention purge and erasure requests.

Erasing an event erases its deliveries and their attempt log with it (ON DELETE CASCADE). Both
work in chunks, so ingest, which takes the same write lock on SQLite, never waits long. Each can
say first what it would erase, so `relay purge` and `relay forget` can ask before they do.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from hookrelay.database import deliveries, events
from hookrelay.store import Store

CHUNK = 500  # events erased per transaction


def _expired(before: float) -> sa.ColumnElement[bool]:
    """Events whose deliveries all ended before `before`: none pending, none updated since.

    An event with a pending delivery is kept however old: a participation is never lost before
    it is delivered.
    """
    unfinished = sa.exists().where(
        deliveries.c.event_id == events.c.id,
        sa.or_(deliveries.c.status == "pending", deliveries.c.updated_at >= before),
    )
    return sa.and_(events.c.received_at < before, ~unfinished)


def count_expired(store: Store, before: float) -> int:
    """How many events `purge(store, before)` would erase now (fewer, if one is replayed)."""
    query = sa.select(sa.func.count()).select_from(events).where(_expired(before))
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def purge(store: Store, before: float, chunk: int = CHUNK) -> int:
    """Erase the events whose deliveries all ended before `before`; returns how many."""
    expired = _expired(before)
    erased = 0
    while True:
        with store.transaction() as conn:
            found = list(conn.execute(sa.select(events.c.id).where(expired).limit(chunk)).scalars())
            if found:  # the condition again: a replay may have made one pending meanwhile
                erased += conn.execute(
                    events.delete().where(events.c.id.in_(found), expired)
                ).rowcount
        if len(found) < chunk:
            return erased


def forget(store: Store, email: str) -> int:
    """Erase every event that has `email` as one of its values, in any case; returns how many."""
    return erase(store, find_holding(store, email))


def find_holding(store: Store, email: str) -> list[str]:
    """The ids of the events that have `email` as one of their values, in any case.

    Only whole values match: forgetting jane@example.com keeps mary.jane@example.com. A plain ASCII
    address appears as such in the stored JSON text, so the database finds the candidates;
    another may be stored as \\u escapes, so every payload is read.
    """
    wanted = email.strip().casefold()
    query = sa.select(events.c.id, events.c.payload)
    if wanted.isascii() and wanted.isprintable() and not set('"\\/') & set(wanted):
        query = query.where(sa.func.lower(events.c.payload).contains(wanted, autoescape=True))
    with store.engine.connect() as conn:
        rows = conn.execution_options(yield_per=CHUNK).execute(query)
        return [i for i, payload in rows if _holds(json.loads(payload), wanted)]


def erase(store: Store, event_ids: list[str]) -> int:
    """Erase these events, whatever their state; returns how many were still there."""
    erased = 0
    for start in range(0, len(event_ids), CHUNK):
        with store.transaction() as conn:
            chunk = event_ids[start : start + CHUNK]
            erased += conn.execute(events.delete().where(events.c.id.in_(chunk))).rowcount
    return erased


def _holds(value: Any, wanted: str) -> bool:
    """Whether `wanted` (case-folded) is one of the string values anywhere in `value`."""
    if isinstance(value, str):
        return value.strip().casefold() == wanted
    if isinstance(value, dict):
        return any(_holds(v, wanted) for v in value.values())
    if isinstance(value, list):
        return any(_holds(v, wanted) for v in value)
    return False
