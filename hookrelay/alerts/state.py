"""What there is to tell, kept in the database so that every process agrees (DESIGN §10).

A row of `alerts` per kind and destination counts occurrences that no message has told yet
(`unsent`) and says whether the condition still holds (`firing`) and whether a message said so
(`reported`, so "resolved" is owed when it clears). Deaths are counted in the transaction that
records them; the other conditions are judged by whichever process looks. A message is
composed once, under the write lock, into the outbox (hookrelay.alerts.outbox), one row per
channel, which one process sends: so each alert goes out once, however many processes run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from hookrelay.alerts import outbox
from hookrelay.alerts.messages import Message, mask
from hookrelay.alerts.settings import Alerting
from hookrelay.database import alerts, deliveries, insert_rows, new_id

if TYPE_CHECKING:
    from hookrelay.claims import Outcome
    from hookrelay.store import Store

EVENTS = ("dead", "config_refused")  # counted as they happen; the others are states


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str
    subject: str
    firing: bool
    reported: bool
    since: float | None
    unsent: int
    unsent_since: float | None
    total: int
    last_error: str | None
    last_at: float | None
    sent_at: float | None

    def due(self, alerting: Alerting, now: float) -> bool:
        """Whether a message is owed now: "resolved" as soon as it clears; news once the first
        of it has waited `alert_wait` for others to join, and `alert_every` after the last."""
        if not getattr(alerting, self.kind, False):
            return False
        if not self.firing and self.reported:
            return True
        if self.unsent <= 0 or now < (self.unsent_since or now) + alerting.wait:
            return False
        return self.sent_at is None or now >= self.sent_at + alerting.every

    def message(self, alerting: Alerting) -> Message:
        return Message(
            id=new_id(),
            kind=self.kind,  # type: ignore[arg-type]
            subject=self.subject,
            resolved=not self.firing,
            count=self.unsent,
            total=self.total,
            since=self.since,
            last_error=self.last_error,
            link=alerting.link(self.kind, self.subject),
            relay=alerting.relay,
        )


_READ = sa.select(*(alerts.c[f.name] for f in fields(Alert)))
_ONE = (alerts.c.kind == sa.bindparam("the_kind")) & (
    alerts.c.subject == sa.bindparam("the_subject")
)


def read_all(store: Store) -> list[Alert]:
    with store.engine.connect() as conn:
        return [Alert(*row) for row in conn.execute(_READ.order_by(alerts.c.kind))]


# --- noting ---------------------------------------------------------------------------------------


def _row(conn: Connection, kind: str, subject: str) -> None:
    insert_rows(
        conn,
        "alerts",
        "kind, subject, firing, reported, unsent, total",
        [(kind, subject, False, False, 0, 0)],
        "kind, subject",
    )


def note(
    conn: Connection,
    kind: str,
    subject: str,
    count: int,
    error: str | None,
    now: float,
    at: float | None = None,
) -> None:
    """`count` more occurrences, in the caller's transaction. With `at` (when it happened), one
    already noted at that time or later is not counted again: each process notes the same
    refused edit."""
    _row(conn, kind, subject)
    where = [_ONE] + ([alerts.c.last_at.is_(None) | (alerts.c.last_at < at)] if at else [])
    conn.execute(
        alerts.update()
        .where(*where)
        .values(
            firing=True,
            since=sa.func.coalesce(alerts.c.since, now),
            unsent=alerts.c.unsent + count,
            unsent_since=sa.func.coalesce(alerts.c.unsent_since, now),
            total=alerts.c.total + count,
            last_error=error,
            last_at=at or now,
        ),
        {"the_kind": kind, "the_subject": subject},
    )


def note_dead(conn: Connection, dead: Sequence[Outcome], now: float) -> None:
    """Deliveries that ended dead, by destination, with the last error masked against their own
    payloads. Rows are locked in name order, as every transaction that notes does, so two
    cannot wait for each other on PostgreSQL."""
    for name, count in sorted(Counter(o.delivery.destination for o in dead).items()):
        last = [o for o in dead if o.delivery.destination == name][-1]
        error = mask(last.detail, [last.delivery.payload])
        note(conn, "dead", name, count, error, now)


def start(
    store: Store, kind: str, subject: str, count: int, error: str | None, since: float
) -> None:
    """A state that began at `since` (a backlog): told once, with `count`, until it clears."""
    with store.transaction() as conn:
        _row(conn, kind, subject)
        conn.execute(
            alerts.update()
            .where(_ONE, alerts.c.firing.is_(False))
            .values(
                firing=True,
                since=since,
                unsent=count,
                unsent_since=since,
                total=count,
                last_error=error,
                last_at=store.clock(),
            ),
            {"the_kind": kind, "the_subject": subject},
        )


def clear(store: Store, kind: str, subject: str, at: float | None = None) -> None:
    """The condition no longer holds (unless it came back after `at`). What an event kind
    counted but did not tell yet is still told; a state that ended before it was told is not."""
    values: dict[str, Any] = {"firing": False}
    if kind not in EVENTS:
        values.update(unsent=0, unsent_since=None)
    where = [_ONE, alerts.c.firing.is_(True)]
    if at is not None:
        where.append(alerts.c.last_at.is_(None) | (alerts.c.last_at <= at))
    with store.transaction() as conn:
        conn.execute(
            alerts.update().where(*where).values(**values),
            {"the_kind": kind, "the_subject": subject},
        )


# --- judging --------------------------------------------------------------------------------------

_WAITING = (
    sa.select(deliveries.c.destination, sa.func.min(deliveries.c.waiting_since), sa.func.count())
    .where(deliveries.c.status == "pending")
    .group_by(deliveries.c.destination)
)
_DELIVERED_SINCE = (
    sa.select(deliveries.c.id)
    .where(
        deliveries.c.status == "delivered",
        deliveries.c.destination == sa.bindparam("name"),
        deliveries.c.next_attempt_at > sa.bindparam("since"),  # a delivered one's: when it was
    )
    .limit(1)
)


def waiting(store: Store) -> dict[str, tuple[float, int]]:
    """Per destination with pending deliveries: since when the oldest waits, and how many."""
    with store.engine.connect() as conn:
        rows = conn.execute(_WAITING)
        return {name: (oldest, count) for name, oldest, count in rows if oldest is not None}


def delivered_since(store: Store, name: str, since: float) -> bool:
    with store.engine.connect() as conn:
        return conn.execute(_DELIVERED_SINCE, {"name": name, "since": since}).first() is not None


# --- telling --------------------------------------------------------------------------------------


def compose(store: Store, alerting: Alerting) -> list[Message]:
    """Compose what is owed into the outbox, once across processes: under the write lock, the
    rows read again. Returns the messages composed here."""
    composed = []
    now = store.clock()
    with store.transaction() as conn:
        for alert in [Alert(*row) for row in conn.execute(_READ.with_for_update())]:
            if not alert.due(alerting, now):
                continue
            message = alert.message(alerting)
            outbox.add(conn, [c.key for c in alerting.channels], message, now)
            told: dict[str, Any] = {"unsent": 0, "unsent_since": None, "sent_at": now}
            if message.resolved:
                told.update(reported=False, since=None, total=0)
            else:
                told.update(reported=True)
            conn.execute(
                alerts.update().where(_ONE).values(**told),
                {"the_kind": alert.kind, "the_subject": alert.subject},
            )
            composed.append(message)
    return composed
