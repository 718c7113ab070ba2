"""A burst of participations into Google Sheets: batched rows against one row per call.

    .venv/bin/python bench/sheets_burst.py                      # 10,000 participations
    .venv/bin/python bench/sheets_burst.py --count 2000 --baseline-seconds 30

Why: Google allows 60 write requests a minute per service account. A relay that writes one row per
call needs 2 h 47 min for 10,000 rows and meets a wall of 429s if it tries faster; batching turns
the same burst into a few calls. The target: every row in the sheet within 2 minutes.

What runs, in the production layout: gunicorn serving `relay:app` (RELAY_WORKER=off, SQLite) and
one `relay worker` process, against the strict fake Google of the tests (tests/fakes/google.py:
OAuth token endpoint and Sheets API, checked against ../shared/specs), which enforces 60 write
requests per rolling minute and answers 429 RESOURCE_EXHAUSTED beyond. --count participations are
posted at once by 16 threads; the clock runs from the first post until the last row is in the fake
sheet. Then the same with `batch_size: 1`, stopped after --baseline-seconds: its rate gives the
projected time for the whole burst.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hookrelay.auth import sign  # noqa: E402
from tests.fakes.google import FakeGoogle, Spreadsheet  # noqa: E402
from tests.fakes.openapi import SPECS  # noqa: E402
from tests.processes import free_port  # noqa: E402

SECRET = "bench-secret"
CONFIG = """\
storage: sqlite:///relay.db
sources:
  qualifio: {{format: qualifio, auth: {{signature: {{secrets: ["{secret}"]}}}}}}
destinations:
  sheet: {{type: google_sheets, spreadsheet_id: burst, sheet: Participations,
           credentials: "${{GOOGLE_CREDENTIALS}}", base_url: "{base_url}",
           batch_size: {batch_size}}}
routes:
  - {{from: qualifio, mapping: sheet_row, to: [sheet]}}
"""


def bodies(count: int) -> list[bytes]:
    sample = json.loads((ROOT / "samples" / "v2-complete.json").read_text())
    out = []
    for n in range(count):
        sample["id"] = f"00000000-0000-4000-8000-{n:012d}"
        out.append(json.dumps(sample, ensure_ascii=False).encode())
    return out


def run(count: int, batch_size: int, stop_after: float | None) -> dict[str, float]:
    """One burst; returns seconds, rows written, write calls and 429s seen."""
    tmp = Path(tempfile.mkdtemp(prefix="sheets-burst-"))
    (tmp / "mappings").mkdir()
    shutil.copy(ROOT / "mappings" / "sheet_row.yaml", tmp / "mappings")
    with FakeGoogle(writes_per_minute=60) as google:
        google.spreadsheets["burst"] = Spreadsheet(tabs={"Participations": []})
        (tmp / "config.yaml").write_text(
            CONFIG.format(secret=SECRET, base_url=google.sheets_url, batch_size=batch_size)
        )
        port = free_port()
        env = {
            **os.environ,
            "RELAY_CONFIG": str(tmp / "config.yaml"),
            "GOOGLE_CREDENTIALS": json.dumps(google.credentials()),
            "HTTP_PROXY": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "NO_PROXY": "127.0.0.1,localhost",
            "PORT": str(port),
        }
        log = open(tmp / "relay.log", "wb")
        web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:hookrelay.gunicorn_conf", "relay:app"],
            cwd=ROOT,
            env={**env, "RELAY_WORKER": "off"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        worker = subprocess.Popen(
            [sys.executable, "-m", "hookrelay", "worker"], env=env, stdout=log, stderr=log
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url)
            payloads = bodies(count)
            tab = google.sheet("burst", "Participations")
            started = time.monotonic()
            posted = _post_all(url, payloads)
            ingest = time.monotonic() - started
            deadline = started + (stop_after or 600)
            while len(tab) - 1 < count and time.monotonic() < deadline:
                time.sleep(0.1)
            took = time.monotonic() - started
            statuses = [a for a in google.sheets.seen if a.method != "GET"]
            return {
                "posted": posted,
                "ingest_s": ingest,
                "seconds": took,
                "rows": max(0, len(tab) - 1),
                "writes": len(google.writes),
                "refused": len(statuses) - len(google.writes),
            }
        finally:
            for proc in (worker, web):
                proc.send_signal(signal.SIGTERM)
            for proc in (worker, web):
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log.close()
            shutil.rmtree(tmp, ignore_errors=True)


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit("the relay did not start; see its log")


def _post_all(url: str, payloads: list[bytes]) -> int:
    local = threading.local()

    def post(body: bytes) -> bool:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        headers = {"Content-Type": "application/json", "X-Qualifio-Signature": sign(body, SECRET)}
        for _ in range(20):  # a 503 asks Qualifio to come back, so do we
            answer = local.session.post(f"{url}/hooks/qualifio", data=body, headers=headers)
            if answer.status_code in (200, 202):
                return True
            time.sleep(0.5)
        return False

    with ThreadPoolExecutor(16) as pool:
        return sum(pool.map(post, payloads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--baseline-seconds", type=float, default=90.0)
    args = parser.parse_args()
    if not SPECS.is_dir():
        raise SystemExit(f"{SPECS} not found: the fake Google checks requests against its spec")
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the fake's access log
    print(f"{args.count} participations, fake Sheets enforcing 60 write requests per minute")
    batched = run(args.count, 500, None)
    single = run(args.count, 1, args.baseline_seconds)
    projected = single["seconds"] * args.count / max(1, single["rows"])
    print(f"{'':14} {'rows':>7} {'seconds':>8} {'writes':>7} {'429s':>5}")
    for name, r in (("batch_size 500", batched), ("batch_size 1", single)):
        print(
            f"{name:14} {r['rows']:7.0f} {r['seconds']:8.1f} {r['writes']:7.0f} {r['refused']:5.0f}"
        )
    print(f"ingest of the burst: {batched['ingest_s']:.1f} s (batched run)")
    print(
        f"batch_size 1 would need {projected / 60:.0f} min for all {args.count} rows; "
        f"batched took {batched['seconds']:.0f} s: {projected / batched['seconds']:.0f}x faster"
    )
    if batched["rows"] < args.count:
        raise SystemExit("not every row reached the sheet")


if __name__ == "__main__":
    main()
