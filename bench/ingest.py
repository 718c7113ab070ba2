"""Ingest benchmark: the durable relay against a bare Flask endpoint, same gunicorn settings.

    .venv/bin/python bench/ingest.py                 # SQLite in a temporary directory
    .venv/bin/python bench/ingest.py --duration 20   # longer measuring window
    .venv/bin/python bench/ingest.py --storage postgresql://127.0.0.1:5432/test

Why: a 2xx from the relay means "stored durably" (committed and fsync'd before the answer), so
ingest can never be as cheap as an endpoint that only reads the body. This measures how much of the
bare throughput the durable path keeps (the ratio relay/bare; the project's target is >= 0.65).

What runs:
- two gunicorns with the project's settings (`-c python:hookrelay.gunicorn_conf`: WEB_CONCURRENCY
  workers, default 2, gthread, GUNICORN_THREADS threads, default 16) on free loopback ports:
  `relay:app` with a generated config.yaml (one signed Qualifio source, one file destination, one
  route) and RELAY_WORKER=off, so only ingest is measured, nothing is delivered; and
  `bench/bare.py`, which reads the body and answers 202.
- a load generator in --procs processes, each an event loop over keep-alive connections (plain
  sockets, no HTTP library: it shares the CPU with the servers, so it must stay cheap). Every
  request is a distinct participation (a fresh `id`) of one ~2.5 KB body, samples/v2-incomplete.json
  without its indentation, signed with HMAC-SHA256; ids and signatures are computed before the
  clock starts. Both servers get the same kind of bodies (bare ignores the signature).

req/s counts the answers completed inside the measuring window (after the warm-up); p50/p99 are
their latencies. Every answer should be 202: any other status, or a connection error, is reported
and makes the exit status 1. Server logs (INFO, the relay's default) go to files in the temporary
directory, which is removed at the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import math
import multiprocessing as mp
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "v2-incomplete.json"
HOST = "127.0.0.1"
HOOK = "/hooks/qualifio"
SECRET = "bench-secret"
GUNICORN = ["-m", "gunicorn", "-c", "python:hookrelay.gunicorn_conf"]

CONFIG_YAML = """\
storage: {storage}
sources:
  qualifio: {{format: qualifio, auth: {{signature: {{secrets: ["{secret}"]}}}}}}
destinations:
  archive: {{type: file, path: out.jsonl}}
routes:
  - {{from: qualifio, mapping: row, to: [archive]}}
"""
MAPPING_YAML = "fields: {id: id, state: state}\n"


# --- the requests ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Template:
    """One POST with two holes: the signature (64 hex) and the participation id (36 chars)."""

    head: bytes  # request line and headers, up to the signature's hex value
    middle: bytes  # end of headers, then the body up to the id
    tail: bytes  # the body after the id
    body_size: int

    def body(self, pid: bytes) -> bytes:
        return self.middle[self.middle.index(b"\r\n\r\n") + 4 :] + pid + self.tail


def make_template(port: int) -> Template:
    data = json.loads(SAMPLE.read_text(encoding="utf-8"))
    data["id"] = "@" * 36
    body = json.dumps(data, ensure_ascii=False).encode()  # one line: 3.3 KB indented, 2.5 KB here
    before, after = body.split(b"@" * 36)
    head = (
        f"POST {HOOK} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Qualifio-Signature: sha256="
    ).encode()
    return Template(head, b"\r\n\r\n" + before, after, len(body))


def signed_ids(template: Template, count: int) -> list[tuple[bytes, bytes]]:
    """`count` fresh participation ids, each with the hex HMAC of its body."""
    key, pairs = SECRET.encode(), []
    for _ in range(count):
        pid = str(uuid.uuid4()).upper().encode()
        pairs.append((pid, hmac.new(key, template.body(pid), hashlib.sha256).hexdigest().encode()))
    return pairs


# --- the load generator (one process) -------------------------------------------------------------


@dataclass(slots=True)
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)  # every answer, warm-up included
    errors: int = 0  # connections closed or reset before an answer
    latencies: list[float] = field(default_factory=list)  # seconds, answers inside the window
    exhausted: bool = False  # ran out of precomputed ids before the end


class _Conn:
    __slots__ = ("sock", "buf", "sent_at")

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.sent_at = 0.0


def load_process(
    port: int, template: Template, connections: int, pool: int, pipe: Connection
) -> None:
    """Precompute, say ready, get (start, window_start, window_end), run, send a LoadResult."""
    pairs = signed_ids(template, pool)
    pipe.send("ready")
    start, window_start, window_end = pipe.recv()
    pipe.send(_run(port, template, connections, pairs, start, window_start, window_end))
    pipe.close()


def _run(
    port: int,
    template: Template,
    connections: int,
    pairs: list[tuple[bytes, bytes]],
    start: float,
    window_start: float,
    window_end: float,
) -> LoadResult:
    result, sel, next_pair = LoadResult(), selectors.DefaultSelector(), 0
    head, middle, tail = template.head, template.middle, template.tail
    now = time.monotonic

    def send(conn: _Conn) -> bool:
        nonlocal next_pair
        if next_pair >= len(pairs):
            result.exhausted = True
            return False
        pid, sig = pairs[next_pair]
        next_pair += 1
        conn.sent_at = now()
        conn.sock.sendall(b"".join((head, sig, middle, pid, tail)))
        return True

    def open_and_send() -> None:
        try:
            conn = _Conn(port)
        except OSError:
            result.errors += 1
            return
        sel.register(conn.sock, selectors.EVENT_READ, conn)
        send_or_close(conn)

    def close(conn: _Conn) -> None:
        sel.unregister(conn.sock)
        conn.sock.close()

    def send_or_close(conn: _Conn) -> None:
        try:
            if now() < window_end and send(conn):
                return
        except OSError:
            result.errors += 1
        close(conn)

    while now() < start:
        time.sleep(min(0.01, max(0.0, start - now())))
    for _ in range(connections):
        open_and_send()
    drain_deadline = window_end + 30.0
    while sel.get_map() and now() < drain_deadline:
        for key, _ in sel.select(timeout=1.0):
            conn: _Conn = key.data
            try:
                chunk = conn.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:  # closed before a full answer
                result.errors += 1
                close(conn)
                if now() < window_end:
                    open_and_send()
                continue
            buf = conn.buf
            buf += chunk
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                continue
            header = bytes(buf[:end]).lower()
            length = _content_length(header)
            if len(buf) < end + 4 + length:
                continue
            done = now()
            result.statuses[int(buf[9:12])] += 1
            if window_start <= done < window_end:
                result.latencies.append(done - conn.sent_at)
            del buf[:]
            if b"connection: close" in header:
                close(conn)
                if done < window_end:
                    open_and_send()
            else:
                send_or_close(conn)
    for key in list(sel.get_map().values()):  # answers that never came
        result.errors += 1
        key.fileobj.close()  # type: ignore[union-attr]
    return result


def _content_length(header: bytes) -> int:
    at = header.find(b"content-length:")
    if at < 0:
        return 0
    stop = header.find(b"\r\n", at)
    return int(header[at + 15 : stop if stop >= 0 else None])


# --- the servers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(slots=True)
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    ready_path: str  # GET this; the relay must answer 200, the bare server anything at all

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
                conn.request("GET", self.ready_path)
                status = conn.getresponse().status
                conn.close()
                if self.name != "relay" or status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.name} did not answer within {timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def cpu_seconds(self) -> float:
        """CPU time of the gunicorn master and its workers so far."""
        return sum(_cpu_seconds(pid) for pid in [self.proc.pid, *_children(self.proc.pid)])


def start_server(name: str, args: list[str], env: dict[str, str], cwd: Path, tmp: Path) -> Server:
    port = free_port()
    log = tmp / f"{name}.log"
    env = {**env, "HOST": HOST, "PORT": str(port)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *GUNICORN, *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Server(name, port, proc, log, "/healthz" if name == "relay" else "/")


def own_schema(storage: str) -> str | None:
    """On PostgreSQL, a schema of the run's own, so it neither reads nor leaves rows elsewhere."""
    if not storage.startswith(("postgresql://", "postgres://")):
        return None
    schema = f"bench_{os.getpid()}_{int(time.time())}"
    with _admin(storage) as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    return schema


def drop_schema(storage: str, schema: str) -> None:
    with _admin(storage) as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


def _admin(storage: str) -> sa.Connection:
    url = storage.replace("postgres://", "postgresql://", 1)
    url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool).connect()


def write_config(tmp: Path, storage: str) -> Path:
    config = tmp / "config.yaml"
    config.write_text(CONFIG_YAML.format(storage=json.dumps(storage), secret=SECRET))
    (tmp / "mappings").mkdir()
    (tmp / "mappings" / "row.yaml").write_text(MAPPING_YAML)
    return config


def _cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _busy_seconds() -> float:
    """CPU time every process on the machine has used so far (all cores)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def _children(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == parent:
                found.append(int(entry))
    return found


# --- one measured phase ---------------------------------------------------------------------------


@dataclass(slots=True)
class Measure:
    server: str
    duration: float
    load: LoadResult
    server_cpu: float  # seconds of CPU inside the window
    loadgen_cpu: float
    other_cpu: float  # everything else on the machine: other people's work skews the figures

    @property
    def rate(self) -> float:
        return len(self.load.latencies) / self.duration

    def percentile(self, p: float) -> float:
        ordered = sorted(self.load.latencies)
        if not ordered:
            return math.nan
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))] * 1000

    @property
    def non_2xx(self) -> int:
        return sum(n for status, n in self.load.statuses.items() if not 200 <= status < 300)


def measure(server: Server, args: argparse.Namespace) -> Measure:
    template = make_template(server.port)
    ctx = mp.get_context("fork")
    per_proc = [
        args.connections // args.procs + (i < args.connections % args.procs)
        for i in range(args.procs)
    ]
    pipes, procs = [], []
    for conns in per_proc:
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(
            target=load_process, args=(server.port, template, conns, args.pool, theirs), daemon=True
        )
        proc.start()
        theirs.close()
        pipes.append(ours)
        procs.append(proc)
    try:
        for pipe in pipes:
            if not pipe.poll(120) or pipe.recv() != "ready":
                raise SystemExit("a load generator process did not start")
        start = time.monotonic() + 0.2
        window = (start + args.warmup, start + args.warmup + args.duration)
        for pipe in pipes:
            pipe.send((start, *window))
        time.sleep(max(0.0, window[0] - time.monotonic()))
        cpu0 = (server.cpu_seconds(), sum(_cpu_seconds(p.pid or 0) for p in procs), _busy_seconds())
        time.sleep(max(0.0, window[1] - time.monotonic()))
        cpu1 = (server.cpu_seconds(), sum(_cpu_seconds(p.pid or 0) for p in procs), _busy_seconds())
        total = LoadResult()
        for pipe in pipes:
            if not pipe.poll(60):
                raise SystemExit("a load generator process did not report")
            part: LoadResult = pipe.recv()
            total.statuses.update(part.statuses)
            total.errors += part.errors
            total.latencies.extend(part.latencies)
            total.exhausted |= part.exhausted
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
    server_cpu, loadgen_cpu, busy = (b - a for a, b in zip(cpu0, cpu1, strict=True))
    return Measure(
        server.name,
        args.duration,
        total,
        server_cpu,
        loadgen_cpu,
        max(0.0, busy - server_cpu - loadgen_cpu),
    )


# --- report ---------------------------------------------------------------------------------------


def _cores() -> int:
    return os.cpu_count() or 1


def machine() -> list[str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return [
        f"nproc {len(os.sched_getaffinity(0))}, CPU {model}",
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{platform.system()} {platform.release()}",
        "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    ]


def filesystem(path: Path) -> str:
    """The type of the filesystem holding `path` (fsync costs depend on it: tmpfs makes it free)."""
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _dev, mount, fstype, *_ = line.split()
            if str(path).startswith(mount.rstrip("/") + "/") and len(mount) > len(best):
                best, kind = mount, fstype
    except OSError:
        pass
    return kind


def report(results: list[Measure], args: argparse.Namespace, body_size: int) -> None:
    print(
        f"\n{'server':<8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} "
        f"{'errors':>7} {'server CPU':>11} {'loadgen CPU':>12} {'other CPU':>10}"
    )
    for r in results:
        print(
            f"{r.server:<8} {r.rate:>8.0f} {r.percentile(0.50):>8.1f} {r.percentile(0.99):>8.1f} "
            f"{r.non_2xx:>8} {r.load.errors:>7} {r.server_cpu / r.duration:>10.0%} "
            f"{r.loadgen_cpu / r.duration:>11.0%} {r.other_cpu / r.duration:>9.0%}"
        )
    by_name = {r.server: r for r in results}
    if "relay" in by_name and "bare" in by_name and by_name["bare"].rate:
        print(
            f"\nratio durable/bare req/s: {by_name['relay'].rate / by_name['bare'].rate:.2f} "
            f"(target >= 0.65)"
        )
    print(
        f"(CPU columns: share of one core inside the window, out of {_cores() * 100}%; other CPU "
        "is every other process on the machine; "
        f"{args.duration:g} s window after "
        f"a {args.warmup:g} s warm-up, {args.connections} keep-alive connections from "
        f"{args.procs} processes, {body_size} B bodies, each a new participation)"
    )
    for r in results:
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(r.load.statuses.items()))
        print(f"{r.server} answers (warm-up included): {statuses or 'none'}")


_PROBLEM = re.compile(
    r"\[(WARNING|ERROR|CRITICAL)\]| (WARNING|ERROR|CRITICAL) "
    r"|^[A-Za-z_][\w.]*(Error|Exception|Violation): "
)


def check(results: list[Measure], servers: list[Server], db: Path | None) -> bool:
    """Print what makes the figures doubtful; False when they are not valid."""
    ok = True
    for r in results:
        if set(r.load.statuses) - {202} or r.load.errors:
            print(
                f"WARNING: {r.server}: not every answer was a 202 "
                f"({r.load.errors} connection errors); these figures are not valid"
            )
            ok = False
        if r.other_cpu / r.duration > 0.2:
            print(
                f"WARNING: {r.server}: other processes used {r.other_cpu / r.duration:.0%} of a "
                "core during the window; the machine was not quiet, the figures are skewed"
            )
        if r.load.exhausted:
            print(f"WARNING: {r.server}: ran out of precomputed ids; raise --pool")
            ok = False
    for server in servers:
        if server.proc.poll() is not None:
            print(
                f"WARNING: {server.name}: gunicorn exited during the run "
                f"(code {server.proc.returncode})"
            )
            ok = False
        lines = server.log.read_text(errors="replace").splitlines() if server.log.exists() else []
        problems = [line for line in lines if _PROBLEM.search(line)]
        print(f"{server.name} log: {len(lines)} lines, {len(problems)} warnings or errors")
        for line in dict.fromkeys(problems[:20]):  # the first few, each once
            print(f"  {line[:200]}")
    relay = next((r for r in results if r.server == "relay"), None)
    if db is not None and relay is not None and db.exists():
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        print(f"events in relay.db: {stored} (relay 202 answers: {relay.load.statuses[202]})")
        ok &= stored == relay.load.statuses[202]
    return ok


# --- main -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measuring window, seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before the window")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument(
        "--pool",
        type=int,
        default=60_000,
        help="distinct signed bodies precomputed per load process",
    )
    parser.add_argument(
        "--storage",
        default="sqlite:///relay.db",
        help="relay storage URL (default: SQLite in the temporary directory)",
    )
    parser.add_argument("--only", choices=("relay", "bare"), help="measure one server only")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    args.procs = max(1, min(args.procs, args.connections))

    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    env = {k: v for k, v in os.environ.items() if k != "RELAY_LOG_LEVEL"}  # INFO, as users run
    env["RELAY_WORKER"] = "off"
    tmp = Path(tempfile.mkdtemp(prefix="hookrelay-bench-"))
    schema = own_schema(args.storage)
    storage = f"{args.storage}?options=-csearch_path%3D{schema}" if schema else args.storage
    config = write_config(tmp, storage)
    env["RELAY_CONFIG"] = str(config)
    workers = os.environ.get("WEB_CONCURRENCY", "2")  # as hookrelay/gunicorn_conf.py reads them
    threads = os.environ.get("GUNICORN_THREADS", "16")

    print("machine:", *machine(), sep="\n  ")
    print("settings:")
    print(
        f"  gunicorn -c python:hookrelay.gunicorn_conf: {workers} workers x {threads} threads "
        f"(gthread), keepalive 5 s, bound to {HOST}"
    )
    print(
        f"  relay: relay:app, storage {args.storage}, RELAY_WORKER=off (ingest only, nothing "
        f"delivered), log level INFO to a file"
    )
    print("  bare: bench/bare.py (reads the body, answers 202)")
    print(f"  temporary directory: {tmp} ({filesystem(tmp)})")

    servers: list[Server] = []
    results: list[Measure] = []
    body_size = 0
    try:
        names = [args.only] if args.only else ["bare", "relay"]
        for name in names:
            if name == "relay":
                servers.append(start_server("relay", ["relay:app"], env, tmp, tmp))
            else:
                servers.append(
                    start_server(
                        "bare", ["--chdir", str(ROOT / "bench"), "bare:app"], env, tmp, tmp
                    )
                )
        for server in servers:
            server.wait_ready()
        for server in servers:
            body_size = make_template(server.port).body_size
            print(
                f"loading {server.name} on {HOST}:{server.port} (gunicorn pid {server.proc.pid})"
                " ...",
                flush=True,
            )
            results.append(measure(server, args))
        report(results, args, body_size)
        db = tmp / "relay.db" if args.storage == "sqlite:///relay.db" else None
        ok = check(results, servers, db)
    finally:
        for server in servers:
            server.stop()
        if schema:
            drop_schema(args.storage, schema)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
