"""Metrics: every process's counts add up in the database, and /metrics shows the same totals
whichever gunicorn worker answers it."""

from __future__ import annotations

import threading

import requests
from prometheus_client.parser import text_string_to_metric_families

from hookrelay import metrics
from hookrelay.store import Store
from tests.conftest import basic_config, participation
from tests.fakes.server import FakeServer
from tests.processes import post_signed, processes, wait_until

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


def test_metrics_add_up_across_2_gunicorn_workers_and_a_relay_worker(tmp_path, storage):
    with FakeServer() as sink:
        url, running = processes(tmp_path, basic_config(tmp_path, sink.url), webs=2, workers=1)
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
