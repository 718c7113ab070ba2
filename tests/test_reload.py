"""Hot reload in a running gunicorn with two workers: a valid edit is picked up by every process,
an invalid one is refused while the last good mapping keeps delivering."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import LOG_FILES, ROOT, SECRET, participation, write_config
from tests.processes import free_port, post_signed, wait_until

pytestmark = pytest.mark.slow

CONFIG = f"""
storage: ${{RELAY_TEST_STORAGE}}
max_body_bytes: 100000
sources:
  qualifio: {{format: qualifio, auth: {{signature: {{secrets: ["{SECRET}"]}}}}}}
destinations:
  rows: {{type: file, path: rows.jsonl}}
routes:
  - {{from: qualifio, mapping: row, to: [rows]}}
delivery:
  backoff: {{initial: 50ms, max: 200ms}}
"""


def rows(directory: Path) -> list[dict]:
    path = directory / "rows.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def every_worker_answers(url: str, unsigned: bytes, status: int) -> None:
    """Wait until ten requests in a row, each on a new connection, get `status`: with two
    workers taking turns at accepting, that is both workers running the same config."""
    wait_until(
        lambda: all(
            requests.post(f"{url}/hooks/qualifio", data=unsigned, timeout=5).status_code == status
            for _ in range(10)
        )
    )


def by_id(found: list[dict], n: int) -> dict:
    return next(r for r in found if r["id"] == json.loads(participation(n))["id"])


def edit(path: Path, text: str) -> None:
    """Write a file so its change is seen even within one clock tick."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_edits_are_picked_up_by_every_worker_and_bad_ones_refused(tmp_path, storage):
    config = write_config(tmp_path, CONFIG, {"row": "fields: {id: id}\n"})
    port, log = free_port(), tmp_path / "gunicorn.log"
    LOG_FILES.append(log)
    env = {
        **os.environ,
        "RELAY_CONFIG": str(config),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "WEB_CONCURRENCY": "2",
        "RELAY_RELOAD_SECONDS": "0.2",
    }
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:hookrelay.gunicorn_conf", "relay:app"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/healthz", timeout=1).ok)
        assert post_signed(url, participation(1)).status_code == 202
        assert wait_until(lambda: rows(tmp_path)) == [{"id": json.loads(participation(1))["id"]}]

        # A valid edit: a new field in the mapping, a smaller body limit in config.yaml.
        edit(tmp_path / "mappings/row.yaml", "fields: {id: id, state: state}\n")
        edit(config, CONFIG.replace("max_body_bytes: 100000", "max_body_bytes: 1000"))
        # Every gunicorn worker refuses a large body now (one connection per request, so both
        # answer); an unsigned body is 401 before the reload and 413 after, and stores nothing.
        big = participation(2)
        every_worker_answers(url, big, 413)
        mark = len(log.read_text())
        edit(config, CONFIG)
        every_worker_answers(url, big, 401)  # the limit is back: now it fails on its signature
        # The delivery worker too: each of the three processes has reloaded since.
        wait_until(lambda: log.read_text()[mark:].count("config reloaded") >= 3)
        wait_until(lambda: post_signed(url, participation(3)).status_code == 202)
        found = wait_until(lambda: len(rows(tmp_path)) == 2 and rows(tmp_path))
        assert by_id(found, 3) == {"id": json.loads(participation(3))["id"], "state": "COMPLETED"}

        # An invalid edit is refused, shown on /readyz, and the last good mapping keeps working.
        edit(tmp_path / "mappings/row.yaml", "fields: {id: id, state: lowr(state)}\n")
        refused = wait_until(
            lambda: requests.get(f"{url}/readyz", timeout=2).json().get("config_refused")
        )
        assert "mappings/row.yaml:1: fields.state: unknown function lowr()" in refused[0]
        assert post_signed(url, participation(4)).status_code == 202
        found = wait_until(lambda: len(rows(tmp_path)) == 3 and rows(tmp_path))
        assert by_id(found, 4) == {"id": json.loads(participation(4))["id"], "state": "COMPLETED"}
        assert "config change refused" in log.read_text()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)
