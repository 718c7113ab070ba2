"""Destination health, shared by every process through the database.

Retrying each delivery on its own hammers a destination that is down and, once it is back, leaves
the waiting deliveries scattered over their backoffs. So the destination as a whole has a state:

- `ok`: deliveries are claimed and sent as they come due.
- `throttled`: it answered 429. Nothing is sent to it until its Retry-After; no attempt is spent.
- `open` (the circuit): CIRCUIT_AFTER attempts in a row failed (5xx, timeout, refused
  connection). One probe delivery at a time is sent, at the backoff interval; the others wait
  without spending attempts. The first answer closes the circuit and makes every waiting
  delivery due at once.

A destination that stays throttled or open for its `throttle_max` ends the deliveries that waited
that long dead (replayable); `max_attempts` only counts the attempts a delivery itself made.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import sqlalchemy as sa

from hookrelay.alerts import state as alert_state
from hookrelay.claims import Outcome
from hookrelay.config import Policy
from hookrelay.database import deliveries, health, insert_rows
from hookrelay.store import Store

State = Literal["ok", "throttled", "open"]
CIRCUIT_AFTER = 5  # attempts in a row that failed before the circuit opens
PROBE_EVERY_MAX = 30.0  # seconds: the longest wait between two probes, unless backoff.initial is


@dataclass(frozen=True, slots=True)
class Health:
    destination: str
    state: State = "ok"
    failures: int = 0
    paused_until: float = 0.0
    since: float | None = None
    last_error: str | None = None

    @property
    def troubled(self) -> bool:
        """Whether a success changes anything (closes a circuit, clears a failure count)."""
        return self.state != "ok" or self.failures > 0

    def describe(self, last_error: bool = True) -> str:
        """One line for `relay events` (with the vendor's last answer) and for the log (without
        it: a vendor may quote a participant's address back)."""
        clock = time.strftime("%H:%M:%S", time.localtime(self.paused_until))
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since or 0))
        last = f"; last: {self.last_error}" if self.last_error and last_error else ""
        if self.state == "throttled":
            return f"throttled since {since}, paused until {clock}{last}"
        if self.state == "open":
            return (
                f"circuit open since {since} after {self.failures} failures in a row, "
                f"next probe at {clock}{last}"
            )
        return f"ok, {self.failures} failures in a row{last}" if self.failures else "ok"


def probe_interval(policy: Policy, failures: int) -> float:
    """Seconds between two probes: the backoff, doubling with each failed probe, at most
    PROBE_EVERY_MAX (or backoff.initial when that is longer) so that a destination that is back
    is found soon."""
    longest = min(policy.backoff_max, max(policy.backoff_initial, PROBE_EVERY_MAX))
    doublings = min(max(0, failures - CIRCUIT_AFTER), 30)
    return float(min(longest, policy.backoff_initial * 2**doublings))


def judge(current: Health, outcomes: Sequence[Outcome], policy: Policy, now: float) -> Health:
    """The destination's health after a batch's outcomes: a 429 pauses it, an answer makes it ok,
    failures count until the circuit opens (again, for a failed probe, at a longer interval)."""
    throttled = [o for o in outcomes if o.signal == "throttled"]
    down = [o for o in outcomes if o.signal == "down"]
    if throttled:
        until = max(o.next_attempt_at or now for o in throttled)
        return replace(
            current,
            state="throttled",
            paused_until=max(until, current.paused_until),
            since=current.since or now,
            last_error=throttled[-1].detail,
        )
    if any(o.signal == "up" for o in outcomes):
        return Health(current.destination)
    if not down:
        return current
    failures = current.failures + len(down)
    if current.state != "open" and failures < CIRCUIT_AFTER:
        return replace(current, failures=failures, last_error=down[-1].detail)
    return Health(
        current.destination,
        "open",
        failures,
        now + probe_interval(policy, failures),
        current.since or now,
        down[-1].detail,
    )


# --- stored -------------------------------------------------------------------------------------

_COLUMNS = ("state", "failures", "paused_until", "since", "last_error")
_READ = sa.select(health.c.destination, *(health.c[c] for c in _COLUMNS))
_ONE = _READ.where(health.c.destination == sa.bindparam("name"))
_PROBE = (  # the one process whose update matches sends the probe
    health.update()
    .where(
        health.c.destination == sa.bindparam("name"),
        health.c.state == "open",
        health.c.paused_until <= sa.bindparam("now"),
    )
    .values(paused_until=sa.bindparam("until"))
)
_DUE_NOW = (  # the deliveries that waited for a destination that is back
    deliveries.update()
    .where(
        deliveries.c.status == "pending",
        deliveries.c.destination == sa.bindparam("name"),
        deliveries.c.next_attempt_at > sa.bindparam("now"),
        deliveries.c.claimed_by.is_(None),
    )
    .values(next_attempt_at=sa.bindparam("now"))
)


def read(store: Store, name: str) -> Health:
    """The destination's health now: one read by primary key, no write lock."""
    with store.engine.connect() as conn:
        row = conn.execute(_ONE, {"name": name}).first()
    return Health(*row) if row else Health(name)


def read_all(store: Store) -> list[Health]:
    """Every destination that ever had trouble, by name (the others are ok)."""
    with store.engine.connect() as conn:
        return [Health(*row) for row in conn.execute(_READ.order_by(health.c.destination))]


def take_probe(store: Store, name: str, policy: Policy, failures: int) -> bool:
    """Whether this process sends the open circuit's next probe: at most one process does, per
    probe interval."""
    now = store.clock()
    until = now + probe_interval(policy, failures + 1)
    with store.transaction() as conn:
        return bool(conn.execute(_PROBE, {"name": name, "now": now, "until": until}).rowcount == 1)


def record(
    store: Store, name: str, outcomes: Sequence[Outcome], policy: Policy
) -> tuple[Health, Health]:
    """Judge a batch's outcomes against the stored health, in one transaction (so processes
    judging at once count every failure); a destination that is back makes its waiting
    deliveries due now. Returns the stored health before and after: only the process that
    changed the state says so (several may judge at once)."""
    now = store.clock()
    with store.transaction(wakes=True) as conn:
        insert_rows(  # a row to lock: ON CONFLICT DO NOTHING
            conn,
            "destination_health",
            "destination, state, failures, paused_until, updated_at",
            [(name, "ok", 0, 0.0, now)],
            "destination",
        )
        row = conn.execute(_ONE.with_for_update(), {"name": name}).one()
        current = Health(*row)
        after = judge(current, outcomes, policy, now)
        if after != current:
            values = {c: getattr(after, c) for c in _COLUMNS}
            conn.execute(
                health.update().where(health.c.destination == name).values(**values, updated_at=now)
            )
        if current.state != "ok" and after.state == "ok":
            conn.execute(_DUE_NOW, {"name": name, "now": now})
    return current, after


def expire(store: Store, policies: Mapping[str, Policy]) -> dict[str, int]:
    """End dead the deliveries that waited `throttle_max` for a destination throttled or open
    that long; returns how many, by destination."""
    now, ended = store.clock(), {}
    for h in read_all(store):
        policy = policies.get(h.destination)
        if policy is None or h.state == "ok" or (h.since or now) > now - policy.throttle_max:
            continue
        hours = policy.throttle_max / 3600
        reason = f"{h.destination} was {h.state} for over {hours:g}h; replay once it is back"
        with store.transaction() as conn:
            ended[h.destination] = conn.execute(
                deliveries.update()
                .where(
                    deliveries.c.status == "pending",
                    deliveries.c.destination == h.destination,
                    deliveries.c.claimed_by.is_(None) | (deliveries.c.next_attempt_at <= now),
                    deliveries.c.updated_at <= now - policy.throttle_max,
                )
                .values(status="dead", last_error=reason, updated_at=now)
            ).rowcount
            if ended[h.destination]:
                alert_state.note(conn, "dead", h.destination, ended[h.destination], reason, now)
    return ended
