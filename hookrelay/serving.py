"""How gunicorn serves the relay: gthread, where each request must arrive within a deadline, and
the delivery worker in a process of its own beside the web workers.

gthread keeps idle connections off its threads (a kept-alive one waits in the poller; a new one
that sends nothing gets a thread for at most 5 s, then waits there too), but once the first byte
of a request is read, a thread reads its head and body for as long as the client takes: 40
clients sending a byte a second held all 2 × 16 threads and stalled ingest. Here each HTTP/1
request must be all there, head and body, within RELAY_REQUEST_TIMEOUT seconds (default 10) of its
first byte; Qualifio's 2.5 KB bodies take milliseconds.

A late head is answered 408 here; a late body fails to read in the app, which answers 408
(web.py). Nothing is stored and the connection is closed, so a slow client holds a thread for the
deadline plus at most LINGER seconds. HTTP/2 connections are served as gthread serves them.

Built on gthread's internals as of gunicorn 27 (TConn, accept, handle, handle_request):
tests/test_slow_clients.py checks the whole through a real gunicorn.
"""

from __future__ import annotations

import errno
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from http import HTTPStatus
from typing import Any

from gunicorn.http.errors import NoMoreData
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import TConn, ThreadWorker

from hookrelay.errors import ConfigError, RequestTimeout

DEFAULT_SECONDS = 10.0
LINGER = 1.0  # seconds a late client has to read its 408 before its connection is cut


def request_timeout() -> float:
    """Seconds a request may take to arrive: $RELAY_REQUEST_TIMEOUT, default 10."""
    raw = os.environ.get("RELAY_REQUEST_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise ConfigError(f"RELAY_REQUEST_TIMEOUT must be a number of seconds above 0, got {raw!r}")
    return seconds


class RequestTimedOut(NoMoreData, TimeoutError):  # type: ignore[misc]
    """The request was not all there by its deadline.

    A NoMoreData, so gthread drops a connection whose head is late without a traceback; a
    TimeoutError, so gunicorn's drain of an unread body stops at once, and the app can tell it
    from a client that went away.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(b"")
        self.seconds = seconds

    def __str__(self) -> str:
        return f"the request did not arrive within {self.seconds:g}s"


class Deadline:
    """When the request being read must be all there: `seconds` after its first read."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at: float | None = None
        self.passed = False
        self.request: Any = None  # gunicorn's Request, once its head has arrived

    def restart(self) -> None:
        """A new request on the connection: its clock starts at its first read."""
        self.at, self.request = None, None

    def time_left(self) -> float:
        """Seconds left, the clock starting now if it had not; raises RequestTimedOut if none."""
        now = time.monotonic()
        if self.at is None:
            self.at = now + self.seconds
        if now >= self.at:
            raise self.expire()
        return self.at - now

    def expire(self) -> RequestTimedOut:
        self.passed = True
        if self.request is not None:
            self.request.force_close()  # the app's 408 then says "Connection: close"
        return RequestTimedOut(self.seconds)


class DeadlineSocket:
    """A connection's socket as the HTTP/1 parser reads it: no recv() waits past the deadline.

    A timeout for each recv() alone would not do: a client sending a byte a second meets it.
    """

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self.sock, self.deadline = sock, deadline

    def recv(self, size: int) -> bytes:
        left = self.deadline.time_left()
        caller = self.sock.gettimeout()  # gunicorn's own, while it drains an unread body
        self.sock.settimeout(left if caller is None else min(caller, left))
        try:
            return self.sock.recv(size)
        except TimeoutError:
            if caller is not None and caller < left:
                raise
            raise self.deadline.expire() from None
        finally:
            self.sock.settimeout(caller)

    def gettimeout(self) -> float | None:
        return self.sock.gettimeout()

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)


class DeadlineConn(TConn):  # type: ignore[misc]
    """A gthread connection whose HTTP/1 requests each have a deadline."""

    def __init__(self, *args: Any, seconds: float) -> None:
        super().__init__(*args)
        self.deadline = Deadline(seconds)

    def init(self) -> None:
        """Set up as gthread does (TLS, HTTP/2 negotiation); an HTTP/1 parser then reads
        through the deadline, an HTTP/2 connection is left alone."""
        first = not self.initialized
        super().init()
        unreader = getattr(self.parser, "unreader", None)
        if first and not self.is_http2 and isinstance(unreader, SocketUnreader):
            unreader.sock = DeadlineSocket(unreader.sock, self.deadline)


class DeadlineThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gthread, where each HTTP/1 request must arrive within request_timeout() seconds."""

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        super().check_config(cfg, log)
        try:
            request_timeout()
        except ConfigError as exc:  # gunicorn prints a RuntimeError as one line and exits 1
            raise RuntimeError(str(exc)) from None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_timeout = request_timeout()

    def accept(self, listener: socket.socket) -> None:
        """gthread's accept, with a DeadlineConn for each connection."""
        try:
            sock, client = listener.accept()
            self.nr_conns += 1
            sock.setblocking(True)
            conn = DeadlineConn(
                self.cfg, sock, client, listener.getsockname(), seconds=self.request_timeout
            )
            self.enqueue_req(conn)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise

    def handle(self, conn: DeadlineConn) -> Any:
        """Serve one request as gthread does; a late one is answered 408 and closed."""
        conn.deadline.restart()
        result = super().handle(conn)
        if not conn.deadline.passed:
            return result
        error = RequestTimeout(RequestTimedOut(conn.deadline.seconds))
        if conn.deadline.request is None:  # the head was late: no app has answered
            self.log.warning("408 before a request's head was complete: %s", error.message)
            close_late(conn.sock, answer(error))
        else:
            close_late(conn.sock)
        return False

    def handle_request(self, req: Any, conn: DeadlineConn) -> Any:
        conn.deadline.request = req  # its head has arrived: a late body is the app's to answer
        return super().handle_request(req, conn)


def answer(error: RequestTimeout) -> bytes:
    """The app's JSON error answer, for a request the app never saw."""
    body = json.dumps({"error": error.message}).encode()
    return (
        f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def close_late(sock: socket.socket, last_words: bytes = b"") -> None:
    """Send `last_words`, half-close and let the client read them for up to LINGER seconds,
    then shut the read side too.

    In this thread, because gthread then closes the connection on its main loop, lingering there
    for up to 2 s while a client still trickles: 40 of them would stall every worker's accepts.
    With the read side shut, its recv() finds the end at once.
    """
    try:
        sock.settimeout(LINGER)
        sock.sendall(last_words)
        sock.shutdown(socket.SHUT_WR)
        end = time.monotonic() + LINGER
        while (left := end - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(65536):
                break
    except OSError:  # the client is gone, or has not read its answer in time
        pass
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass


class DeliveryProcess:
    """`relay worker` started with gunicorn, and started again if it dies, so that
    `gunicorn relay:app` (and `relay serve`, `make run`) also delivers, in a process of its own:
    delivery threads inside the web workers would take the GIL from the requests Qualifio waits
    for. RELAY_WORKER=off (separate worker processes) starts none."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()

    def start(self, log: Any) -> None:
        """In gunicorn's master, before it forks the web workers, which then only serve."""
        os.environ["RELAY_WORKER"] = "off"
        self.log = log
        self._spawn()
        threading.Thread(target=self._watch, name="delivery-watch", daemon=True).start()

    def _spawn(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "hookrelay", "worker"])
        self.log.info("delivery worker started (pid %d)", self.proc.pid)

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            # Its exit status is gunicorn's, which reaps every child: poll() only sees it gone.
            if self.proc is not None and self.proc.poll() is not None:
                self.log.error("delivery worker (pid %d) exited; starting it again", self.proc.pid)
                self._spawn()

    def stop(self) -> None:
        """Let the worker finish the batches it holds (SIGTERM), then end it."""
        self._stopping.set()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
