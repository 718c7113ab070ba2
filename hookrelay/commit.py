"""How writes wait: group commit, and the lock SQLite's writers queue on.

A 2xx means "stored durably", so ingest commits before it answers. Many requests share one
commit: request threads hand their events to one writer thread, which writes everything waiting
in one transaction and one fsync, then wakes them all.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from hookrelay.errors import StorageUnavailable

logger = logging.getLogger(__name__)


def write_lock(url: str) -> AbstractContextManager[Any]:
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        return nullcontext()  # PostgreSQL queues writers itself, row by row
    return FileLock(url[len("sqlite:///") :] + ".lock")


class FileLock:
    """One writer at a time across threads and processes; waiting is a blocking flock."""

    def __init__(self, path: str) -> None:
        self.path, self._thread_lock = path, threading.Lock()
        self._file: Any = None
        self._pid = 0

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        if self._pid != os.getpid():  # after a fork, a shared open file would share the lock
            self._file, self._pid = open(self.path, "a"), os.getpid()
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._thread_lock.release()

    def close(self) -> None:
        with self._thread_lock:
            if self._file is not None:
                self._file.close()
                self._file, self._pid = None, 0


class GroupCommit:
    """Many request threads, one writer thread, one transaction per batch of waiting requests.

    The writer takes everything queued while the previous commit was fsyncing, so the number of
    commits per second adapts to the disk, not to the request rate.
    """

    max_batch = 500

    def __init__(self, write: Callable[[list[Any]], list[Any]], wait: float) -> None:
        self._write, self.wait = write, wait  # wait: seconds before a request answers 503
        self._queue: queue.SimpleQueue[tuple[Any, Future[Any]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pid = 0

    def submit(self, job: Any) -> Any:
        self._start()
        future: Future[Any] = Future()
        self._queue.put((job, future))
        try:
            return future.result(timeout=self.wait)
        except (SQLAlchemyError, TimeoutError) as exc:
            logger.error("storage unavailable: %s", type(exc).__name__)
            raise StorageUnavailable("storage is unavailable; retry later") from None

    def _start(self) -> None:
        # Started on first use, in the process that uses it: gunicorn forks after import.
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    threading.Thread(target=self._run, name="group-commit", daemon=True).start()
                    self._pid = os.getpid()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                results = self._write([job for job, _ in batch])
            except Exception as exc:  # every waiting request answers 503; none is half-stored
                for _, future in batch:
                    future.set_exception(exc)
            else:
                for (_, future), result in zip(batch, results, strict=True):
                    future.set_result(result)
