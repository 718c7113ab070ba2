"""Post new participations at a fixed rate, or as fast as some connections allow, and keep what
each answer was: its status, its latency, and the ids the relay accepted.

Used by bench/relay.py. Same requests as bench/ingest.py's load generator (a 2.5 KB signed body,
a fresh id each), prepared before the clock starts, written on plain keep-alive sockets from one
`selectors` loop in the calling thread.

At a rate the load is an open loop: request i is due at start + i / rate whether or not earlier
ones were answered. It goes out on an idle connection, on a new one when all are busy (up to
MAX_CONNECTIONS), or waits for the first free one; its latency runs from the moment it was due,
so a slow answer that delays the next requests counts in theirs too.
"""

from __future__ import annotations

import math
import selectors
import time
from collections import Counter
from dataclasses import dataclass, field

from ingest import _Conn, _content_length, make_template, signed_ids

MAX_CONNECTIONS = 64


@dataclass(slots=True)
class Posted:
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0  # connections closed or reset before an answer
    latencies: list[float] = field(default_factory=list)  # seconds, from due to answered
    accepted: list[str] = field(default_factory=list)  # participation ids answered 2xx
    started: float = 0.0  # wall clock: the first request
    ended: float = 0.0  # wall clock: the last answer
    connections: int = 0  # connections opened

    def percentile(self, p: float) -> float:
        """Milliseconds."""
        ordered = sorted(self.latencies)
        if not ordered:
            return math.nan
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))] * 1000

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    @property
    def refused(self) -> int:
        """Answers that were not a 2xx."""
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)


def post(port: int, count: int, rate: float | None, connections: int) -> Posted:
    """Post `count` new participations to the relay on `port`: at `rate` per second, starting
    with `connections` connections; or, with no rate, as fast as `connections` allow."""
    return _Poster(port, connections if rate is None else max(connections, MAX_CONNECTIONS)).run(
        count, rate, connections
    )


class _Poster:
    def __init__(self, port: int, limit: int) -> None:
        self.port, self.limit = port, limit
        self.template = make_template(port)
        self.out, self.sel = Posted(), selectors.DefaultSelector()
        self.idle: list[_Conn] = []  # the most recently used last
        self.waiting: dict[_Conn, str] = {}  # connection -> the id its request carries

    def run(self, count: int, rate: float | None, connections: int) -> Posted:
        pairs = signed_ids(self.template, count)
        for _ in range(connections):
            self.open()
        out, start, sent = self.out, time.monotonic(), 0
        out.started = time.time()
        while sent < count or self.waiting:
            now = time.monotonic()
            while sent < count and (rate is None or start + sent / rate <= now):
                conn = self.free()
                if conn is None:
                    break
                self.send(conn, *pairs[sent], start + sent / rate if rate else now)
                sent += 1
            timeout = 1.0
            if rate and sent < count and (self.idle or len(self.sel.get_map()) < self.limit):
                timeout = max(0.0, start + sent / rate - now)
            for key, _ in self.sel.select(timeout):
                self.read(key.data)
        out.ended = time.time()
        for conn in list(self.idle):
            self.drop(conn)
        return out

    def open(self) -> _Conn | None:
        try:
            conn = _Conn(self.port)
        except OSError:
            self.out.errors += 1
            return None
        self.out.connections += 1
        self.sel.register(conn.sock, selectors.EVENT_READ, conn)
        self.idle.append(conn)
        return conn

    def free(self) -> _Conn | None:
        """An idle connection (the most recently used: the least likely to have been closed by
        the server's keep-alive timeout), else a new one if the limit allows."""
        if not self.idle and len(self.sel.get_map()) < self.limit:
            self.open()
        return self.idle.pop() if self.idle else None

    def send(self, conn: _Conn, pid: bytes, sig: bytes, due: float) -> None:
        conn.sent_at = due
        self.waiting[conn] = pid.decode()
        t = self.template
        try:
            conn.sock.sendall(b"".join((t.head, sig, t.middle, pid, t.tail)))
        except OSError:
            self.drop(conn)

    def drop(self, conn: _Conn) -> None:
        self.sel.unregister(conn.sock)
        conn.sock.close()
        if conn in self.idle:
            self.idle.remove(conn)
        if self.waiting.pop(conn, None) is not None:
            self.out.errors += 1

    def read(self, conn: _Conn) -> None:
        """Read what `conn` has; once an answer is whole, record it and make `conn` idle again.
        An idle connection that the server closed is dropped."""
        try:
            chunk = conn.sock.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            return self.drop(conn)
        buf = conn.buf
        buf += chunk
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        header = bytes(buf[:end]).lower()
        if len(buf) < end + 4 + _content_length(header):
            return None
        status, pid = int(buf[9:12]), self.waiting.pop(conn)
        self.out.statuses[status] += 1
        self.out.latencies.append(time.monotonic() - conn.sent_at)
        if 200 <= status < 300:
            self.out.accepted.append(pid)
        del buf[:]
        if b"connection: close" in header:
            return self.drop(conn)
        self.idle.append(conn)
        return None
