"""The relay benchmark's destination: an HTTP endpoint whose answer the benchmark switches, and
that counts what it receives.

    python bench/sink.py     # prints its port, then serves until SIGTERM (bench/relay.py runs it)

Modes: `ok` answers 202, `down` 503, `throttle` 429 with `Retry-After: 5`. Every request is read
whole (HTTP/1.1, keep-alive) and counted per mode and per second; one answered 202 also counts the
`id` of its JSON body, so that the benchmark can tell a participation delivered twice, or never.
It runs in a process of its own, so that its work takes no GIL from the load generator's clock.

Control, from the benchmark (the Sink class below): `PUT /_sink/mode` (the body is the mode),
`GET /_sink/tally` (JSON), `POST /_sink/reset`.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "127.0.0.1"
ANSWERS = {  # mode -> status, extra headers
    "ok": (202, {}),
    "down": (503, {}),
    "throttle": (429, {"Retry-After": "5"}),
}


# --- the server (its own process) -----------------------------------------------------------------


class Counts:
    """What the server has received since its last reset; one lock, held for a few operations."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.mode = "ok"
        self.reset()

    def reset(self) -> None:
        self.requests: defaultdict[str, Counter[int]] = defaultdict(Counter)  # mode -> second -> n
        self.ids: Counter[str] = Counter()  # participation id -> answers 202
        self.last_ok = 0.0  # wall clock of the last 202
        self.unreadable = 0  # 202s whose body had no readable `id`

    def as_json(self) -> bytes:
        with self.lock:
            return json.dumps(
                {
                    "requests": {m: dict(per_second) for m, per_second in self.requests.items()},
                    "ids": self.ids,
                    "last_ok": self.last_ok,
                    "unreadable": self.unreadable,
                }
            ).encode()


COUNTS = Counts()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the relay's http destination uses it
    disable_nagle_algorithm = True
    wbufsize = 65536  # head and body leave in one write, flushed after each request

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/_sink/reset":
            with COUNTS.lock:
                COUNTS.reset()
            return self.answer(204)
        now = time.time()
        with COUNTS.lock:
            mode = COUNTS.mode
            COUNTS.requests[mode][int(now)] += 1
        status, headers = ANSWERS[mode]
        if status == 202:
            self.count_ok(body, now)
        self.answer(
            status, json.dumps({"ok": True} if status == 202 else {"error": mode}).encode(), headers
        )

    def count_ok(self, body: bytes, now: float) -> None:
        try:
            pid = json.loads(body)["id"]
        except (ValueError, KeyError, TypeError):
            pid = None
        with COUNTS.lock:
            if isinstance(pid, str):
                COUNTS.ids[pid] += 1
            else:
                COUNTS.unreadable += 1
            COUNTS.last_ok = max(COUNTS.last_ok, now)

    def do_PUT(self) -> None:
        mode = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        if self.path != "/_sink/mode" or mode not in ANSWERS:
            return self.answer(400, json.dumps({"error": f"modes: {', '.join(ANSWERS)}"}).encode())
        with COUNTS.lock:
            COUNTS.mode = mode
        self.answer(204)

    def do_GET(self) -> None:
        if self.path != "/_sink/tally":
            return self.answer(404)
        self.answer(200, COUNTS.as_json())

    def answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would cost more than the answer


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the relay's senders may connect all at once


def serve() -> None:
    server = Server((HOST, 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever(poll_interval=0.05)


# --- the benchmark's side -------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """What the sink received: requests per mode and per second, participation ids answered 202."""

    requests: dict[str, Counter[int]]
    ids: Counter[str]
    last_ok: float
    unreadable: int

    def count(self, mode: str) -> int:
        return sum(self.requests.get(mode, Counter()).values())

    def busiest(self, mode: str, seconds: int = 10) -> int:
        """The most requests in any `seconds` consecutive seconds, in `mode`."""
        per_second = self.requests.get(mode, Counter())
        return max((sum(per_second[s + i] for i in range(seconds)) for s in per_second), default=0)


class Sink:
    """bench/sink.py in a process of its own, on a free loopback port."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://{HOST}:{self.port}/hooks/qualifio"

    def mode(self, mode: str) -> None:
        self._call("PUT", "/_sink/mode", mode.encode())

    def reset(self) -> None:
        self._call("POST", "/_sink/reset")

    def tally(self) -> Tally:
        data = json.loads(self._call("GET", "/_sink/tally"))
        return Tally(
            {m: Counter({int(s): n for s, n in ps.items()}) for m, ps in data["requests"].items()},
            Counter(data["ids"]),
            data["last_ok"],
            data["unreadable"],
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    def _call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        try:
            conn.request(method, path, body)
            response = conn.getresponse()
            data = response.read()
            if response.status >= 300:
                raise SystemExit(f"sink: {method} {path} answered {response.status}: {data!r}")
            return data
        finally:
            conn.close()


if __name__ == "__main__":
    serve()
