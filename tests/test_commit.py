"""How writes wait: the group commit isolates a request the database refuses, drops one whose
caller gave up, bounds its queue; the SQLite write lock never blocks for good."""

from __future__ import annotations

import fcntl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import sqlalchemy as sa

from hookrelay.commit import FileLock, GroupCommit
from hookrelay.errors import BadRequest, StorageUnavailable
from hookrelay.sources import Incoming
from hookrelay.store import Store
from tests.conftest import ROOT, RunningRelay, basic_config, participation, relay_command
from tests.processes import wait_until


@pytest.fixture
def pg_store(pg_storage):
    store = Store(pg_storage, timeout=10)
    yield store
    store.close()


def events_locked(url: str):
    """Another connection holding the events table: the writer blocks inside its transaction
    until the test lets go, while more requests queue behind it."""
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    conn = engine.connect()
    conn.exec_driver_sql("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
    return engine, conn


def store_one(store: Store, key: str, payload: str = "{}"):
    return store.store_events("qualifio", "qualifio", [Incoming(payload, key)], [("m", "d")])


def test_a_request_the_database_refuses_fails_alone(pg_store, pg_storage):
    engine, lock = events_locked(pg_storage)
    with ThreadPoolExecutor(30) as pool:
        first = pool.submit(store_one, pg_store, "first")  # the writer takes it, and waits
        time.sleep(0.2)
        good = [pool.submit(store_one, pg_store, f"good-{i}") for i in range(20)]
        bad = pool.submit(store_one, pg_store, "bad", '{"id": "x\x00"}')  # PostgreSQL: no NUL
        time.sleep(0.2)  # all queued behind the first: one batch when the lock goes
        lock.rollback()
        lock.close()
        engine.dispose()
        assert first.result()[0].duplicate is False
        assert all(f.result()[0].duplicate is False for f in good)
        with pytest.raises(BadRequest, match="cannot be stored as it is"):
            bad.result()


def test_a_request_whose_caller_gave_up_is_not_written(pg_storage):
    store = Store(pg_storage, timeout=0.5)
    engine, lock = events_locked(pg_storage)
    try:
        with ThreadPoolExecutor(2) as pool:
            taken = pool.submit(store_one, store, "taken")
            time.sleep(0.1)
            given_up = pool.submit(store_one, store, "given-up")
            for answer in (taken, given_up):
                with pytest.raises(StorageUnavailable):
                    answer.result()
        lock.rollback()
        wait_for_writer = time.monotonic() + 10
        while store_one(store, "after")[0] is None and time.monotonic() < wait_for_writer:
            pass
        with store.engine.connect() as conn:
            keys = set(conn.exec_driver_sql("SELECT dedupe_key FROM events").scalars())
        # The one the writer held was committed once the lock went (Qualifio's retry would be a
        # duplicate); the one still queued when its caller gave up was never written.
        assert keys == {"taken", "after"}
    finally:
        lock.close()
        engine.dispose()
        store.close()


def test_the_queue_is_bounded():
    writing, release = threading.Event(), threading.Event()

    def write(jobs):
        writing.set()
        release.wait(10)
        return jobs

    commit = GroupCommit(write, wait=30, max_queue=3)
    with ThreadPoolExecutor(4) as pool:
        held = pool.submit(commit.submit, 0)
        assert writing.wait(10)  # the writer holds job 0; the next three fill the queue
        queued = [pool.submit(commit.submit, i) for i in (1, 2, 3)]
        wait_until(lambda: commit._queue.full())
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            commit.submit("one too many")
        assert time.monotonic() - started < 5  # refused at once, not after `wait`
        release.set()
        assert [f.result() for f in (held, *queued)] == [0, 1, 2, 3]


def test_a_lock_file_that_cannot_be_opened_fails_at_once_every_time(tmp_path):
    (tmp_path / "relay.db.lock").mkdir()  # as on a read-only disk: open() fails
    lock = FileLock(str(tmp_path / "relay.db.lock"), timeout=30)
    for _ in range(2):  # the second would wait forever if the first had kept the thread lock
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="cannot lock"), lock:
            pass
        assert time.monotonic() - started < 5


def test_a_lock_held_elsewhere_is_waited_for_at_most_timeout(tmp_path):
    path = tmp_path / "relay.db.lock"
    with open(path, "a") as other:  # another process's hold: flock is per open file
        fcntl.flock(other, fcntl.LOCK_EX)
        lock = FileLock(str(path), timeout=0.3)
        with pytest.raises(StorageUnavailable, match="busy"), lock:
            pass
        fcntl.flock(other, fcntl.LOCK_UN)
    with lock:  # free again
        pass
    lock.close()


def test_a_relay_whose_lock_file_cannot_be_opened_answers_503_and_reads_still_work(tmp_path, sink):
    """SQLite's lock file on a disk turned read-only: answers, not a relay that hangs."""
    config = basic_config(tmp_path, sink.url, storage_timeout="2s")  # SQLite in tmp_path
    RunningRelay(config).stop()  # the database exists
    (tmp_path / "relay.db.lock").unlink()
    (tmp_path / "relay.db.lock").mkdir()
    relay = RunningRelay(config)
    try:
        for _ in range(2):
            answer = relay.post(participation(1))
            assert answer.status_code == 503 and answer.headers["Retry-After"]
        assert relay.post(b"{").status_code == 400
        assert requests.get(f"{relay.url}/readyz", timeout=5).status_code in (200, 503)
        listed = relay_command("events", "--config", str(config), cwd=ROOT)
        assert listed.returncode == 0, listed.stderr
    finally:
        relay.stop()
