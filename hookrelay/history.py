"""What happened to each participation: events, their deliveries, the attempt log and the counts
that `relay events`, /metrics and the tests read: ids, names, states and error messages, never a
payload.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from hookrelay.database import Status, attempts, deliveries, events
from hookrelay.store import Store


def list_events(
    store: Store, status: Status | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Newest events first, each with its deliveries (ids, names and states only)."""
    query = sa.select(events.c.id, events.c.source, events.c.received_at)
    if status:
        query = query.where(
            events.c.id.in_(sa.select(deliveries.c.event_id).where(deliveries.c.status == status))
        )
    query = query.order_by(events.c.received_at.desc()).limit(limit)
    with store.engine.connect() as conn:
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
    by_event: dict[str, list[dict[str, Any]]] = {e["id"]: [] for e in found}
    for row in rows:
        by_event[row["event_id"]].append(dict(row))
    for event in found:
        event["deliveries"] = by_event[event["id"]]
    return found


def known_events(store: Store, event_ids: Sequence[str]) -> set[str]:
    with store.engine.connect() as conn:
        return set(conn.execute(sa.select(events.c.id).where(events.c.id.in_(event_ids))).scalars())


def attempts_of(store: Store, delivery_id: str) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                sa.select(attempts)
                .where(attempts.c.delivery_id == delivery_id)
                .order_by(attempts.c.id)
            ).mappings()
        ]


def counts(store: Store) -> dict[tuple[str, str], int]:
    """Deliveries by (destination, status): the backlog and outcomes /metrics reports."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(deliveries.c.destination, deliveries.c.status, sa.func.count()).group_by(
                deliveries.c.destination, deliveries.c.status
            )
        )
        return {(d, s): n for d, s, n in rows}
