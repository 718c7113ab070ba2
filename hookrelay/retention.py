"""What the relay keeps, and for how long: the retention purge and erasure requests.

Erasing an event erases its deliveries and their attempt log with it (ON DELETE CASCADE). Both
work in chunks, so ingest, which takes the same write lock on SQLite, never waits long.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from hookrelay.database import deliveries, events
from hookrelay.store import Store

CHUNK = 500  # events erased per transaction


def purge(store: Store, before: float, chunk: int = CHUNK) -> int:
    """Erase the events whose deliveries all ended before `before`; returns how many.

    An event with a pending delivery is kept however old: a participation is never lost before
    it is delivered.
    """
    unfinished = sa.exists().where(
        deliveries.c.event_id == events.c.id,
        sa.or_(deliveries.c.status == "pending", deliveries.c.updated_at >= before),
    )
    expired = sa.and_(events.c.received_at < before, ~unfinished)
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
    """Erase every event that has `email` as one of its values, in any case; returns how many.

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
        found = [i for i, payload in rows if _holds(json.loads(payload), wanted)]
    for start in range(0, len(found), CHUNK):
        with store.transaction() as conn:
            conn.execute(events.delete().where(events.c.id.in_(found[start : start + CHUNK])))
    return len(found)


def _holds(value: Any, wanted: str) -> bool:
    """Whether `wanted` (case-folded) is one of the string values anywhere in `value`."""
    if isinstance(value, str):
        return value.strip().casefold() == wanted
    if isinstance(value, dict):
        return any(_holds(v, wanted) for v in value.values())
    if isinstance(value, list):
        return any(_holds(v, wanted) for v in value)
    return False
