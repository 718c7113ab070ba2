"""Destination health: a 429 pauses the whole destination, failures in a row open its circuit
(one probe at a time), the first answer closes it and sends what waited at once."""

from __future__ import annotations

import time

import pytest
import requests

from hookrelay import health
from hookrelay.claims import Delivery, Outcome
from hookrelay.config import Policy
from hookrelay.health import CIRCUIT_AFTER, Health, judge, probe_interval
from tests.conftest import basic_config, ingest, participation, relay_command
from tests.fakes.server import Answer, Received
from tests.processes import post_signed, processes, wait_until

POLICY = Policy(backoff_initial=10.0, backoff_max=3600.0)
DOWN = Answer(503, {"error": "down for maintenance"})


def attempt(signal: str | None, next_attempt_at: float | None = None) -> Outcome:
    d = Delivery("d1", "e1", "m", "sink", 0, "c", "qualifio", "json", "{}", 0.0)
    status = "delivered" if signal == "up" else "pending"
    return Outcome(d, status, 0.0, 1, "answered", None, next_attempt_at, True, signal)  # type: ignore[arg-type]


def test_failures_in_a_row_open_the_circuit_and_an_answer_closes_it():
    h = Health("sink")
    for n in range(1, CIRCUIT_AFTER):
        h = judge(h, [attempt("down")], POLICY, 100.0)
        assert (h.state, h.failures) == ("ok", n)
    h = judge(h, [attempt("down")], POLICY, 100.0)
    assert (h.state, h.paused_until, h.since) == ("open", 110.0, 100.0)
    h = judge(h, [attempt("down")], POLICY, 200.0)  # a failed probe: the next one later
    assert (h.state, h.paused_until, h.since) == ("open", 220.0, 100.0)
    assert judge(h, [attempt("up")], POLICY, 300.0) == Health("sink")


def test_an_answer_between_failures_starts_the_count_again():
    h = Health("sink", failures=CIRCUIT_AFTER - 1)
    h = judge(h, [attempt("down"), attempt("up")], POLICY, 100.0)
    assert h == Health("sink")


def test_a_429_pauses_until_its_retry_after_and_keeps_the_failure_count():
    h = judge(Health("sink", failures=2), [attempt("throttled", 130.0)], POLICY, 100.0)
    assert (h.state, h.paused_until, h.failures, h.since) == ("throttled", 130.0, 2, 100.0)
    assert judge(h, [attempt(None)], POLICY, 140.0) == h  # nothing was sent: nothing learnt


def test_probes_come_at_most_every_30s_unless_the_backoff_starts_longer():
    intervals = [probe_interval(POLICY, CIRCUIT_AFTER + k) for k in range(8)]
    assert intervals == [10, 20, 30, 30, 30, 30, 30, 30]
    slow = Policy(backoff_initial=120.0, backoff_max=3600.0)
    assert probe_interval(slow, 40) == 120
    assert probe_interval(Policy(backoff_initial=0.1, backoff_max=0.5), 40) == 0.5


def test_a_destination_throttled_past_throttle_max_ends_what_waited_that_long(store, clock):
    old = ingest(store, "old")
    clock.now += 2 * 3600
    new = ingest(store, "new")
    policy = Policy(throttle_max=3600.0)
    with store.transaction() as conn:
        conn.exec_driver_sql(
            "INSERT INTO destination_health "
            "(destination, state, failures, paused_until, since, updated_at) "
            f"VALUES ('sink', 'open', 9, {clock.now + 30}, {clock.now - 7200}, {clock.now})"
        )
    assert health.expire(store, {"sink": policy}) == {"sink": 1}
    assert health.expire(store, {"sink": policy}) == {"sink": 0}
    rows = store_statuses(store)
    assert rows[old[0].event_id][0] == "dead" and rows[new[0].event_id][0] == "pending"
    assert "sink was open for over 1h; replay once it is back" in rows[old[0].event_id][1]


def store_statuses(store) -> dict[str, tuple[str, str]]:
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT event_id, status, last_error FROM deliveries WHERE destination = 'sink'"
        )
        return {e: (s, r) for e, s, r in rows}


def test_a_429_pauses_the_destination_and_spends_no_attempt(tmp_path, sink, start_relay):
    first: list[float] = []

    def slow_down(request: Received) -> Answer:
        # Every request in the 0.3 s after the first one is refused: 429, Retry-After: 1.
        first.append(request.at)
        if request.at - first[0] < 0.3:
            return Answer(429, {"error": "slow down"}, {"Retry-After": "1"})
        return Answer(202, {"ok": True})

    sink.handle = slow_down
    # One attempt allowed: a 429 that spent it would leave the delivery dead.
    relay = start_relay(basic_config(tmp_path, sink.url, max_attempts="1"))
    for n in range(5):
        relay.post(participation(n))
    assert relay.wait_settled(timeout=20) == ["delivered"] * 5
    assert all(d["attempts"] == 1 for d in relay.deliveries())
    assert len(sink.seen) > 5 and len(sink.requests) == 5
    # Nothing reached the sink from the end of the window until Retry-After had passed.
    assert not [r for r in sink.seen if 0.3 <= r.at - first[0] < 0.95]
    assert len({r.headers["Webhook-Id"] for r in sink.requests}) == 5


def test_a_destination_that_is_down_is_probed_then_sent_everything_once_back(
    tmp_path, sink, start_relay
):
    sink.default = DOWN
    config = basic_config(tmp_path, sink.url, initial="300ms", max="1s", max_attempts="12")
    relay = start_relay(config)
    store = relay.relay.store
    for n in range(CIRCUIT_AFTER):
        relay.post(participation(n))
    wait_until(lambda: health.read(store, "sink").state == "open")
    for n in range(CIRCUIT_AFTER, CIRCUIT_AFTER + 20):  # these wait, untried but for the probes
        relay.post(participation(n))
    before = len(sink.seen)
    time.sleep(3)
    probes = len(sink.seen) - before
    assert 0 < probes <= 6  # every 0.3, 0.6, 1, 1 s: one request each, not 20 retrying
    listed = relay_command("events", "--config", str(config)).stdout
    assert "destination sink: circuit open since" in listed and "answered 503" in listed
    metrics = requests.get(f"{relay.url}/metrics", timeout=5).text
    assert 'hookrelay_destination_state{destination="sink",state="open"} 1.0' in metrics

    sink.default = Answer(202, {"ok": True})
    assert relay.wait_settled(timeout=20) == ["delivered"] * (CIRCUIT_AFTER + 20)
    assert len({r.headers["Webhook-Id"] for r in sink.requests}) == len(sink.requests) == 25
    assert health.read(store, "sink") == Health("sink")


@pytest.mark.slow
def test_several_worker_processes_send_one_probe_between_them(tmp_path, sink, storage):
    sink.default = DOWN
    config = basic_config(tmp_path, sink.url, initial="500ms", max="500ms", max_attempts="50")
    url, started = processes(tmp_path, config, webs=1, workers=3)
    try:
        for n in range(30):
            assert post_signed(url, participation(n)).status_code == 202
        opened = lambda: "circuit open" in relay_command("events", "--config", str(config)).stdout  # noqa: E731
        wait_until(opened)
        before = len(sink.seen)
        time.sleep(4)
        assert len(sink.seen) - before <= 10  # one probe per 0.5 s among three processes
        sink.default = Answer(202, {"ok": True})
        wait_until(lambda: len(sink.requests) == 30)
    finally:
        for process in started:
            process.stop()
    assert len({r.headers["Webhook-Id"] for r in sink.requests}) == 30
