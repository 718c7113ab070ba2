"""A real HTTP server on 127.0.0.1:<free port> for fake vendors: records every request and answers
from a script, so a test can make it fail (500, 429 with Retry-After, a slow answer) on demand."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    query: dict[str, str] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)  # when it arrived

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (to provoke timeouts)


class FakeServer:
    """Answers come from `check` when it refuses a request, then from `script` in order, then from
    `handle` (a stateful fake vendor) or `default`."""

    def __init__(
        self,
        check: Callable[[Received], Answer | None] | None = None,
        handle: Callable[[Received], Answer] | None = None,
    ) -> None:
        self.requests: list[Received] = []  # the requests answered 2xx
        self.seen: list[Received] = []  # every request
        self.script: list[Answer] = []
        self.default = Answer(200, {"ok": True})
        self.check, self.handle = check, handle
        self._lock = threading.Lock()
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, *answers: Answer) -> None:
        with self._lock:
            self.script.extend(answers)

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        received = Received(
            request.method,
            request.path,
            dict(request.headers),
            request.get_data(),
            dict(request.args),
        )
        answer = self.check(received) if self.check else None
        with self._lock:
            if answer is None and self.script:
                answer = self.script.pop(0)
        if answer is None:
            answer = self.handle(received) if self.handle else self.default
        with self._lock:
            self.seen.append(received)
            if answer.status < 300:
                self.requests.append(received)
        if answer.delay:
            time.sleep(answer.delay)
        if answer.body is None:
            body: str | bytes = b""
        elif isinstance(answer.body, str | bytes):
            body = answer.body
        else:
            body = json.dumps(answer.body)
        headers = {"Content-Type": "application/json", **answer.headers}
        return Response(body, answer.status, headers)(environ, start_response)

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        """Wait until `count` requests were accepted; returns them."""
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.requests)
