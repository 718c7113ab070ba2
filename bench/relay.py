"""Relay benchmark: participations relayed end to end per second, against a bare endpoint's
accepted per second, in one run on this machine.

    .venv/bin/python bench/relay.py                        # SQLite, both layouts
    .venv/bin/python bench/relay.py --storage postgresql://127.0.0.1:5432/test
    .venv/bin/python bench/relay.py --layout procfile --duration 10

What runs (bench/ingest.py's load generator and servers):
- `bench/bare.py` under the project's gunicorn settings: its accepted req/s is the baseline. It
  is also the sink the relay delivers to (an `http` destination, keep-alive, answers 202).
- the relay under the same settings, in one layout:
  - `default`: `gunicorn relay:app` as the README runs it, the delivery worker inside;
  - `procfile`: `gunicorn relay:app` with RELAY_WORKER=off, and one `relay worker` process.
- the load generator posts distinct signed participations (2.5 KB) at full speed for --duration
  seconds; then the run waits until no delivery is pending.

Printed per layout: accepted req/s while delivering; relayed/s, the participations delivered
divided by the time from the first post to the last delivery; the time to drain after posting
stopped; each as a ratio of bare's accepted req/s; and CPU seconds per relayed participation
(every process of the relay). Exit 1 when a delivery is not `delivered`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from ingest import (  # type: ignore[import-not-found]
    ROOT,
    Server,
    _cpu_seconds,
    drop_schema,
    measure,
    own_schema,
    start_server,
)

CONFIG_YAML = """\
storage: {storage}
sources:
  qualifio: {{format: qualifio, auth: {{signature: {{secrets: ["bench-secret"]}}}}}}
destinations:
  sink: {{type: http, url: "http://127.0.0.1:{port}/hooks/qualifio"}}
routes:
  - {{from: qualifio, mapping: row, to: [sink]}}
"""
MAPPING_YAML = "fields: {id: id, state: state}\n"
SETTLE_WITHIN = 600.0  # seconds after posting stops for every delivery to end


def engine(storage: str) -> sa.Engine:
    url = storage.replace("postgres://", "postgresql://", 1)
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


def settle(db: sa.Engine) -> tuple[int, int, float, float]:
    """Wait until nothing is pending; (delivered, not delivered, first received, last ended)."""
    deadline = time.monotonic() + SETTLE_WITHIN
    query = sa.text(
        "SELECT sum(CASE WHEN d.status = 'delivered' THEN 1 ELSE 0 END), "
        "sum(CASE WHEN d.status = 'pending' THEN 1 ELSE 0 END), count(*), "
        "min(e.received_at), max(d.updated_at) "
        "FROM deliveries d JOIN events e ON e.id = d.event_id"
    )
    while True:
        with db.connect() as conn:
            delivered, pending, total, first, last = conn.execute(query).one()
        if not pending or time.monotonic() > deadline:
            return delivered or 0, (total or 0) - (delivered or 0), first or 0.0, last or 0.0
        time.sleep(0.2)


def run_layout(layout: str, args: argparse.Namespace, sink: Server, bare_rate: float) -> bool:
    tmp = Path(tempfile.mkdtemp(prefix=f"hookrelay-relay-{layout}-"))
    schema = own_schema(args.storage)
    storage = f"{args.storage}?options=-csearch_path%3D{schema}" if schema else args.storage
    if storage == "sqlite:///relay.db":
        storage = f"sqlite:///{tmp}/relay.db"
    (tmp / "config.yaml").write_text(CONFIG_YAML.format(storage=storage, port=sink.port))
    (tmp / "mappings").mkdir()
    (tmp / "mappings" / "row.yaml").write_text(MAPPING_YAML)
    env = {**os.environ, "RELAY_CONFIG": str(tmp / "config.yaml")}
    env.pop("RELAY_LOG_LEVEL", None)
    workers: list[subprocess.Popen[bytes]] = []
    if layout == "procfile":
        env["RELAY_WORKER"] = "off"
        with open(tmp / "worker.log", "wb") as out:
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "hookrelay", "worker"],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    relay = start_server("relay", ["relay:app"], env, tmp, tmp)
    try:
        relay.wait_ready()
        cpu0 = relay.cpu_seconds() + sum(_cpu_seconds(w.pid) for w in workers)
        posted = measure(relay, args)
        posting_ended = time.time()
        delivered, failed, first, last = settle(engine(storage))
        cpu = relay.cpu_seconds() + sum(_cpu_seconds(w.pid) for w in workers) - cpu0
    finally:
        relay.stop()
        for w in workers:
            w.terminate()
            w.wait(30)
        if schema:
            drop_schema(args.storage, schema)
    relayed = delivered / max(1e-9, last - first)
    print(f"\n{layout} layout ({args.storage}):")
    print(
        f"  accepted while delivering: {posted.rate:8.0f} req/s "
        f" ({posted.rate / bare_rate:.2f} x bare)"
    )
    print(f"  relayed end to end:        {relayed:8.0f} /s     ({relayed / bare_rate:.2f} x bare)")
    print(
        f"  delivered {delivered}, not delivered {failed}; drained {last - posting_ended:.1f} s "
        "after posting stopped"
    )
    print(f"  CPU per relayed participation: {1000 * cpu / max(1, delivered):.2f} ms")
    return failed == 0 and posted.non_2xx == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of posting")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before the window")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--pool", type=int, default=40_000, help="bodies per load process")
    parser.add_argument("--storage", default="sqlite:///relay.db", help="relay storage URL")
    parser.add_argument("--layout", choices=("default", "procfile"), action="append")
    args = parser.parse_args()
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    tmp = Path(tempfile.mkdtemp(prefix="hookrelay-bare-"))
    bare = start_server(
        "bare", ["--chdir", str(ROOT / "bench"), "bare:app"], dict(os.environ), tmp, tmp
    )
    ok = True
    try:
        bare.wait_ready()
        bare_rate = measure(bare, args).rate
        print(f"bare Flask endpoint: {bare_rate:.0f} req/s accepted")
        for layout in args.layout or ["default", "procfile"]:
            ok &= run_layout(layout, args, bare, bare_rate)
    finally:
        bare.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
