"""The Store's contract: dedupe, one transaction per ingest, atomic claims, leases, replay,
retention and erasure."""

from __future__ import annotations

import json
import threading

import pytest
import sqlalchemy as sa

from hookrelay.database import attempts, deliveries
from hookrelay.errors import RelayError
from hookrelay.sources import Incoming
from hookrelay.store import Outcome, Store


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(storage, clock):
    s = Store(storage, clock=clock)
    yield s
    s.close()


TARGETS = [("pass", "sink"), ("pass", "archive")]


def ingest(store, *keys, source="qualifio"):
    return store.store_events(source, "qualifio", [Incoming("{}", k) for k in keys], TARGETS)


def test_an_event_and_its_deliveries_are_stored_together(store):
    [stored] = ingest(store, "a/COMPLETED")
    assert not stored.duplicate
    [event] = store.list_events()
    assert event["id"] == stored.event_id
    assert sorted(d["destination"] for d in event["deliveries"]) == ["archive", "sink"]


def test_the_same_key_is_a_duplicate_of_the_first_event(store):
    first, second = ingest(store, "a/COMPLETED", "a/COMPLETED")  # even within one batch
    assert (first.duplicate, second.duplicate) == (False, True)
    assert second.event_id == first.event_id
    assert ingest(store, "a/COMPLETED")[0].event_id == first.event_id
    assert ingest(store, "a/COMPLETED", source="other")[0].duplicate is False
    assert len(store.list_events()) == 2


def test_concurrent_ingest_of_one_participation_stores_it_once(store):
    results = []
    threads = [
        threading.Thread(target=lambda: results.extend(ingest(store, "same"))) for _ in range(20)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(not r.duplicate for r in results) == 1
    assert len({r.event_id for r in results}) == 1


def test_concurrent_claims_never_share_a_delivery(store):
    ingest(store, *[f"k{i}" for i in range(100)])
    claimed, lock = [], threading.Lock()

    def claim():
        while batch := store.claim_due(7, lease=60):
            with lock:
                claimed.extend(d.id for d in batch)

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 200 and len(set(claimed)) == 200


def test_a_lease_expires_and_a_stale_claim_cannot_overwrite(store, clock):
    ingest(store, "a")
    [first] = store.claim_due(10, lease=30, destinations=["sink"])
    assert store.claim_due(10, lease=30, destinations=["sink"]) == []  # leased
    clock.now += 31
    [second] = store.claim_due(10, lease=30, destinations=["sink"])  # the first worker died
    assert second.id == first.id and second.claim != first.claim
    assert store.record([Outcome(first, "delivered", clock.now, 5)]) == 0  # too late
    assert store.record([Outcome(second, "delivered", clock.now, 5)]) == 1
    statuses = {d["destination"]: d["status"] for d in store.list_events()[0]["deliveries"]}
    assert statuses["sink"] == "delivered"


def test_retry_waits_until_next_attempt_and_counts_attempts(store, clock):
    ingest(store, "a")
    [d] = store.claim_due(10, lease=30, destinations=["sink"])
    store.record([Outcome(d, "pending", clock.now, 5, "answered 500", 500, clock.now + 60)])
    assert store.claim_due(10, lease=30, destinations=["sink"]) == []
    clock.now += 61
    [again] = store.claim_due(10, lease=30, destinations=["sink"])
    assert again.attempts == 1
    assert [a["http_status"] for a in store.attempts_of(d.id)] == [500]


def test_replay_dead_resets_the_attempt_budget(store, clock):
    ingest(store, "a")
    [d] = store.claim_due(10, lease=30, destinations=["sink"])
    store.record([Outcome(d, "dead", clock.now, 5, "answered 400", 400)])
    assert store.replay(dead=True, destination="archive") == 0
    assert store.replay(dead=True) == 1
    [again] = store.claim_due(10, lease=30, destinations=["sink"])
    assert again.attempts == 0 and again.id == d.id


def test_counts_by_destination_and_status(store, clock):
    ingest(store, "a", "b")
    [d] = store.claim_due(1, lease=30, destinations=["sink"])
    store.record([Outcome(d, "delivered", clock.now, 5)])
    assert store.counts() == {
        ("sink", "delivered"): 1,
        ("sink", "pending"): 1,
        ("archive", "pending"): 2,
    }


DAY = 86400


def deliver_due(store, clock):
    batch = store.claim_due(100, lease=30)
    store.record([Outcome(d, "delivered", clock.now, 5) for d in batch])


def rows(store, table):
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()


def test_purge_erases_events_whose_deliveries_all_ended_before_the_cutoff(store, clock):
    ingest(store, *[f"done{i}" for i in range(5)])
    deliver_due(store, clock)
    [late] = ingest(store, "delivered-late")
    [waiting] = ingest(store, "still-pending")
    clock.now += 40 * DAY
    deliver_due(store, clock)  # late's deliveries end now, and waiting's...
    store.replay([waiting.event_id])  # ...are due again: pending, 40 days after it came
    assert rows(store, attempts) == 14
    assert store.purge(clock.now - 30 * DAY, chunk=2) == 5
    assert {e["id"] for e in store.list_events()} == {late.event_id, waiting.event_id}
    assert (rows(store, deliveries), rows(store, attempts)) == (4, 4)
    clock.now += 40 * DAY
    assert store.purge(clock.now - 30 * DAY) == 1  # late; waiting is pending however old
    assert [e["id"] for e in store.list_events()] == [waiting.event_id]


def stored_with(store, key, email, ensure_ascii=False):
    payload = {"id": key, "form": [{"variable": "email", "responses": [{"value": email}]}]}
    text = json.dumps(payload, ensure_ascii=ensure_ascii)
    return store.store_events("qualifio", "qualifio", [Incoming(text, key)], TARGETS)[0].event_id


def test_forget_erases_the_events_holding_the_address_and_no_other(store, clock):
    stored_with(store, "a", "Ann.Smith@Example.com ")
    stored_with(store, "b", "ann.smith@example.com")
    kept = {
        stored_with(store, "c", "joann.smith@example.com"),
        stored_with(store, "d", "ann.smith@example.community"),
        stored_with(store, "e", "annxsmith@example.com"),  # what a LIKE '_' would match
    }
    deliver_due(store, clock)
    assert store.forget("ann.smith@example.com") == 2
    assert {e["id"] for e in store.list_events()} == kept
    assert (rows(store, deliveries), rows(store, attempts)) == (6, 6)
    assert store.forget("ann.smith@example.com") == 0


def test_forget_finds_an_address_stored_as_unicode_escapes(store):
    stored_with(store, "a", "chloë@example.com", ensure_ascii=True)  # "chlo\u00eb@..."
    kept = stored_with(store, "b", "chloe@example.com")
    assert store.forget("Chloë@example.com") == 1
    assert [e["id"] for e in store.list_events()] == [kept]


def test_an_answer_for_an_event_erased_meanwhile_leaves_the_others_recorded(store, clock):
    stored_with(store, "a", "ann.smith@example.com")
    [other] = ingest(store, "b")
    batch = store.claim_due(100, lease=30)  # a worker is sending all four
    store.forget("ann.smith@example.com")
    assert store.record([Outcome(d, "delivered", clock.now, 5) for d in batch]) == 2
    [event] = store.list_events()
    assert event["id"] == other.event_id
    assert [d["status"] for d in event["deliveries"]] == ["delivered", "delivered"]
    assert rows(store, attempts) == 2


def test_sqlite_is_in_wal_mode_with_full_sync(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/relay.db")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    store.close()


def test_many_processes_starting_at_once_create_the_schema_once(storage):
    """Eight stores built at the same moment on an empty database, as gunicorn workers are."""
    errors, stores = [], []
    barrier = threading.Barrier(8)

    def start():
        barrier.wait()
        try:
            stores.append(Store(storage))
        except Exception as exc:  # collected, then asserted empty below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with stores[0].engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version FROM schema_version").scalars().all() == [1]
    for s in stores:
        s.close()


def test_a_newer_schema_is_refused_with_a_clear_message(store, storage):
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE schema_version SET version = 99")
    with pytest.raises(RelayError, match="schema version 99, newer than this relay's 1"):
        Store(storage)
