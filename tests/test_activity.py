"""The overview's figures (hookrelay.activity), on both backends: per destination, per source,
per minute."""

from __future__ import annotations

import time

from hookrelay import activity
from hookrelay.claims import Outcome
from tests.conftest import ingest


def test_per_minute_counts_events_received_and_deliveries_delivered(store, clock):
    since = clock.now
    clock.now += 30
    ingest(store, "a", "b")
    clock.now += 120  # minute 2
    ingest(store, "c")
    claimed = store.claim_due(10, lease=30, destinations=["sink"])
    store.record([Outcome(d, "delivered", clock.now, 5) for d in claimed])
    received, delivered = activity.per_minute(store, since, 4)
    assert received == [2, 0, 1, 0]
    assert delivered == [0, 0, 3, 0]
    assert activity.per_minute(store, since + 60, 2) == ([0, 1], [0, 3])


def test_each_destination_has_its_counts_oldest_pending_and_last_error(store, clock):
    first = clock.now
    ingest(store, "a", "b")
    clock.now += 10
    [dead, *_] = store.claim_due(10, lease=30, destinations=["sink"])
    store.record([Outcome(dead, "dead", clock.now, 5, "HTTP 400: no such list", 400)])
    found = {d.name: d for d in activity.destinations(store, ["sink", "archive", "unused"], 0)}
    assert sorted(found) == ["archive", "sink", "unused"]
    sink, archive = found["sink"], found["archive"]
    assert sink.total == sink.recent == {"dead": 1, "pending": 1}
    assert archive.total == {"pending": 2} and found["unused"].total == {}
    assert (sink.oldest_pending, archive.oldest_pending) == (first, first)
    assert (sink.last_error, sink.last_error_at) == ("HTTP 400: no such list", clock.now)
    assert archive.last_error is None
    # The window: a delivery's id holds the real time it was stored; an attempt, the clock's.
    [later] = [d for d in activity.destinations(store, [], time.time() + 60) if d.name == "sink"]
    assert later.recent == {} and later.total == sink.total and later.last_error is None


def test_events_received_by_source(store, clock):
    ingest(store, "a", "b")
    ingest(store, "c", source="loyalty")
    assert activity.received_by_source(store, clock.now) == {"loyalty": 1, "qualifio": 2}
    assert activity.received_by_source(store, clock.now + 1) == {}


def test_the_all_time_counts_are_read_again_once_a_minute_old(store):
    ingest(store, "a")
    reused, fresh = activity.Totals(), activity.Totals(max_age=0)
    counts, read_at = reused.get(store)
    assert counts == {("archive", "pending"): 1, ("sink", "pending"): 1}
    assert abs(read_at - time.time()) < 5
    ingest(store, "b")
    assert reused.get(store) == (counts, read_at)  # the same read, within the minute
    assert fresh.get(store)[0] == {("archive", "pending"): 2, ("sink", "pending"): 2}
