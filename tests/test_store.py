"""The Store's contract: dedupe, one transaction per ingest, atomic claims, leases, replay."""

from __future__ import annotations

import fcntl
import re
import threading

import pytest
import sqlalchemy as sa

from hookrelay import history
from hookrelay.claims import Outcome
from hookrelay.database import SCHEMA_VERSION, deliveries
from hookrelay.errors import StorageUnavailable
from hookrelay.store import Store
from tests.conftest import ingest, query_plan


def test_an_event_and_its_deliveries_are_stored_together(store):
    [stored] = ingest(store, "a/COMPLETED")
    assert not stored.duplicate
    [event] = history.list_events(store)
    assert event["id"] == stored.event_id
    assert sorted(d["destination"] for d in event["deliveries"]) == ["archive", "sink"]


def test_the_same_key_is_a_duplicate_of_the_first_event(store):
    first, second = ingest(store, "a/COMPLETED", "a/COMPLETED")  # even within one batch
    assert (first.duplicate, second.duplicate) == (False, True)
    assert second.event_id == first.event_id
    assert ingest(store, "a/COMPLETED")[0].event_id == first.event_id
    assert ingest(store, "a/COMPLETED", source="other")[0].duplicate is False
    assert len(history.list_events(store)) == 2


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
    statuses = {d["destination"]: d["status"] for d in history.list_events(store)[0]["deliveries"]}
    assert statuses["sink"] == "delivered"


def test_retry_waits_until_next_attempt_and_counts_attempts(store, clock):
    ingest(store, "a")
    [d] = store.claim_due(10, lease=30, destinations=["sink"])
    store.record([Outcome(d, "pending", clock.now, 5, "answered 500", 500, clock.now + 60)])
    assert store.claim_due(10, lease=30, destinations=["sink"]) == []
    clock.now += 61
    [again] = store.claim_due(10, lease=30, destinations=["sink"])
    assert again.attempts == 1
    assert [a["http_status"] for a in history.attempts_of(store, d.id)] == [500]


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
    assert history.counts(store) == {
        ("sink", "delivered"): 1,
        ("sink", "pending"): 1,
        ("archive", "pending"): 2,
    }


def test_sqlite_is_in_wal_mode_with_full_sync(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/relay.db")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    store.close()


def start_at_once(storage: str, count: int = 8) -> list[Store]:
    """`count` stores built at the same moment, as gunicorn's workers are; none may fail."""
    errors, stores = [], []
    barrier = threading.Barrier(count)

    def start():
        barrier.wait()
        try:
            stores.append(Store(storage))
        except Exception as exc:  # collected, then asserted empty below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores if errors else []:
        s.close()
    assert errors == []
    return stores


def schema_of(store: Store) -> tuple[list[int], list[str]]:
    """The version rows, and the tables there are."""
    with store.engine.connect() as conn:
        versions = conn.exec_driver_sql("SELECT version FROM schema_version").scalars().all()
    return list(versions), sorted(sa.inspect(store.engine).get_table_names())


def test_many_processes_starting_at_once_create_the_schema_once(storage):
    stores = start_at_once(storage)
    try:
        assert schema_of(stores[0]) == (
            [SCHEMA_VERSION],
            [
                "alert_messages",
                "alerts",
                "attempts",
                "counters",
                "deliveries",
                "destination_health",
                "events",
                "schema_version",
            ],
        )
    finally:
        for s in stores:
            s.close()


def test_a_version_1_database_opened_by_many_processes_at_once_is_upgraded_once(storage):
    store = Store(storage)
    ingest(store, "waiting")
    with store.transaction() as conn:  # back to what version 1 had
        conn.exec_driver_sql("DROP TABLE alerts")  # version 6's
        conn.exec_driver_sql("DROP TABLE alert_messages")
        conn.exec_driver_sql("ALTER TABLE deliveries DROP COLUMN waiting_since")
        conn.exec_driver_sql("DROP TABLE counters")
        conn.exec_driver_sql("DROP TABLE destination_health")
        conn.exec_driver_sql("DROP INDEX deliveries_due_to")
        conn.exec_driver_sql("CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at)")
        conn.exec_driver_sql("DROP INDEX deliveries_status_id")  # version 5's
        conn.exec_driver_sql("DROP INDEX attempts_started")
        conn.exec_driver_sql("UPDATE schema_version SET version = 1")
    store.close()
    stores = start_at_once(storage)
    try:
        versions, tables = schema_of(stores[0])
        inspect = sa.inspect(stores[0].engine)
        indexes = {i["name"] for t in ("deliveries", "attempts") for i in inspect.get_indexes(t)}
        with stores[0].engine.connect() as conn:
            waiting = conn.execute(sa.select(deliveries.c.waiting_since)).scalars().all()
    finally:
        for s in stores:
            s.close()
    assert versions == [SCHEMA_VERSION]
    assert "counters" in tables and "destination_health" in tables
    assert "deliveries_due_to" in indexes and "deliveries_due" not in indexes
    assert {"deliveries_status_id", "attempts_started"} <= indexes  # the admin console's
    assert "alerts" in tables and waiting and None not in waiting  # a pending one waits since


def test_an_idle_claim_takes_no_write_lock(tmp_path, clock):
    store = Store(f"sqlite:///{tmp_path}/relay.db", timeout=0.3, clock=clock)
    ingest(store, "later")
    with store.transaction() as conn:
        conn.execute(deliveries.update().values(next_attempt_at=clock.now + 60))
    try:
        with open(tmp_path / "relay.db.lock", "a") as other:  # another process writing
            fcntl.flock(other, fcntl.LOCK_EX)
            assert store.claim_due(10, lease=30, destinations=["sink"]) == []  # no wait, no 503
            clock.now += 61
            with pytest.raises(StorageUnavailable):  # now something is due: it needs the lock
                store.claim_due(10, lease=30, destinations=["sink"])
    finally:
        store.close()


@pytest.mark.parametrize("destinations", [["sink"], None])
def test_a_claim_reads_through_the_index_not_the_table(store, destinations):
    """The claim's search for due deliveries, as the database plans it, on both backends."""
    due = (deliveries.c.status == "pending") & (deliveries.c.next_attempt_at <= 0)
    if destinations:
        due &= deliveries.c.destination.in_(destinations)
    query = sa.select(deliveries.c.id).where(due).order_by(deliveries.c.next_attempt_at).limit(9)
    plan = query_plan(store, query)
    if destinations:  # as the worker claims: due ones first, read from deliveries_due_to
        assert "deliveries_due_to" in plan, plan
    else:  # any destination (the tests' claims): the pending ones, through either index
        assert re.search(r"deliveries_(due_to|status_id)", plan), plan
