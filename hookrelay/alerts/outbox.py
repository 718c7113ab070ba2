"""The alerts' outbox: each message composed (hookrelay.alerts.state), one row per channel, kept
until that channel took it. A row is claimed by one process for LEASE seconds to send; a failed
send is tried again later, backing off, for a day at most."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from hookrelay.alerts.messages import Message
from hookrelay.database import alert_messages, new_id

if TYPE_CHECKING:
    from hookrelay.store import Store

RETRY_MAX = 600.0  # seconds: the longest wait before a failed message is tried again
GIVE_UP = 86400.0  # seconds: a message a channel did not take for this long is dropped (logged)


def add(conn: Connection, channels: Sequence[str], message: Message, now: float) -> None:
    """`message` for each of `channels` (their keys), in the caller's transaction."""
    body = message.to_json()
    conn.execute(
        alert_messages.insert(),
        [
            dict(
                id=new_id(),
                channel=key,
                body=body,
                attempts=0,
                next_try_at=now,
                claimed_until=0.0,
                created_at=now,
            )
            for key in channels
        ],
    )


@dataclass(frozen=True, slots=True)
class Outgoing:
    id: str
    channel: str
    body: str  # the Message as JSON: read when sent, so a row that cannot be read fails alone
    attempts: int
    created_at: float

    @property
    def message(self) -> Message:
        return Message.from_json(self.body)


_OUTBOX = sa.select(
    alert_messages.c.id,
    alert_messages.c.channel,
    alert_messages.c.body,
    alert_messages.c.attempts,
    alert_messages.c.created_at,
).where(
    alert_messages.c.next_try_at <= sa.bindparam("now"),
    alert_messages.c.claimed_until <= sa.bindparam("now"),
)
_ID = alert_messages.c.id == sa.bindparam("the_id")


def due(store: Store) -> list[Outgoing]:
    """The messages to send now: a read, no write lock."""
    with store.engine.connect() as conn:
        rows = conn.execute(_OUTBOX.order_by(alert_messages.c.id), {"now": store.clock()})
        return [Outgoing(*row) for row in rows]


def claim(store: Store, outgoing: Outgoing, lease: float) -> bool:
    """Whether this process sends it: one process does."""
    now = store.clock()
    with store.transaction() as conn:
        return bool(
            conn.execute(
                alert_messages.update()
                .where(_ID, alert_messages.c.claimed_until <= now)
                .values(claimed_until=now + lease),
                {"the_id": outgoing.id},
            ).rowcount
        )


def sent(store: Store, outgoing: Outgoing) -> None:
    with store.transaction() as conn:
        conn.execute(alert_messages.delete().where(_ID), {"the_id": outgoing.id})


def failed(store: Store, outgoing: Outgoing, error: str) -> float:
    """Try it again later, backing off; returns when."""
    now = store.clock()
    at = now + min(RETRY_MAX, 10.0 * 2.0 ** min(outgoing.attempts, 20))
    with store.transaction() as conn:
        conn.execute(
            alert_messages.update()
            .where(_ID)
            .values(
                attempts=outgoing.attempts + 1, next_try_at=at, claimed_until=0.0, last_error=error
            ),
            {"the_id": outgoing.id},
        )
    return at


_FAILING = sa.select(
    alert_messages.c.channel, alert_messages.c.attempts, alert_messages.c.last_error
).where(alert_messages.c.attempts > 0)


def failing(store: Store) -> list[tuple[str, int, str | None]]:
    """The messages a channel did not take yet (the admin console shows them): channel key,
    attempts, last error."""
    with store.engine.connect() as conn:
        return [(c, a, e) for c, a, e in conn.execute(_FAILING.order_by(alert_messages.c.id))]
