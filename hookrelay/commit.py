"""How writes wait: group commit, the lock SQLite's writers queue on, and named locks that every
process on the database shares.

A 2xx means "stored durably", so ingest commits before it answers. Many requests share one
commit: request threads hand their events to one writer thread, which writes everything waiting
in one transaction and one fsync, then wakes them all.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import (
    DataError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)

from hookrelay.errors import BadRequest, Rejected, StorageUnavailable

logger = logging.getLogger(__name__)


def write_lock(url: str, timeout: float) -> AbstractContextManager[Any]:
    """A lock file beside a SQLite database file; nothing to hold for another database."""
    if not url.startswith("sqlite:///") or url.startswith("sqlite:///:memory:"):
        return nullcontext()  # PostgreSQL queues writers itself, row by row
    return FileLock(url[len("sqlite:///") :] + ".lock", timeout)


class FileLock:
    """One holder at a time across threads and processes, waiting at most `timeout` seconds.

    :raise StorageUnavailable: the lock file cannot be opened (a read-only disk), or the wait
        ran out. Either way nothing is held: a failure here never blocks the next caller.
    """

    def __init__(self, path: str, timeout: float) -> None:
        self.path, self.timeout = path, timeout
        self._thread_lock = threading.Lock()
        self._file: Any = None
        self._pid = 0

    def __enter__(self) -> None:
        deadline = time.monotonic() + self.timeout
        if not self._thread_lock.acquire(timeout=self.timeout):
            raise self._busy()
        try:
            if self._pid != os.getpid():  # after a fork, a shared open file would share the lock
                self._file, self._pid = open(self.path, "a"), os.getpid()
            self._flock(deadline)
        except OSError as exc:
            self._thread_lock.release()
            logger.error("cannot lock %s (%s)", self.path, exc.strerror)
            raise StorageUnavailable(f"storage is unavailable: cannot lock {self.path}") from None
        except BaseException:
            self._thread_lock.release()
            raise

    def _flock(self, deadline: float) -> None:
        """flock has no timeout of its own: try without blocking, and again after short sleeps
        (a commit holds it a few milliseconds), until the deadline."""
        pause = 0.0005
        while True:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() + pause > deadline:
                    raise self._busy() from None
            time.sleep(pause)
            pause = min(pause * 2, 0.005)

    def _busy(self) -> StorageUnavailable:
        logger.error("waited %gs for the lock %s; giving up", self.timeout, self.path)
        return StorageUnavailable("storage is busy; retry later")

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._thread_lock.release()

    def close(self) -> None:
        with self._thread_lock:
            if self._file is not None:
                self._file.close()
                self._file, self._pid = None, 0


class NamedLocks:
    """Locks by name, each held by one thread of one process at a time across every process on
    the database: PostgreSQL advisory locks, or files beside the SQLite database."""

    wait = 600.0  # seconds to wait on SQLite for another process's hold

    def __init__(self, url: str, engine: Engine) -> None:
        self.url, self.engine = url, engine
        self._files: dict[str, AbstractContextManager[Any]] = {}

    @contextmanager
    def hold(self, name: str) -> Iterator[None]:
        """:raise StorageUnavailable: on SQLite, the lock was not had within `wait`."""
        digest = hashlib.sha256(name.encode()).digest()
        if self.engine.dialect.name != "postgresql":
            if name not in self._files:
                self._files[name] = write_lock(f"{self.url}.{digest.hex()[:16]}", self.wait)
            with self._files[name]:
                yield
            return
        key = {"key": int.from_bytes(digest[:8], "big", signed=True)}
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), key)
            try:
                yield
            finally:  # a session lock outlives the transaction: unlock before the pool takes it
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), key)

    def close(self) -> None:
        for lock in self._files.values():
            if isinstance(lock, FileLock):
                lock.close()


class GroupCommit:
    """Many request threads, one writer thread, one transaction per batch of waiting requests.

    The writer takes everything queued while the previous commit was fsyncing, so the number of
    commits per second adapts to the disk, not to the request rate. When a batch fails, each of
    its requests is written again on its own, so one bad request fails alone: 400 when the
    database refused what it holds, 503 only for storage trouble. A request whose caller gave up
    waiting is dropped before it is written, and the queue is bounded.
    """

    max_batch = 500

    def __init__(
        self, write: Callable[[list[Any]], list[Any]], wait: float, max_queue: int = 2000
    ) -> None:
        self._write, self.wait = write, wait  # wait: seconds before a request answers 503
        self._queue: queue.Queue[tuple[Any, Future[Any]]] = queue.Queue(max_queue)
        self._lock = threading.Lock()
        self._pid = 0
        self._thread: threading.Thread | None = None

    def submit(self, job: Any) -> Any:
        """Write `job` with whatever else is waiting; its result once committed.

        :raise BadRequest: the database refused what this job holds.
        :raise StorageUnavailable: anything else went wrong; the caller may retry.
        """
        self._start()
        future: Future[Any] = Future()
        try:
            self._queue.put_nowait((job, future))
            return future.result(timeout=self.wait)
        except Rejected:
            raise
        except Exception as exc:  # whatever it was, the request may be retried: 503
            future.cancel()  # not written if the writer has not taken it yet
            logger.error("storage unavailable: %s", type(exc).__name__)
            raise StorageUnavailable("storage is unavailable; retry later") from None

    def is_alive(self) -> bool:
        """False when this process's writer thread was started and has died."""
        return self._pid != os.getpid() or (self._thread is not None and self._thread.is_alive())

    def _start(self) -> None:
        # Started on first use, in the process that uses it: gunicorn forks after import.
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._thread = threading.Thread(
                        target=self._run, name="group-commit", daemon=True
                    )
                    self._thread.start()
                    self._pid = os.getpid()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            # Only what no caller gave up on; from here on a caller cannot cancel.
            batch = [(job, f) for job, f in batch if f.set_running_or_notify_cancel()]
            try:
                self._commit(batch)
            except BaseException as exc:  # never leave a caller waiting, nor the thread dead
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)

    def _commit(self, batch: list[tuple[Any, Future[Any]]]) -> None:
        if not batch:
            return
        try:
            results = self._write([job for job, _ in batch])
        except Exception as exc:
            if len(batch) > 1 and not isinstance(exc, STORAGE_TROUBLE):
                for one in batch:  # again one by one: only the request at fault fails
                    self._commit([one])
                return
            for _, future in batch:
                future.set_exception(_refusal(exc))
            return
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)


#: Failures of the database itself, not of what one request holds: retrying alone cannot help.
STORAGE_TROUBLE = (OperationalError, InterfaceError, DisconnectionError, StorageUnavailable)


def _refusal(exc: Exception) -> Exception:
    """What a request's caller sees when its write failed alone: a database that refused what
    it holds (a DataError, an IntegrityError) is the request's fault; the rest is storage."""
    if isinstance(exc, DataError | IntegrityError | UnicodeError):
        logger.error("the database refused a participation (%s)", type(exc).__name__)
        return BadRequest("the participation cannot be stored as it is; check its content")
    return exc
