"""Relay benchmark: participations relayed end to end, against a bare endpoint's accepted per
second in the same run; then bursts, paced load, memory, a long history and a destination in
trouble, on this machine.

    .venv/bin/python bench/relay.py                        # SQLite, both layouts
    .venv/bin/python bench/relay.py --storage postgresql://127.0.0.1:5432/test
    .venv/bin/python bench/relay.py --layout procfile --duration 10
    .venv/bin/python bench/relay.py --history 1000000 --trouble     # everything, long
    .venv/bin/python bench/relay.py --duration 3 --history 100000 --trouble \\
        --outage-seconds 20 --throttle-seconds 15                   # everything, quick

What runs (bench/ingest.py's load generator and servers):
- `bench/bare.py` under the project's gunicorn settings: its accepted req/s is the baseline; it
  is stopped once measured.
- the sink the relay delivers to (an `http` destination, default policy), `bench/sink.py` in a
  process of its own: answers 202, or 503 or 429 when the benchmark says so, and counts every
  request per mode and per second, and every participation id it accepted.
- the relay under the same settings, in one layout, with a fresh database (SQLite in a temporary
  directory, or a PostgreSQL schema of its own, dropped at the end):
  - `default`: `gunicorn relay:app` as the README runs it, which starts the delivery worker;
  - `procfile`: `gunicorn relay:app` with RELAY_WORKER=off, and one `relay worker` process.

Printed per layout, each phase waiting until no delivery is pending before the next:
1. full speed: the load generator posts distinct signed participations (2.5 KB) with
   --connections connections for --duration seconds: accepted req/s while delivering; relayed/s
   (delivered / time from the first post to the last delivery); the drain after posting stopped;
   each rate as a ratio of bare's accepted req/s; CPU seconds per relayed participation (every
   process of the relay).
2. a burst of --burst participations posted as fast as --connections connections allow: the
   time from the last post to the last delivery, and from the first post to the last delivery.
3. paced load, at each of --rates req/s for --paced-seconds (bench/paced.py: an open loop, each
   request on time whatever the answers before it): ack latency p50/p99, non-2xx answers.
4. the RSS of the relay's processes (gunicorn master, web workers, delivery worker) at the end
   of the load, and their PSS (which counts the pages forked processes share once).
5. with --trouble: an outage (the sink answers 503 for --outage-seconds while participations are
   posted at --trouble-rate per second): the requests that reached the sink while it was down,
   the most in any 10 s, and the time from its recovery to the last waiting delivery; then
   throttling (429 with `Retry-After: 5` for --throttle-seconds, same posting): the 429s
   answered and the deliveries that ended `dead`.
6. exactly once: every event stored for a 2xx, and every delivered participation's id at the
   sink exactly once (nothing lost, nothing sent twice); warnings and errors in the relay's logs.
7. with --history N: a relay on a new database where N delivered participations (event, delivery
   and attempt each) were first stored with bulk SQL; phase 1 again; the ratio with history /
   empty table.

Exit 1 when an answer was not a 2xx (outside the trouble scenarios' destination answers), a
delivery ended neither `delivered` nor (while throttled) `dead`, or a participation was lost or
delivered twice.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from ingest import (
    _PROBLEM,
    ROOT,
    SAMPLE,
    Server,
    _children,
    _cpu_seconds,
    drop_schema,
    make_template,
    measure,
    own_schema,
    start_server,
    write_config,
)
from paced import Posted, post
from sink import Sink, Tally

from hookrelay.database import DELIVERY_COLUMNS, EVENT_COLUMNS, create_schema, new_id

CONFIG_YAML = """\
storage: {storage}
sources:
  qualifio: {{format: qualifio, auth: {{signature: {{secrets: ["bench-secret"]}}}}}}
destinations:
  sink: {{type: http, url: "{url}"}}
routes:
  - {{from: qualifio, mapping: row, to: [sink]}}
"""
MAPPING_YAML = "fields: {id: id, state: state}\n"
HISTORY_CHUNK = 10_000  # rows of each table built and sent at once
PACED_CONNECTIONS = 4  # to begin with: bench/paced.py opens more when all are busy


# --- the relay under test -------------------------------------------------------------------------


@dataclass(slots=True)
class Relay:
    server: Server
    workers: list[subprocess.Popen[bytes]]  # `relay worker` processes (procfile layout)
    db: sa.Engine
    tmp: Path
    since: float  # wall clock before its first post: its events are those received since
    answered: int = 0  # 2xx answers, all phases

    def cpu_seconds(self) -> float:
        return self.server.cpu_seconds() + sum(_cpu_seconds(w.pid) for w in self.workers)


def engine(storage: str) -> sa.Engine:
    url = storage.replace("postgres://", "postgresql://", 1)
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


@contextmanager
def running_relay(
    layout: str, args: argparse.Namespace, sink: Sink, history: int = 0
) -> Iterator[Relay]:
    """A relay on a new database (holding `history` delivered participations), ready; stopped
    and its database removed at the end."""
    tmp = Path(tempfile.mkdtemp(prefix=f"hookrelay-relay-{layout}-"))
    schema = own_schema(args.storage)
    storage = f"{args.storage}?options=-csearch_path%3D{schema}" if schema else args.storage
    if storage == "sqlite:///relay.db":
        storage = f"sqlite:///{tmp}/relay.db"
    (tmp / "config.yaml").write_text(CONFIG_YAML.format(storage=storage, url=sink.url))
    (tmp / "mappings").mkdir()
    (tmp / "mappings" / "row.yaml").write_text(MAPPING_YAML)
    env = {**os.environ, "RELAY_CONFIG": str(tmp / "config.yaml")}
    env.pop("RELAY_LOG_LEVEL", None)
    db, workers, server = engine(storage), [], None
    try:
        if history:
            store_history(db, history)
        if layout == "procfile":
            env["RELAY_WORKER"] = "off"
            with open(tmp / "worker.log", "wb") as out:
                worker = [sys.executable, "-m", "hookrelay", "worker"]
                workers.append(
                    subprocess.Popen(worker, env=env, stdout=out, stderr=subprocess.STDOUT)
                )
        server = start_server("relay", ["relay:app"], env, tmp, tmp)
        server.wait_ready()
        sink.reset()
        yield Relay(server, workers, db, tmp, time.time())
    finally:
        if server is not None:
            server.stop()
        for w in workers:
            w.terminate()
            w.wait(30)
        db.dispose()
        if schema:
            drop_schema(args.storage, schema)
        if args.keep:
            print(f"  kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def settle(relay: Relay, within: float) -> bool:
    """Wait until no delivery is pending (at most `within` seconds); whether none is."""
    deadline = time.monotonic() + within
    probe = sa.text("SELECT 1 FROM deliveries WHERE status = 'pending' LIMIT 1")
    while True:
        with relay.db.connect() as conn:
            if conn.execute(probe).first() is None:
                return True
        if time.monotonic() > deadline:
            print(f"  WARNING: deliveries still pending {within:.0f} s after posting stopped")
            return False
        time.sleep(0.2)


def outcomes(relay: Relay, since: float) -> tuple[Counter[str], float]:
    """The deliveries of the events received since `since`, by status; the first receipt."""
    query = sa.text(
        "SELECT d.status, count(*), min(e.received_at) FROM deliveries d "
        "JOIN events e ON e.id = d.event_id WHERE e.received_at >= :since GROUP BY d.status"
    )
    with relay.db.connect() as conn:
        rows = conn.execute(query, {"since": since}).all()
    return Counter({s: n for s, n, _ in rows}), min((f for *_, f in rows), default=since)


def memory(relay: Relay) -> tuple[dict[str, list[int]], int]:
    """KB of resident memory (RSS) of the relay's processes, each with its descendants, by role;
    and the PSS of them all (a page shared by N processes counts 1/N in each)."""
    master = relay.server.proc.pid
    roles: dict[str, list[int]] = {"gunicorn master": [_kb(master, "status", "VmRSS")]}
    roles.update({"web workers": [], "delivery worker": []})
    pss = _kb(master, "smaps_rollup", "Pss")
    for pid in _children(master) + [w.pid for w in relay.workers]:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        role = "delivery worker" if b"hookrelay\0worker" in cmdline else "web workers"
        tree = [pid, *_descendants(pid)]
        roles[role].append(sum(_kb(p, "status", "VmRSS") for p in tree))
        pss += sum(_kb(p, "smaps_rollup", "Pss") for p in tree)
    return roles, pss


def _kb(pid: int, file: str, key: str) -> int:
    """A `key: N kB` line of /proc/<pid>/<file>."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        found += [child, *_descendants(child)]
    return found


# --- a long history, stored before the relay starts -----------------------------------------------


def store_history(db: sa.Engine, count: int) -> None:
    """Store `count` participations delivered over the past week as the relay leaves them, each
    an event (the benchmark's body, a fresh id), a `delivered` delivery and its one attempt; in
    one transaction, with executemany; then tidy up as the database would have by then."""
    sqlite = db.dialect.name == "sqlite"
    loading = sa.create_engine(db.url)  # connections of its own, set up for loading
    if sqlite:
        sa.event.listen(loading, "connect", _loading_sqlite)
    started = time.monotonic()
    with loading.begin() as conn:
        if sqlite:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        create_schema(conn)
        for start in range(0, count, HISTORY_CHUNK):
            for table, columns, rows in history_rows(
                start, min(HISTORY_CHUNK, count - start), count
            ):
                marks = ", ".join(["?" if sqlite else "%s"] * len(rows[0]))
                conn.exec_driver_sql(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)
    inserted = time.monotonic() - started
    # SQLite: empty the write-ahead log. PostgreSQL: what autovacuum would long have done on a
    # database that grew to this size, and would otherwise start during the measurement.
    tidy = (
        "PRAGMA wal_checkpoint(TRUNCATE)"
        if sqlite
        else "VACUUM ANALYZE events, deliveries, attempts"
    )
    with loading.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(tidy)
    loading.dispose()
    print(
        f"  history: {count:,} delivered participations stored in {inserted:.1f} s; then "
        f"{tidy}: {time.monotonic() - started - inserted:.1f} s",
        flush=True,
    )


def _loading_sqlite(dbapi_conn: Any, _record: Any) -> None:
    # The relay's WAL, without its fsyncs (a crash would only lose the fixture) and with a 1 GB
    # cache: 1,000,000 participations take about 1 minute instead of 2.
    dbapi_conn.isolation_level = None  # BEGIN IMMEDIATE above, as the relay's writes do
    for pragma in ("journal_mode=WAL", "synchronous=OFF", "cache_size=-1000000"):
        dbapi_conn.execute(f"PRAGMA {pragma}")


def history_rows(start: int, count: int, total: int) -> list[tuple[str, str, list[Any]]]:
    """Rows `start` to `start + count` of `total`, spread over the week up to an hour ago:
    (table, columns, rows) for events, deliveries and attempts. Dedupe keys as the relay
    computes them, so that a participation posted again would be found."""
    before, after = make_template(0).body(b"@" * 36).decode().split("@" * 36)
    state = json.loads(SAMPLE.read_text(encoding="utf-8"))["state"]
    end, span = time.time() - 3600, 7 * 86400.0
    events, deliveries, attempts = [], [], []
    for n in range(start, start + count):
        pid, event_id, delivery_id = str(uuid.uuid4()).upper(), new_id(), new_id()
        received = end - span + span * n / total
        key = hashlib.sha256(json.dumps(["qualifio", pid, state]).encode()).hexdigest()
        events.append((event_id, "qualifio", "qualifio", key, before + pid + after, received))
        deliveries.append(
            (delivery_id, event_id, "row", "sink", "delivered", 1, *[received + 0.2] * 3)
        )
        attempts.append((delivery_id, received + 0.1, 12, "delivered", 202))
    return [
        ("events", EVENT_COLUMNS, events),
        ("deliveries", DELIVERY_COLUMNS, deliveries),
        ("attempts", "delivery_id, started_at, duration_ms, outcome, http_status", attempts),
    ]


# --- the phases -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Rates:
    """Phase 1's figures, to compare a relay with history to one without."""

    accepted: float
    relayed: float
    ok: bool


def full_speed(relay: Relay, args: argparse.Namespace, sink: Sink, bare_rate: float) -> Rates:
    since, cpu0 = time.time(), relay.cpu_seconds()
    posted = measure(relay.server, args)
    posting_ended = time.time()
    settled = settle(relay, args.settle_within)
    cpu = relay.cpu_seconds() - cpu0
    counts, first = outcomes(relay, since)
    last = sink.tally().last_ok
    delivered = counts["delivered"]
    relay.answered += sum(n for s, n in posted.load.statuses.items() if 200 <= s < 300)
    relayed = delivered / max(1e-9, last - first)
    print(f"  full speed, {args.duration:g} s, {args.connections} connections:")
    print(
        f"    accepted while delivering: {posted.rate:8.0f} req/s  "
        f"({posted.rate / bare_rate:.2f} x bare)"
    )
    print(
        f"    relayed end to end:        {relayed:8.0f} /s     ({relayed / bare_rate:.2f} x bare)"
    )
    print(
        f"    delivered {delivered}, not delivered {counts.total() - delivered}; drained "
        f"{last - posting_ended:.1f} s after posting stopped; non-2xx {posted.non_2xx}, "
        f"connection errors {posted.load.errors}"
    )
    print(f"    CPU per relayed participation: {1000 * cpu / max(1, delivered):.2f} ms", flush=True)
    ok = settled and delivered == counts.total() and not posted.non_2xx and not posted.load.errors
    return Rates(posted.rate, relayed, ok)


@dataclass(slots=True)
class Phase:
    """Participations posted by bench/paced.py, and what became of them."""

    posted: Posted
    posting_ended: float  # wall clock, the sink back to `ok`
    settled: bool  # no delivery pending any more
    counts: Counter[str]  # the phase's deliveries by status
    tally: Tally  # the sink's, after the phase
    lost: int  # accepted by the relay, never by the sink
    twice: int  # accepted by the sink more than once


def run_phase(
    relay: Relay,
    args: argparse.Namespace,
    sink: Sink,
    count: int,
    rate: float | None,
    connections: int = PACED_CONNECTIONS,
    mode: str = "ok",
) -> Phase:
    """Post `count` participations at `rate` (None: at once) while the sink is in `mode`; then
    the sink is `ok`, and the phase ends when no delivery is pending."""
    since = time.time()
    sink.mode(mode)
    posted = post(relay.server.port, count, rate, connections)
    sink.mode("ok")
    posting_ended = time.time()
    settled = settle(relay, args.settle_within)
    counts, tally = outcomes(relay, since)[0], sink.tally()
    relay.answered += len(posted.accepted)
    lost = sum(1 for pid in posted.accepted if not tally.ids[pid])
    twice = sum(1 for pid in posted.accepted if tally.ids[pid] > 1)
    return Phase(posted, posting_ended, settled, counts, tally, lost, twice)


def burst(relay: Relay, args: argparse.Namespace, sink: Sink, bare_rate: float) -> bool:
    p = run_phase(relay, args, sink, args.burst, None, args.connections)
    posted, delivered = p.posted, p.counts["delivered"]
    took = p.tally.last_ok - posted.started
    print(
        f"  burst of {args.burst} at once ({args.connections} connections): posted in "
        f"{posted.ended - posted.started:.1f} s; {len(posted.accepted)} accepted, "
        f"{posted.refused} refused, {posted.errors} connection errors"
    )
    print(
        f"    last delivery {p.tally.last_ok - posted.ended:.1f} s after the last post, "
        f"{took:.1f} s after the first ({delivered / took:.0f} /s relayed, "
        f"{delivered / took / bare_rate:.2f} x bare); delivered {delivered}, not delivered "
        f"{p.counts.total() - delivered}; lost {p.lost}, delivered twice {p.twice}",
        flush=True,
    )
    return p.settled and delivered == args.burst and not (posted.refused or p.lost or p.twice)


def paced(relay: Relay, args: argparse.Namespace, sink: Sink, rate: float) -> bool:
    p = run_phase(relay, args, sink, round(rate * args.paced_seconds), rate)
    posted = p.posted
    print(
        f"  paced {rate:g} req/s for {args.paced_seconds:g} s: ack p50 "
        f"{posted.percentile(0.5):.1f} ms, p99 {posted.percentile(0.99):.1f} ms; "
        f"{len(posted.accepted)} accepted, {posted.server_errors} 5xx, "
        f"{posted.refused - posted.server_errors} other non-2xx, {posted.errors} connection "
        f"errors ({posted.connections} connections)"
    )
    print(
        f"    all delivered {p.tally.last_ok - posted.ended:.1f} s after the last post; "
        f"lost {p.lost}, delivered twice {p.twice}",
        flush=True,
    )
    return p.settled and not (posted.refused or posted.errors or p.lost or p.twice)


def print_memory(relay: Relay) -> None:
    roles, pss = memory(relay)
    total = sum(sum(kbs) for kbs in roles.values()) / 1024
    parts = "; ".join(
        f"{role} {' + '.join(f'{kb / 1024:.0f}' for kb in kbs)}" for role, kbs in roles.items()
    )
    print(
        f"  RSS of web + worker at the end of the load: {total:.0f} MB ({parts}); "
        f"PSS {pss / 1024:.0f} MB",
        flush=True,
    )


def outage(relay: Relay, args: argparse.Namespace, sink: Sink) -> bool:
    """The sink answers 503 while participations are posted at a steady rate, then recovers."""
    rate = args.trouble_rate
    p = run_phase(relay, args, sink, round(rate * args.outage_seconds), rate, mode="down")
    print(
        f"  outage: the sink answered 503 for {args.outage_seconds:g} s while "
        f"{len(p.posted.accepted)} participations were posted at {rate:g}/s "
        f"({p.posted.refused} refused)"
    )
    print(
        f"    requests that reached the sink while it was down: {p.tally.count('down')}, the "
        f"most in any 10 s: {p.tally.busiest('down')}"
    )
    print(
        f"    every waiting delivery delivered {p.tally.last_ok - p.posting_ended:.1f} s after "
        f"the sink recovered; delivered {p.counts['delivered']}, dead {p.counts['dead']}; lost "
        f"{p.lost}, delivered twice {p.twice}",
        flush=True,
    )
    return p.settled and not (p.posted.refused or p.lost or p.twice)


def throttle(relay: Relay, args: argparse.Namespace, sink: Sink) -> bool:
    """The sink answers 429 with Retry-After: 5 while participations are posted, then accepts."""
    rate = args.trouble_rate
    p = run_phase(relay, args, sink, round(rate * args.throttle_seconds), rate, mode="throttle")
    print(
        f"  throttled: the sink answered 429 (Retry-After: 5) for {args.throttle_seconds:g} s "
        f"while {len(p.posted.accepted)} participations were posted at {rate:g}/s "
        f"({p.posted.refused} refused)"
    )
    print(
        f"    429s answered: {p.tally.count('throttle')}; deliveries ended dead: "
        f"{p.counts['dead']}, delivered: {p.counts['delivered']} (the last "
        f"{p.tally.last_ok - p.posting_ended:.1f} s after the sink accepted again); never at "
        f"the sink: {p.lost}, delivered twice {p.twice}",
        flush=True,
    )
    return p.settled and not (p.posted.refused or p.twice) and p.lost == p.counts["dead"]


def exactly_once(relay: Relay, sink: Sink) -> bool:
    """Every 2xx stored one event; every delivered participation at the sink exactly once."""
    query = sa.text(
        "SELECT e.payload, d.status FROM events e JOIN deliveries d ON d.event_id = e.id "
        "WHERE e.received_at >= :since"
    )
    with relay.db.connect() as conn:
        stored = {json.loads(p)["id"]: s for p, s in conn.execute(query, {"since": relay.since})}
    tally = sink.tally()
    statuses = Counter(stored.values())
    missing = sum(1 for pid, s in stored.items() if s == "delivered" and not tally.ids[pid])
    twice = sum(1 for n in tally.ids.values() if n > 1)
    unknown = sum(1 for pid in tally.ids if pid not in stored)
    not_delivered = sum(1 for pid, s in stored.items() if s != "delivered" and tally.ids[pid])
    print(
        f"  exactly once: {len(stored)} events stored for {relay.answered} 2xx answers; "
        f"deliveries {dict(statuses)}; at the sink: {len(tally.ids)} participations, delivered "
        f"ones missing {missing}, twice {twice}, not stored {unknown}, not recorded as delivered "
        f"{not_delivered}, unreadable {tally.unreadable}"
    )
    return len(stored) == relay.answered and not (
        missing or twice or unknown or not_delivered or tally.unreadable
    )


def check_logs(relay: Relay) -> None:
    logs = [relay.server.log, *([relay.tmp / "worker.log"] if relay.workers else [])]
    for log in logs:
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        problems = [line for line in lines if _PROBLEM.search(line)]
        print(f"  {log.name}: {len(lines)} lines, {len(problems)} warnings or errors")
        for line in dict.fromkeys(problems[:20]):  # the first few, each once
            print(f"    {line[:200]}")
    if relay.server.proc.poll() is not None:
        print(f"  WARNING: gunicorn exited during the run (code {relay.server.proc.returncode})")


# --- a run ----------------------------------------------------------------------------------------


def run_layout(layout: str, args: argparse.Namespace, sink: Sink, bare_rate: float) -> bool:
    print(f"\n{layout} layout ({args.storage}):", flush=True)
    with running_relay(layout, args, sink) as relay:
        empty = full_speed(relay, args, sink, bare_rate)
        ok = empty.ok & burst(relay, args, sink, bare_rate)
        for rate in args.rates:
            ok &= paced(relay, args, sink, rate)
        print_memory(relay)
        if args.trouble:
            ok &= outage(relay, args, sink)
            ok &= throttle(relay, args, sink)
        ok &= exactly_once(relay, sink)
        check_logs(relay)
    if args.history:
        ok &= with_history(layout, args, sink, bare_rate, empty)
    return ok


def with_history(
    layout: str, args: argparse.Namespace, sink: Sink, bare_rate: float, empty: Rates
) -> bool:
    print(f"  with {args.history:,} delivered participations already stored:", flush=True)
    with running_relay(layout, args, sink, args.history) as relay:
        rates = full_speed(relay, args, sink, bare_rate)
        ok = rates.ok & exactly_once(relay, sink)
        check_logs(relay)
    print(
        f"  with history / empty table: accepted {rates.accepted / empty.accepted:.2f}, "
        f"relayed {rates.relayed / empty.relayed:.2f}",
        flush=True,
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of posting")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before the window")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--pool", type=int, default=40_000, help="bodies per load process")
    parser.add_argument("--storage", default="sqlite:///relay.db", help="relay storage URL")
    parser.add_argument("--layout", choices=("default", "procfile"), action="append")
    parser.add_argument("--burst", type=int, default=10_000, help="participations in the burst")
    parser.add_argument(
        "--rates", type=float, nargs="+", default=[100.0, 500.0], help="paced req/s"
    )
    parser.add_argument("--paced-seconds", type=float, default=10.0, help="seconds per rate")
    parser.add_argument(
        "--history", type=int, default=0, help="delivered participations stored before phase 7"
    )
    parser.add_argument("--trouble", action="store_true", help="outage and throttling scenarios")
    parser.add_argument("--outage-seconds", type=float, default=120.0)
    parser.add_argument("--throttle-seconds", type=float, default=90.0)
    parser.add_argument("--trouble-rate", type=float, default=50.0, help="req/s while in trouble")
    parser.add_argument(
        "--settle-within",
        type=float,
        default=900.0,
        help="seconds after posting stops for every delivery to end",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    args = parser.parse_args()
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    tmp = Path(tempfile.mkdtemp(prefix="hookrelay-bare-"))
    # The project's gunicorn settings read a relay config even for bare; nothing delivers.
    config = write_config(tmp, "sqlite:///relay.db")
    env = {**os.environ, "RELAY_WORKER": "off", "RELAY_CONFIG": str(config)}
    bare = start_server("bare", ["--chdir", str(ROOT / "bench"), "bare:app"], env, tmp, tmp)
    try:
        bare.wait_ready()
        bare_rate = measure(bare, args).rate
    finally:
        bare.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"bare Flask endpoint: {bare_rate:.0f} req/s accepted", flush=True)
    sink, ok = Sink(), True
    try:
        for layout in args.layout or ["default", "procfile"]:
            ok &= run_layout(layout, args, sink, bare_rate)
    finally:
        sink.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
