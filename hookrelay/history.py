"""What happened to each participation: events, their deliveries, the attempt log and the counts
that `relay events`, `relay show`, /metrics, the admin console and the tests read.

Everything here gives ids, names, states and error messages, never a payload, except `event`:
one event whole, for an operator who asked for it by its id (`relay show`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from hookrelay.database import Status, attempts, deliveries, events, id_at, unindexed
from hookrelay.sources import Source, dedupe_key
from hookrelay.store import Store

#: The states Qualifio sends a participation in ("" for webhook 1.0, which has none): a
#: participation id gives the dedupe key of each, so the dedupe index finds its events.
QUALIFIO_STATES = ("COMPLETED", "INCOMPLETE", "")


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
                    deliveries.c.next_attempt_at,
                    deliveries.c.claimed_by,
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


@dataclass(frozen=True, slots=True)
class Page:
    """One page of deliveries, newest first; `older` and `newer` are the keys that continue it
    (None at that end)."""

    rows: list[dict[str, Any]]
    older: str | None = None
    newer: str | None = None


LISTED = (
    *(deliveries.c[c] for c in ("id", "event_id", "mapping", "destination", "status")),
    *(deliveries.c[c] for c in ("attempts", "next_attempt_at", "claimed_by", "last_error")),
    events.c.source,
    events.c.received_at,
)


def list_deliveries(
    store: Store,
    *,
    source: str | None = None,
    destination: str | None = None,
    status: Status | None = None,
    since: float | None = None,
    until: float | None = None,
    event_ids: Sequence[str] | None = None,
    before: str | None = None,
    after: str | None = None,
    limit: int = 50,
) -> Page:
    """Deliveries newest first, each with its event's source and time (ids, names, states and
    errors; never a payload), paged by keyset: `before` (older than) or `after` (newer than)
    a delivery id, never OFFSET, so a page deep in the history costs what the first one does.

    A delivery's id begins with the time its event was stored (hookrelay.database.new_id):
    newest first is the primary key's order, and `since` (inclusive) to `until` (exclusive) a
    range of it; a status walks deliveries_status_id. `event_ids` (a search, see find_events)
    keeps only those events' deliveries.
    """
    where: list[sa.ColumnElement[bool]] = []
    if source:  # else SQLite starts from all the source's events, and sorts their deliveries
        where.append(unindexed(events.c.source) == source)
    if destination:
        where.append(deliveries.c.destination == destination)
    if status:
        where.append(deliveries.c.status == status)
    if since is not None:
        where.append(deliveries.c.id >= id_at(since))
    if until is not None:
        where.append(deliveries.c.id < id_at(until))
    if event_ids is not None:
        where.append(deliveries.c.event_id.in_(list(event_ids)))
    if before:
        where.append(deliveries.c.id < before)
    if after:
        where.append(deliveries.c.id > after)
    order = deliveries.c.id.asc() if after else deliveries.c.id.desc()
    query = (
        sa.select(*LISTED)
        .join_from(deliveries, events, events.c.id == deliveries.c.event_id)
        .where(*where)
        .order_by(order)
        .limit(limit + 1)  # one more tells whether there is a next page
    )
    with store.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings()]
    more, rows = len(rows) > limit, rows[:limit]
    if after:  # read oldest first, from the key on: shown newest first
        rows.reverse()
        return Page(rows, rows[-1]["id"] if rows else after, rows[0]["id"] if more else None)
    return Page(rows, rows[-1]["id"] if more else None, rows[0]["id"] if before and rows else None)


def dead_by_destination(store: Store) -> dict[str, int]:
    """How many deliveries are dead, by destination: what `Replay all dead` sends again."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(deliveries.c.destination, sa.func.count())
            .where(deliveries.c.status == "dead")
            .group_by(deliveries.c.destination)
            .order_by(deliveries.c.destination)
        )
        return {d: n for d, n in rows}


def event_of(store: Store, delivery_id: str) -> str | None:
    """The id of the event a delivery belongs to; None when there is no such delivery."""
    with store.engine.connect() as conn:
        found: str | None = conn.execute(
            sa.select(deliveries.c.event_id).where(deliveries.c.id == delivery_id)
        ).scalar()
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


def find_events(
    store: Store, sources: Iterable[Source], wanted: str, read_payloads: bool = True
) -> list[str]:
    """The ids of the events `wanted` names, oldest first: the event with that id, else every
    event of the Qualifio participation whose `id` it is (or of the loyalty event whose
    `eventId` it is), whatever its source.

    A participation is found through the dedupe index, by the key it has in each state Qualifio
    sends, in each qualifio source without a `dedupe` of its own. When that finds nothing (a
    source with its own `dedupe`, one no longer configured, another state), the stored payloads
    are read, which takes longer on a large database, unless `read_payloads` is False.
    """
    keyed = [s for s in sources if s.format == "qualifio" and s.dedupe is None]
    items = [{"id": wanted, "state": state} for state in QUALIFIO_STATES] + [{"eventId": wanted}]
    keys = sorted({dedupe_key(s, item, "") for s in keyed for item in items})
    with store.engine.connect() as conn:
        if conn.execute(sa.select(events.c.id).where(events.c.id == wanted)).first():
            return [wanted]
        found = list(
            conn.execute(
                sa.select(events.c.id)
                .where(events.c.source.in_([s.name for s in keyed]), events.c.dedupe_key.in_(keys))
                .order_by(events.c.received_at)
            ).scalars()
        )
        return found or (_holding_id(conn, wanted) if read_payloads else [])


def _holding_id(conn: Connection, wanted: str) -> list[str]:
    """The events whose payload has `wanted` as its top-level `id` or `eventId`, read from the
    payloads. An id of plain text appears as such in the stored JSON, so the database finds the
    candidates; another may be stored as escapes, so every payload is read."""
    query = sa.select(events.c.id, events.c.payload).order_by(events.c.received_at)
    if wanted.isascii() and wanted.isprintable() and not set('"\\/') & set(wanted):
        query = query.where(events.c.payload.contains(wanted, autoescape=True))
    rows = conn.execution_options(yield_per=500).execute(query)
    return [i for i, payload in rows if wanted in _ids_of(json.loads(payload))]


def _ids_of(payload: Any) -> tuple[Any, ...]:
    return (payload.get("id"), payload.get("eventId")) if isinstance(payload, dict) else ()


def event(store: Store, event_id: str) -> dict[str, Any] | None:
    """One event whole, for `relay show`: its payload, and its deliveries (by destination), each
    with its `attempt_log` (oldest first); None when there is no such event."""
    with store.engine.connect() as conn:
        found = (
            conn.execute(
                sa.select(
                    events.c.id,
                    events.c.source,
                    events.c.format,
                    events.c.payload,
                    events.c.received_at,
                ).where(events.c.id == event_id)
            )
            .mappings()
            .first()
        )
        if found is None:
            return None
        rows = conn.execute(
            sa.select(deliveries)
            .where(deliveries.c.event_id == event_id)
            .order_by(deliveries.c.destination, deliveries.c.mapping)
        ).mappings()
        its = [{**d, "attempt_log": []} for d in rows]
        log = conn.execute(
            sa.select(attempts)
            .where(attempts.c.delivery_id.in_([d["id"] for d in its]))
            .order_by(attempts.c.id)
        ).mappings()
        by_id = {d["id"]: d["attempt_log"] for d in its}
        for attempt in log:
            by_id[attempt["delivery_id"]].append(dict(attempt))
    return {**found, "deliveries": its}
