"""Slow clients cannot stall ingest: a request must arrive within RELAY_REQUEST_TIMEOUT seconds.

Through a real gunicorn (2 workers × 16 threads, as configured), 40 clients send a valid signed
participation one byte a second and go on sending after they are answered: half trickle the head,
half send the head at once and trickle the body. While they do, a participation posted at full
speed is answered 202 and reaches the sink; each slow client is answered 408 and cut off. Idle
keep-alive connections hold no thread either. Timings are printed, never asserted: an answer must
only come before a generous bound.
"""

from __future__ import annotations

import io
import json
import os
import re
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hookrelay import gunicorn_conf
from hookrelay.auth import sign
from hookrelay.config import load_config
from hookrelay.errors import ConfigError
from hookrelay.serving import Deadline, DeadlineSocket, RequestTimedOut, request_timeout
from hookrelay.web import create_app
from tests.conftest import ROOT, SECRET, basic_config, participation
from tests.fakes.server import FakeServer
from tests.processes import Supervised, free_port, post_signed, wait_until, web_answers

DEADLINE = 2  # RELAY_REQUEST_TIMEOUT in these tests, seconds
WORKERS, THREADS = 2, 16
SLOW_CLIENTS = 2 * THREADS + 8  # more than every thread of both workers
ANSWER_WITHIN = 30.0  # generous: at a byte a second, a slow client would take over an hour
IDLE_CONNECTIONS = 40
KEEPALIVE: int = gunicorn_conf.keepalive  # seconds


@dataclass
class SlowClient:
    """A connection that sends a signed participation one byte a second and, like an attacker,
    goes on sending after it is answered, until the server cuts the connection. `head_at_once`
    sends the head in one go and trickles only the body."""

    port: int
    n: int
    head_at_once: bool
    sock: socket.socket = field(init=False)
    pending: bytes = field(init=False)
    answer: bytes = b""
    answered: bool = False  # the server has ended its answer (sent FIN)
    cut_after: float | None = None  # seconds from the start until a send or read failed

    def __post_init__(self) -> None:
        body = participation(self.n)
        head = (
            f"POST /hooks/qualifio HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"X-Qualifio-Signature: {sign(body, SECRET)}\r\n\r\n"
        ).encode()
        request = head + body
        first = len(head) + 1 if self.head_at_once else 1
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.sock.sendall(request[:first])
        self.sock.setblocking(False)
        self.pending = request[first:]

    def tick(self, started: float) -> None:
        """Send the next byte, whatever the server said."""
        if self.cut_after is None and self.pending:
            try:
                self.pending = self.pending[self.sock.send(self.pending[:1]) :]
            except BlockingIOError:
                pass
            except OSError:  # EPIPE or ECONNRESET: the server closed the connection
                self.cut_after = time.monotonic() - started

    def read(self, started: float) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self.cut_after = time.monotonic() - started
            return
        self.answer += data
        self.answered = not data

    @property
    def is_done(self) -> bool:
        """Nothing more to read: answered, or cut."""
        return self.answered or self.cut_after is not None


def trickle(clients: list[SlowClient], started: float, until: float) -> None:
    """Every second, send each client's next byte; read answers as they come; stop when every
    connection is cut, or at `until` (monotonic)."""
    with selectors.DefaultSelector() as selector:
        for client in clients:
            selector.register(client.sock, selectors.EVENT_READ, client)
        next_tick = time.monotonic()
        while any(c.cut_after is None for c in clients) and time.monotonic() < until:
            if time.monotonic() >= next_tick:
                for client in clients:
                    client.tick(started)
                next_tick += 1.0
            for key, _ in selector.select(timeout=0.05):
                key.data.read(started)
                if key.data.is_done:
                    selector.unregister(key.fileobj)
    for client in clients:
        client.sock.close()


@pytest.fixture
def web(tmp_path: Path, storage: str) -> Iterator[tuple[str, FakeServer, Supervised]]:
    """The relay under gunicorn with the recommended settings, RELAY_REQUEST_TIMEOUT=2, and its
    delivery worker delivering to a sink; (url, sink, process)."""
    with FakeServer() as sink:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "RELAY_CONFIG": str(basic_config(tmp_path, sink.url)),
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "WEB_CONCURRENCY": str(WORKERS),
            "GUNICORN_THREADS": str(THREADS),
            "RELAY_REQUEST_TIMEOUT": str(DEADLINE),
        }
        command = [sys.executable, "-m", "gunicorn", "relay:app"]  # reads ./gunicorn.conf.py
        process = Supervised("web", command, env, tmp_path, web_answers(url))
        try:
            process.start()
            yield url, sink, process
        finally:
            process.stop()


def assert_clean_log(process: Supervised) -> str:
    """No traceback, no error from gunicorn, no 500 in the relay's log; returns it."""
    log = process.log.read_text(errors="replace")
    for sign_of_trouble in ("Traceback", "Error handling request", "Socket error", "[ERROR]"):
        assert sign_of_trouble not in log
    assert not re.search(r": 500\b", log)
    return log


@pytest.mark.slow
def test_40_slow_clients_stall_nothing_and_are_answered_408(web):
    url, sink, process = web
    port = int(url.rsplit(":", 1)[1])
    started = time.monotonic()
    clients = [SlowClient(port, n, head_at_once=n % 2 == 0) for n in range(SLOW_CLIENTS)]
    trickling = threading.Thread(
        target=trickle, args=(clients, started, started + 2 * ANSWER_WITHIN), daemon=True
    )
    trickling.start()

    good = participation(SLOW_CLIENTS)
    posted = time.monotonic()
    answer = post_signed(url, good, timeout=ANSWER_WITHIN)
    took = time.monotonic() - posted
    assert answer.status_code == 202, answer.text
    delivered = wait_until(lambda: sink.requests, timeout=ANSWER_WITHIN)
    assert [r.json()["id"] for r in delivered] == [json.loads(good)["id"]]

    trickling.join(2 * ANSWER_WITHIN + 5)
    cut = sorted(c.cut_after for c in clients if c.cut_after is not None)
    span = f"{cut[0]:.1f}-{cut[-1]:.1f}s" if cut else "-"
    print(
        f"a participation was answered 202 in {took:.2f}s while {SLOW_CLIENTS} clients trickled; "
        f"{len(cut)} of them were cut off after {span}"
    )
    assert len(cut) == SLOW_CLIENTS, "slow clients still connected"
    for client in clients:
        assert client.answer.startswith(b"HTTP/1.1 408 "), client.answer[:300]
        assert b"connection: close" in client.answer.lower(), client.answer[:300]
        assert f"did not arrive within {DEADLINE}s".encode() in client.answer, client.answer
    assert f"did not arrive within {DEADLINE}s" in assert_clean_log(process)


def test_idle_keepalive_connections_hold_no_thread(web):
    """40 kept-alive connections, idle after a request, wait in gthread's poller: a participation
    is answered long before their keep-alive (5 s) would close them and free a thread."""
    url, sink, process = web
    port = int(url.rsplit(":", 1)[1])
    idle = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            idle.append(sock)
        posted = time.monotonic()
        answer = post_signed(url, participation(1), timeout=KEEPALIVE - 1)
        print(f"answered {answer.status_code} in {time.monotonic() - posted:.2f}s")
        assert answer.status_code == 202
    finally:
        for sock in idle:
            sock.close()
    assert_clean_log(process)


def test_a_body_read_that_ran_out_of_time_is_answered_408(tmp_path, monkeypatch):
    """The server's deadline shows in the app as a TimeoutError from wsgi.input."""

    class Late(io.BytesIO):
        def read(self, size=-1):
            raise TimeoutError(f"the request did not arrive within {DEADLINE}s")

        readinto = read

    monkeypatch.setenv("RELAY_TEST_STORAGE", f"sqlite:///{tmp_path}/relay.db")
    app = create_app(load_config(basic_config(tmp_path)))  # starts nothing
    body = participation(1)
    answer = app.test_client().post(
        "/hooks/qualifio",
        input_stream=Late(body),  # the test client takes the length from the stream
        headers={"X-Qualifio-Signature": sign(body, SECRET), "Content-Type": "application/json"},
    )
    app.extensions["relay"].store.close()
    assert answer.status_code == 408
    assert answer.json == {
        "error": f"the request did not arrive within {DEADLINE}s: nothing was stored, send it again"
    }


def test_a_trickle_meets_the_deadline_however_often_it_sends():
    """A timeout for each recv() alone would never fire: a byte comes every 50 ms."""
    ours, theirs = socket.socketpair()
    done = threading.Event()

    def trickle_bytes() -> None:
        for _ in range(100):  # 5 s of bytes, well past the 0.3 s deadline
            if done.wait(0.05):
                return
            theirs.send(b"x")

    sender = threading.Thread(target=trickle_bytes, daemon=True)
    sender.start()
    reader = DeadlineSocket(ours, Deadline(0.3))
    received = b""
    try:
        with pytest.raises(RequestTimedOut, match="did not arrive within 0.3s"):
            while len(received) < 100:
                received += reader.recv(1)
        assert reader.deadline.passed
        assert ours.gettimeout() is None  # the socket is left as it was found
        with pytest.raises(RequestTimedOut):  # and it stays late
            reader.recv(1)
    finally:
        done.set()
        sender.join(5)
        ours.close()
        theirs.close()


def test_a_callers_own_shorter_timeout_is_not_the_deadline():
    """gunicorn drains an unread body with a timeout of its own: that one is a plain timeout."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        reader = DeadlineSocket(ours, Deadline(60))
        reader.settimeout(0.05)
        with pytest.raises(TimeoutError) as raised:
            reader.recv(1)
        assert not isinstance(raised.value, RequestTimedOut)
        assert not reader.deadline.passed
        assert ours.gettimeout() == 0.05


@pytest.mark.parametrize(("value", "seconds"), [(None, 10.0), ("2", 2.0), (" 0.5 ", 0.5)])
def test_request_timeout_comes_from_the_environment(monkeypatch, value, seconds):
    if value is None:
        monkeypatch.delenv("RELAY_REQUEST_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("RELAY_REQUEST_TIMEOUT", value)
    assert request_timeout() == seconds


@pytest.mark.parametrize("value", ["abc", "0", "-1", "inf", "nan"])
def test_a_wrong_request_timeout_is_refused(monkeypatch, value):
    monkeypatch.setenv("RELAY_REQUEST_TIMEOUT", value)
    with pytest.raises(ConfigError, match="RELAY_REQUEST_TIMEOUT must be a number of seconds"):
        request_timeout()


def test_gunicorn_refuses_a_wrong_request_timeout_in_one_line():
    env = {
        **os.environ,
        "RELAY_REQUEST_TIMEOUT": "ten",
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
    }
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn", "relay:app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Error: RELAY_REQUEST_TIMEOUT must be a number of seconds above 0, got 'ten'" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr
