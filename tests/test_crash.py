"""Crash test: kill -9 the delivery worker, or the web process, at random moments under load.

What it proves: in a run of 500 participations posted as Qualifio posts them (retrying the same
body after a connection error or a non-2xx answer), while the worker (one case) or the gunicorn web
process group (the other case) is killed with SIGKILL at random moments and restarted at once:

- every participation answered 2xx reaches the sink, and nothing else does;
- every repeat the sink sees carries the same `webhook-id` as the first request for that
  participation, so a receiver that dedupes on it sees each participation exactly once;
- no delivery ends dead, and none is left pending.

Set CRASH_SEED to replay a run's kill schedule (the seed is printed).
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import basic_config, participation, relay_command
from tests.fakes.server import FakeServer
from tests.processes import (
    READY_WITHIN,
    Supervised,
    free_port,
    post_until_stored,
    web_answers,
    webhook_id,
    worker_runs,
)

pytestmark = pytest.mark.slow

PARTICIPATIONS = 500
POSTERS = 8
MIN_KILLS = 5  # the killer keeps going after posting ends until it has killed this many times
SETTLE_WITHIN = 90.0  # seconds after the last kill for every delivery to reach the sink


def relay_events(config_path: Path, status: str) -> str:
    done = relay_command(
        "events", "--status", status, "--limit", "10000", "--config", str(config_path)
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("victim", ["worker", "web"])
def test_sigkill_loses_nothing_and_repeats_keep_their_webhook_id(
    tmp_path: Path, victim: str, storage: str
) -> None:
    seed = int(os.environ.get("CRASH_SEED") or random.randrange(2**32))
    print(f"victim={victim} CRASH_SEED={seed}")
    rng = random.Random(seed)
    bodies = {
        json.loads(body)["id"]: body for body in (participation(n) for n in range(PARTICIPATIONS))
    }
    assert len(bodies) == PARTICIPATIONS

    with FakeServer() as sink:
        config_path = basic_config(tmp_path, sink.url, lease="2s", max_attempts="50")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        web_env = {
            **os.environ,
            "RELAY_CONFIG": str(config_path),
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "RELAY_WORKER": "off",
            "WEB_CONCURRENCY": "2",
        }
        web = Supervised(
            "web",
            [sys.executable, "-m", "gunicorn", "-c", "python:hookrelay.gunicorn_conf", "relay:app"],
            web_env,
            tmp_path,
            web_answers(url),
        )
        worker = Supervised(
            "worker",
            [sys.executable, "-m", "hookrelay", "worker", "--config", str(config_path)],
            dict(os.environ),
            tmp_path,
            worker_runs,
        )
        target = web if victim == "web" else worker

        posting_done, stop = threading.Event(), threading.Event()
        kills: list[float] = []  # when each kill happened
        killer_errors: list[BaseException] = []

        def killer() -> None:
            try:
                while not stop.is_set() and not (posting_done.is_set() and len(kills) >= MIN_KILLS):
                    if stop.wait(rng.uniform(0.2, 0.8)):
                        return
                    target.kill()
                    kills.append(time.monotonic())
                    target.start()  # waits until it is ready again, before the next interval
            except BaseException as exc:  # reported by the test's thread
                killer_errors.append(exc)

        started = time.monotonic()
        try:
            web.start()
            worker.start()
            killing = threading.Thread(target=killer, name="killer", daemon=True)
            killing.start()
            try:
                with ThreadPoolExecutor(POSTERS) as pool:
                    statuses = dict(
                        zip(
                            bodies,
                            pool.map(lambda b: post_until_stored(url, b), bodies.values()),
                            strict=True,
                        )
                    )
            finally:
                posting_done.set()
                killing.join(READY_WITHIN * 2)
                stop.set()
            posted = time.monotonic()
            assert not killing.is_alive(), "the killer thread hangs"
            assert not killer_errors, killer_errors[0]
            for process in (web, worker):  # both up at the end, not dead by themselves
                assert process.proc is not None and process.proc.poll() is None, process.log

            answered = set(statuses)
            deadline = time.monotonic() + SETTLE_WITHIN
            while (
                not answered <= {r.json()["id"] for r in list(sink.requests)}
                and time.monotonic() < deadline
            ):
                time.sleep(0.1)
            # A worker killed between the sink's answer and recording it leaves the delivery
            # pending until its lease ends; wait for those repeats too, so none comes later.
            while relay_events(config_path, "pending") and time.monotonic() < deadline:
                time.sleep(0.5)
            settled = time.monotonic()
            assert relay_events(config_path, "pending") == "", "deliveries still pending"
            assert relay_events(config_path, "dead") == "", "dead deliveries"

            received = list(sink.requests)
            ids_by_participation: dict[str, set[str]] = defaultdict(set)
            for request in received:
                ids_by_participation[request.json()["id"]].add(webhook_id(request))
            repeats = len(received) - len(ids_by_participation)
            print(
                f"victim={victim}: {len(kills)} kills "
                f"({sum(k < posted for k in kills)} while posting), {len(answered)} answered 2xx "
                f"({sum(s == 200 for s in statuses.values())} as duplicates), "
                f"{len(received)} sink requests, {repeats} repeats "
                f"({len(sink.seen)} seen); posting {posted - started:.1f}s, "
                f"settled after {settled - posted:.1f}s"
            )

            assert set(ids_by_participation) == answered
            assert len(answered) == PARTICIPATIONS
            split = {p: ids for p, ids in ids_by_participation.items() if len(ids) != 1}
            assert not split, f"participations sent with different webhook-ids: {split}"
            assert len(kills) >= 3
        finally:
            stop.set()
            for process in (web, worker):
                process.stop()
