"""PostgreSQL: many web and worker processes on one database keep every promise SQLite keeps.

Nothing lost, nothing sent by two workers, dedupe exact; a dead worker's claims are taken over
after its lease; a database restart means 503s while it is down, then recovery by itself.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import RunningRelay, basic_config, participation, relay_command
from tests.fakes.server import Answer, FakeServer
from tests.processes import (
    Supervised,
    post_signed,
    processes,
    wait_until,
    webhook_id,
    worker_runs,
)

pytestmark = pytest.mark.slow

PARTICIPATIONS = 2000  # enough for the 4 workers to contend on every claim


def test_3_web_and_4_worker_processes_deliver_each_participation_once(tmp_path, pg_storage):
    with FakeServer() as sink:
        config = basic_config(tmp_path, sink.url, lease="30s")
        url, running = processes(tmp_path, config, webs=3, workers=4)
        try:
            bodies = [(n, participation(n)) for n in range(PARTICIPATIONS)]
            bodies += [(n, participation(n)) for n in range(0, PARTICIPATIONS, 10)]  # sent twice
            random.Random(6).shuffle(bodies)
            with ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(lambda item: (item[0], post_signed(url, item[1])), bodies))
            by_id = defaultdict(list)
            for n, answer in answers:
                by_id[n].append((answer.status_code, answer.json()["duplicate"]))
            for n, got in by_id.items():
                expected = [(200, True), (202, False)] if n % 10 == 0 else [(202, False)]
                assert sorted(got) == expected, n
            event_ids = {n: {a.json()["event_id"] for m, a in answers if m == n} for n in by_id}
            assert all(len(ids) == 1 for ids in event_ids.values())  # a repeat names the first

            wait_until(lambda: len(sink.requests) >= PARTICIPATIONS, timeout=180)
            time.sleep(1)  # anything sent twice would arrive now
            received = Counter(r.json()["id"] for r in sink.requests)
            assert len(received) == PARTICIPATIONS and set(received.values()) == {1}
            assert len({webhook_id(r) for r in sink.requests}) == PARTICIPATIONS
            per_worker = [p.log.read_text().count(": delivered") for p in running[1:]]
            assert sum(per_worker) == PARTICIPATIONS and sum(n > 0 for n in per_worker) >= 2
        finally:
            for process in running:
                process.stop()


def test_a_killed_workers_claims_are_completed_by_another_after_the_lease(tmp_path, pg_storage):
    with FakeServer() as sink:
        sink.fail(*[Answer(200, {"ok": True}, delay=5.0)] * 4)  # worker A hangs mid-send
        config = basic_config(tmp_path, sink.url, lease="2s", timeout="10s")
        url, [web, a] = processes(tmp_path, config, webs=1, workers=1)
        try:
            for n in range(4):
                assert post_signed(url, participation(n)).status_code == 202
            wait_until(lambda: len(sink.seen) == 4, timeout=20)  # all four in flight in A
            a.kill()
            b = Supervised("worker-b", a.command, a.env, tmp_path, worker_runs)
            b.start()
            wait_until(
                lambda: (
                    relay_command("events", "--status", "pending", "--config", str(config)).stdout
                    == ""
                ),
                timeout=30,
            )
            assert b.log.read_text().count(": delivered") == 4  # B took over A's claims
            ids = defaultdict(set)
            for r in sink.seen:
                ids[r.json()["id"]].add(webhook_id(r))
            assert len(ids) == 4 and all(len(w) == 1 for w in ids.values())
            b.stop()
        finally:
            web.stop()
            a.stop()


def pg_ctl(action: str) -> None:
    version = os.listdir("/etc/postgresql")[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_a_database_restart_means_503_then_recovery_by_itself(tmp_path, pg_storage):
    with FakeServer() as sink:
        relay = RunningRelay(basic_config(tmp_path, sink.url, storage_timeout="1s"))
        try:
            assert relay.post(participation(1)).status_code == 202
            pg_ctl("stop")
            try:
                down = relay.post(participation(2))
                assert down.status_code == 503 and down.headers["Retry-After"].isdigit()
                ready = requests.get(f"{relay.url}/readyz", timeout=10)
                assert ready.status_code == 503
                assert ready.json()["problems"][0].startswith("storage does not answer")
            finally:
                pg_ctl("start")
            wait_until(lambda: relay.post(participation(2)).status_code in (200, 202), timeout=30)
            assert requests.get(f"{relay.url}/readyz", timeout=10).status_code == 200
            assert relay.wait_settled(timeout=30) == ["delivered", "delivered"]
            assert sorted(r.json()["id"] for r in sink.requests) == sorted(
                json.loads(participation(n))["id"] for n in (1, 2)
            )
        finally:
            relay.stop()
