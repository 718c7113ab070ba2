"""Wake-ups across processes: a process that made deliveries due (ingest, a replay, a destination
that is back) rings, and every delivery worker listening looks at once rather than at its next
poll. The poll stays, for deliveries whose backoff simply ran out.

- PostgreSQL: NOTIFY in the transaction that made them due (sent when it commits); LISTEN on a
  connection of the listener's own.
- SQLite: a FIFO per listening process in `<database>-wake/`; a ring writes one byte to each,
  without blocking, after the commit. A FIFO whose process died has no reader left: the ring
  removes it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import psycopg
import sqlalchemy as sa

logger = logging.getLogger(__name__)
CHANNEL = "hookrelay_due"
LISTEN_TIMEOUT = 1.0  # seconds: how soon a listener sees that it must stop


class Listener(Protocol):
    def run(self, wake: Callable[[], None], stopping: threading.Event) -> None:
        """Call `wake` at each ring until `stopping` is set; raises when the channel fails."""


def fifo_directory(url: sa.URL) -> Path | None:
    """Where a SQLite database's listeners keep their FIFOs; None for an in-memory one."""
    database = url.database
    if not database or database == ":memory:":
        return None
    return Path(f"{database}-wake")


def ring_fifos(directory: Path) -> None:
    """One byte to every listener's FIFO; never blocks, never raises."""
    try:
        names = os.listdir(directory)
    except OSError:
        return  # nobody listens
    for name in names:
        path = directory / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no reader: its process is gone
                with contextlib.suppress(OSError):
                    path.unlink()
            continue
        try:
            os.write(fd, b"\0")
        except OSError:  # full: it has rings it has not read yet, which is enough
            pass
        finally:
            os.close(fd)


class FifoListener:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def run(self, wake: Callable[[], None], stopping: threading.Event) -> None:
        self.directory.mkdir(exist_ok=True)
        path = self.directory / f"{os.getpid()}-{threading.get_ident()}"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.mkfifo(path, 0o600)
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        # A writer of its own, so that the FIFO never reads as closed between two rings.
        writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            while not stopping.is_set():
                readable, _, _ = select.select([reader], [], [], LISTEN_TIMEOUT)
                if readable:
                    os.read(reader, 4096)
                    wake()
        finally:
            os.close(writer)
            os.close(reader)
            with contextlib.suppress(OSError):
                path.unlink()


class PostgresListener:
    def __init__(self, url: sa.URL) -> None:
        self.conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)

    def run(self, wake: Callable[[], None], stopping: threading.Event) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            while not stopping.is_set():
                for _ in conn.notifies(timeout=LISTEN_TIMEOUT, stop_after=1):
                    wake()


def listener(url: sa.URL) -> Listener | None:
    """How a worker hears rings on this database; None when only polling can tell."""
    if url.get_backend_name() == "postgresql":
        return PostgresListener(url)
    directory = fifo_directory(url)
    return FifoListener(directory) if directory else None
