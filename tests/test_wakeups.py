"""Wake-ups across processes: what makes deliveries due rings every listening worker."""

from __future__ import annotations

import os
import threading

from hookrelay import wakeups
from hookrelay.store import Store
from tests.conftest import ingest
from tests.processes import wait_until


def listening(store) -> tuple[threading.Event, threading.Event]:
    """A listener on the store's database in a thread; (rung, stop)."""
    rung, stop = threading.Event(), threading.Event()
    listener = wakeups.listener(store.engine.url)
    assert listener is not None
    threading.Thread(target=listener.run, args=(rung.set, stop), daemon=True).start()

    def hears() -> bool:  # LISTEN or the FIFO is in place once a ring gets through
        with store.transaction(wakes=True):
            pass
        return rung.wait(0.2)

    wait_until(hears, timeout=10)
    rung.clear()
    return rung, stop


def test_storing_an_event_rings_a_listener_of_another_connection(store):
    rung, stop = listening(store)
    try:
        ingest(store, "a")
        assert rung.wait(5)
        rung.clear()
        store.replay(dead=True)  # replays ring too
        assert rung.wait(5)
    finally:
        stop.set()


def test_a_write_that_makes_nothing_due_does_not_ring(tmp_path):
    # SQLite only: on PostgreSQL, anything else using the database may ring its channel.
    store = Store(f"sqlite:///{tmp_path}/relay.db")
    rung, stop = listening(store)
    try:
        with store.transaction() as conn:
            conn.exec_driver_sql("DELETE FROM counters")
        assert not rung.wait(1)
    finally:
        stop.set()
        store.close()


def test_a_fifo_left_by_a_process_that_died_is_removed_at_the_next_ring(tmp_path):
    directory = tmp_path / "relay.db-wake"
    directory.mkdir()
    os.mkfifo(directory / "12345-1")  # nobody reads it
    wakeups.ring_fifos(directory)
    assert os.listdir(directory) == []
    wakeups.ring_fifos(tmp_path / "nobody-listens")  # no directory: nothing to do, no error
