"""The worker's loops never end for an error: whatever one participation provokes ends that
delivery alone, with a reason, and the next participation is delivered. Through a running relay,
on both backends."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import requests

from hookrelay.config import Policy
from hookrelay.database import deliveries
from hookrelay.retries import backoff
from hookrelay.sources import Incoming
from tests.conftest import basic_config, participation, sample, write_config
from tests.fakes.server import Answer
from tests.processes import post_signed, processes, wait_until


def test_a_payload_the_worker_cannot_read_ends_dead_alone_and_the_next_is_delivered(
    tmp_path, sink, start_relay, caplog
):
    relay = start_relay(basic_config(tmp_path, sink.url))
    # As an older relay could have stored it: text that json.loads refuses (a BOM in front).
    [odd] = relay.relay.store.store_events(
        "qualifio",
        "qualifio",
        [Incoming("\ufeff" + sample("v2-complete.json").decode(), "k")],
        [("pass", "sink")],
    )
    assert relay.post(participation(1)).status_code == 202
    assert sorted(relay.wait_settled()) == ["dead", "delivered"]
    [dead] = [d for d in relay.deliveries() if d["status"] == "dead"]
    assert dead["event_id"] == odd.event_id
    assert dead["last_error"] == "internal error (JSONDecodeError); see the relay's log"
    [line] = [r.getMessage() for r in caplog.records if "internal error\n" in r.getMessage()]
    assert dead["id"] in line and odd.event_id in line and "Traceback" in line
    assert [r.json()["id"] for r in sink.requests] == [json.loads(participation(1))["id"]]


def test_backoff_stays_within_its_bounds_past_a_thousand_attempts():
    policy = Policy(backoff_initial=10, backoff_max=3600)
    assert 0 <= backoff(policy, 5000, None, rng=lambda: 1.0) == 3600
    assert backoff(policy, 1, None, rng=lambda: 1.0) == 10


def test_a_delivery_past_a_thousand_attempts_is_retried_then_delivered(tmp_path, sink, start_relay):
    relay = start_relay(basic_config(tmp_path, sink.url, max_attempts="5000"), worker=False)
    relay.post(participation(1))
    with relay.relay.store.transaction() as conn:  # as if it had failed 1,500 times already
        conn.execute(deliveries.update().values(attempts=1500))
    sink.fail(Answer(500, {"error": "down"}))
    relay.relay.worker.start()
    assert relay.wait_settled() == ["delivered"]
    assert relay.deliveries()[0]["attempts"] == 1502


def test_a_destination_removed_from_the_config_ends_dead_and_replays_once_back(
    tmp_path, sink, start_relay, monkeypatch
):
    monkeypatch.setenv("RELAY_RELOAD_SECONDS", "0.1")
    config = basic_config(tmp_path, sink.url, initial="1h", max="1h")
    text = config.read_text()
    sink.default = Answer(503, {"error": "down"})
    relay = start_relay(config)
    relay.post(participation(1))
    wait_until(lambda: len(sink.seen) == 1)  # tried once, next attempt in up to an hour
    removed = text.replace("- {from: qualifio, mapping: pass, to: [sink]}", "[]").replace(
        f'sink: {{type: http, url: "{sink.url}", }}', "{}"
    )
    assert "sink" not in removed
    config.write_text(removed)
    assert wait_until(lambda: relay.statuses() == ["dead"])
    assert "'sink' is no longer in the config" in relay.deliveries()[0]["last_error"]
    sink.default = Answer(200, {"ok": True})
    config.write_text(text)
    wait_until(lambda: "sink" in relay.relay.config.destinations)
    assert relay.relay.store.replay(dead=True) == 1
    assert relay.wait_settled() == ["delivered"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_readyz_reports_a_worker_thread_that_died(tmp_path, sink, start_relay):
    relay = start_relay(basic_config(tmp_path, sink.url), worker=False)
    worker = relay.relay.worker

    def die(offset: int = 0) -> int:
        raise SystemExit  # what no `except Exception` catches: the thread ends

    worker.run_once = die  # fault injection: nothing in the relay itself ends a thread so
    worker.start()
    answer = wait_until(
        lambda: (
            (r := requests.get(f"{relay.url}/readyz", timeout=5)).status_code == 503
            and len(r.json()["problems"]) == worker.threads
            and r.json()
        )
    )
    assert "worker thread worker-0 is not alive" in answer["problems"]


ODD_MAPPING = """
fields:
  id: id
  year: format_date(variables.born, '%Y')
  since: from_unix(variables.born)
  crm: crm
"""


def v1(n: int, **changes) -> bytes:
    data = json.loads(sample("v1-participation.json"))
    data.update(id=f"v1-{n}", **changes)
    return json.dumps(data).encode()


@pytest.mark.slow
def test_odd_participations_never_stop_a_gunicorn_relay(tmp_path, sink, storage):
    """Each of these stopped every delivery thread, or answered 500, before; now each gets a
    clear answer or is delivered, and a good participation posted after them arrives."""
    config = write_config(
        tmp_path,
        basic_config(tmp_path, sink.url, lease="1s", mapping=ODD_MAPPING)
        .read_text()
        .replace("max_attempts: 4", "max_attempts: 2000"),
    )
    url, [web] = processes(tmp_path, config)
    try:
        stored = {
            "a UTF-8 BOM": b"\xef\xbb\xbf" + participation(1),
            "a 1.0 payload whose crm is a list": v1(2, crm=["a", "b"]),
            "a date far past any calendar": participation(3, born=1e300),
            "a lone surrogate in an answer": participation(4).replace(b"Zo\xc3\xab", b"\\ud800"),
            "a NUL in the id": participation(5).replace(b'"id": "', b'"id": "\\u0000', 1),
        }
        for what, body in stored.items():
            assert post_signed(url, body).status_code == 202, what
        refused = {
            "100,000 nested brackets": b"[" * 100_000 + b"]" * 100_000,
            "a UTF-16 body": participation(6).decode().encode("utf-16"),
            "NaN": participation(7).replace(b'"state"', b'"score": NaN, "state"'),
        }
        for what, body in refused.items():
            assert post_signed(url, body).status_code == 400, what
        forged = requests.post(f"{url}/hooks/qualifio%0aFORGED%20line", data=b"{}", timeout=10)
        assert forged.status_code == 404
        assert post_signed(url, participation(8)).status_code == 202

        def arrived() -> set[str]:
            return {r.json()["id"] for r in sink.requests}

        wanted = {"v1-2", *(json.loads(participation(n))["id"] for n in (1, 3, 4, 8))}
        assert wait_until(lambda: wanted <= arrived() and len(sink.requests) == 6, timeout=30)
        assert requests.get(f"{url}/readyz", timeout=5).json()["status"] == "ready"
    finally:
        web.stop()
    log = web.log.read_text()
    assert "Traceback" not in log and "internal error" not in log
    assert not any(line.startswith("FORGED") for line in log.splitlines())
    assert "qualifio\\nFORGED line" in log


def delivery_processes(master: int) -> list[int]:
    """The `relay worker` processes gunicorn's master started."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == master and b"worker" in command and b"hookrelay" in command:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_gunicorn_delivers_from_a_process_of_its_own_started_again_if_it_dies(
    tmp_path, sink, storage
):
    url, [web] = processes(tmp_path, basic_config(tmp_path, sink.url))  # as the README runs it
    try:
        assert post_signed(url, participation(1)).status_code == 202
        assert wait_until(lambda: len(sink.requests) == 1)
        [first] = wait_until(lambda: delivery_processes(web.proc.pid))
        os.kill(first, signal.SIGKILL)
        [second] = wait_until(lambda: [p for p in delivery_processes(web.proc.pid) if p != first])
        assert post_signed(url, participation(2)).status_code == 202
        assert wait_until(lambda: len(sink.requests) == 2)
    finally:
        web.stop()
    assert f"delivery worker (pid {first}) exited; starting it again" in web.log.read_text()
