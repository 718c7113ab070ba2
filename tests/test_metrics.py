"""Metrics: every process's counts add up in the database, and /metrics shows the same totals
whichever gunicorn worker answers it."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from hookrelay import metrics
from hookrelay.database import SCHEMA_VERSION
from hookrelay.store import Store
from tests.conftest import basic_config, participation
from tests.fakes.server import FakeServer
from tests.processes import Supervised, free_port, post_signed, wait_until, web_answers, worker_runs

PARTICIPATIONS = 20
ODD = 'a "quoted"\\ label,\n{le="x"} é'  # what the exposition format and JSON both escape

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(url: str) -> Samples:
    return samples(requests.get(f"{url}/metrics", timeout=5).text)


def events(outcome: str, source: str = "qualifio") -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("hookrelay_events_received_total", (("outcome", outcome), ("source", source)))


def sink_series(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, tuple(sorted({"destination": "sink", **labels}.items())))


def test_flushes_add_up_and_odd_labels_round_trip(storage):
    """Counts from two tallies (two processes) and two flushes of each land in one row each."""
    store = Store(storage)
    try:
        for _ in range(2):
            tally = metrics.Tally()
            received = metrics.Counter(metrics.EVENTS.name, "", ["source", "outcome"], tally)
            latency = metrics.Histogram(metrics.LATENCY.name, "", ["destination"], [1, 5], tally)
            received.labels(ODD, "stored").inc()
            latency.labels(ODD).observe(0.5)
            tally.flush(store)
            received.labels(ODD, "stored").inc(2)
            latency.labels(ODD).observe(3.0)
            tally.flush(store)
            assert not tally
        found = samples(metrics.render(store).decode())
    finally:
        store.close()
    assert found[events("stored", source=ODD)] == 6
    odd = (("destination", ODD),)
    bucket = metrics.LATENCY.name + "_bucket"
    assert found[(bucket, (*odd, ("le", "1.0")))] == 2
    assert found[(bucket, (*odd, ("le", "5.0")))] == 4
    assert found[(bucket, (*odd, ("le", "+Inf")))] == 4
    assert found[(metrics.LATENCY.name + "_count", odd)] == 4
    assert found[(metrics.LATENCY.name + "_sum", odd)] == 7.0


def test_a_failed_flush_keeps_its_counts_and_logs_only_the_error_type(tmp_path, caplog):
    url, here = f"sqlite:///{tmp_path}/relay.db", threading.get_ident()
    store = Store(url)
    store.engine.dispose()
    (tmp_path / "relay.db").unlink()
    (tmp_path / "relay.db").mkdir()  # SQLite cannot open a directory: every flush fails
    tally = metrics.Tally()
    metrics.Counter("kept", "", ["source"], tally).labels("a").inc()
    flusher = metrics.Flusher(tally)
    flusher.store = store
    flusher.flush()
    flusher.flush()  # still failing: not logged again
    assert tally
    store.close()

    (tmp_path / "relay.db").rmdir()
    store = flusher.store = Store(url)
    try:
        flusher.flush()
        with store.engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT name, labels, value FROM counters").all()
    finally:
        store.close()
    assert rows == [("kept_total", '{"source": "a"}', 1.0)]
    # This thread's lines only: the process's own flusher may be logging too.
    logged = [r for r in caplog.records if r.name == "hookrelay.metrics" and r.thread == here]
    assert [(r.getMessage(), r.exc_info) for r in logged] == [
        ("metrics not saved (OperationalError); kept for the next try", None),
        ("metrics saved again", None),
    ]


def test_a_version_1_database_opened_by_many_processes_at_once_becomes_version_2(storage):
    store = Store(storage)
    with store.transaction() as conn:  # back to what version 1 had
        conn.exec_driver_sql("DROP TABLE counters")
        conn.exec_driver_sql("UPDATE schema_version SET version = 1")
    store.close()
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
    try:
        assert errors == []
        with stores[0].engine.connect() as conn:
            versions = conn.exec_driver_sql("SELECT version FROM schema_version").scalars().all()
            counted = conn.exec_driver_sql("SELECT count(*) FROM counters").scalar()
    finally:
        for s in stores:
            s.close()
    assert versions == [SCHEMA_VERSION] == [2]
    assert counted == 0


def start_processes(tmp_path: Path, config: Path) -> tuple[str, list[Supervised]]:
    """gunicorn with 2 workers and no delivery worker inside, and one `relay worker`."""
    port = free_port()
    env = {
        **os.environ,
        "RELAY_CONFIG": str(config),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "RELAY_WORKER": "off",
        "WEB_CONCURRENCY": "2",
    }
    url = f"http://127.0.0.1:{port}"
    gunicorn = [sys.executable, "-m", "gunicorn", "-c", "python:hookrelay.gunicorn_conf"]
    worker = [sys.executable, "-m", "hookrelay", "worker", "--config", str(config)]
    started = [
        Supervised("web", [*gunicorn, "relay:app"], env, tmp_path, web_answers(url)),
        Supervised("worker", worker, env, tmp_path, worker_runs),
    ]
    for process in started:
        process.start()
    return url, started


def test_metrics_add_up_across_2_gunicorn_workers_and_a_relay_worker(tmp_path, storage):
    with FakeServer() as sink:
        url, running = start_processes(tmp_path, basic_config(tmp_path, sink.url))
        try:
            for n in range(PARTICIPATIONS):
                assert post_signed(url, participation(n)).status_code == 202
            assert post_signed(url, participation(0)).status_code == 200
            expected = {
                events("stored"): PARTICIPATIONS,
                events("duplicate"): 1,
                # Only the `relay worker` process delivers: the web processes run no worker.
                sink_series("hookrelay_delivery_attempts_total", outcome="delivered"): (
                    PARTICIPATIONS
                ),
                sink_series("hookrelay_delivery_latency_seconds_count"): PARTICIPATIONS,
                sink_series("hookrelay_deliveries", status="delivered"): PARTICIPATIONS,
            }
            settled = wait_until(
                lambda: (
                    (found := scrape(url))
                    and all(found.get(k) == v for k, v in expected.items())
                    and found
                )
            )
            # Each scrape opens a new connection, which either gunicorn worker may accept.
            assert all(scrape(url) == settled for _ in range(10))
            assert len(sink.requests) == PARTICIPATIONS
        finally:
            for process in running:
                process.stop()
