"""Real processes for end-to-end tests: the relay under gunicorn and `relay worker`, started in
their own process group (so SIGKILL takes gunicorn's workers too), and a client that posts like
Qualifio."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from hookrelay.auth import sign
from tests.conftest import LOG_FILES, ROOT, SECRET
from tests.fakes.server import Received

READY_WITHIN = 30.0  # seconds a started process has to become ready
POST_GIVE_UP = 60.0  # seconds one body may go unanswered before the test fails


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Supervised:
    """A process in its own process group, started again after each SIGKILL; one log per start."""

    def __init__(
        self,
        name: str,
        command: list[str],
        env: dict[str, str],
        logs: Path,
        ready: Callable[[Supervised], bool],
    ) -> None:
        self.name, self.command, self.env, self.logs, self.ready = name, command, env, logs, ready
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = logs / f"{name}-0.log"
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.log = self.logs / f"{self.name}-{self.starts}.log"
        LOG_FILES.append(self.log)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_WITHIN
        while not self.ready(self):
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode} on start; see {self.log}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready after {READY_WITHIN}s; see {self.log}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the whole process group (gunicorn's master and its workers alike)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"{self.name} exited by itself with {self.proc.returncode}; see {self.log}"
            )
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def web_answers(url: str) -> Callable[[Supervised], bool]:
    def ready(_: Supervised) -> bool:
        try:
            return requests.get(f"{url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    return ready


def worker_runs(process: Supervised) -> bool:
    return b"worker running" in process.log.read_bytes()


def post_signed(url: str, body: bytes, timeout: float = 30) -> requests.Response:
    """Post `body` to the relay at `url` as Qualifio does: signed with the tests' secret."""
    headers = {"X-Qualifio-Signature": sign(body, SECRET), "Content-Type": "application/json"}
    return requests.post(f"{url}/hooks/qualifio", data=body, headers=headers, timeout=timeout)


def wait_until(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll `check` until it returns something true (returned); an HTTP or file error is "not
    yet" (a server still booting, a file not written yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except (requests.RequestException, OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s")


def post_until_stored(url: str, body: bytes) -> int:
    """Post like Qualifio: the same body again after an error, until a 2xx; returns its status."""
    deadline = time.monotonic() + POST_GIVE_UP
    while True:
        try:
            answer = post_signed(url, body, timeout=10)
        except requests.RequestException as exc:
            last = type(exc).__name__
        else:
            if 200 <= answer.status_code < 300:
                return answer.status_code
            last = f"HTTP {answer.status_code}"
        if time.monotonic() > deadline:
            raise AssertionError(f"a participation went unanswered for {POST_GIVE_UP}s ({last})")
        time.sleep(random.uniform(0.05, 0.2))


def webhook_id(request: Received) -> str:
    return next(v for k, v in request.headers.items() if k.lower() == "webhook-id")


GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "python:hookrelay.gunicorn_conf", "relay:app"]


def processes(
    tmp_path: Path, config: Path, webs: int = 1, workers: int = 0, **env: str
) -> tuple[str, list[Supervised]]:
    """Start gunicorn with `webs` workers and `workers` `relay worker` processes (with none, the
    web processes deliver too); their address, and the processes to stop."""
    port = free_port()
    environment = {
        **os.environ,
        "RELAY_CONFIG": str(config),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "RELAY_WORKER": "off" if workers else "on",
        "WEB_CONCURRENCY": str(webs),
        **env,
    }
    url = f"http://127.0.0.1:{port}"
    started = [Supervised("web", GUNICORN, environment, tmp_path, web_answers(url))]
    worker = [sys.executable, "-m", "hookrelay", "worker", "--config", str(config)]
    started += [
        Supervised(f"worker{i}", worker, environment, tmp_path, worker_runs) for i in range(workers)
    ]
    for process in started:
        process.start()
    return url, started
