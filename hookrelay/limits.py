"""Vendor limits, shared by every worker thread of a process.

A limit belongs to the vendor account, not to one destination: two destinations on one Trello
token, or a destination rebuilt by a config reload, must draw on the same allowance. `shared()`
hands out one object per account key for the life of the process.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from hookrelay.errors import Throttled

T = TypeVar("T")

_shared: dict[str, Any] = {}
_shared_lock = threading.Lock()


def shared(kind: str, account: str, make: Callable[[], T]) -> T:
    """The process's one `kind` limit for `account` (a key or token, kept only as a hash)."""
    key = f"{kind}:{hashlib.sha256(account.encode()).hexdigest()}"
    with _shared_lock:
        if key not in _shared:
            _shared[key] = make()
        return _shared[key]  # type: ignore[no-any-return]


class RateLimit:
    """At most `count` calls in any `period` seconds.

    A sliding log of the last `count` calls rather than a token bucket: vendors count calls per
    rolling window, and a bucket that starts full would allow nearly twice the count in the first
    window.
    """

    def __init__(self, count: int, period: float, clock: Callable[[], float] = time.monotonic):
        self.count, self.period, self.clock = count, period, clock
        self._calls: deque[float] = deque()
        self._lock = threading.Lock()

    def delay(self) -> float:
        """Seconds until a call would be allowed; 0 when one is allowed now."""
        with self._lock:
            return self._delay(self.clock())

    def acquire(self, patience: float = 2.0) -> None:
        """Count a call, waiting for the window if that takes at most `patience` seconds.

        :raise Throttled: a longer wait; the worker puts the batch back rather than hold a thread.
        """
        while True:
            with self._lock:
                now = self.clock()
                wait = self._delay(now)
                if wait <= 0:
                    self._calls.append(now)
                    return
            if wait > patience:
                raise Throttled(
                    f"held back: the limit of {self.count} requests per {self.period:g}s is spent",
                    delay=wait,
                )
            time.sleep(wait)

    def _delay(self, now: float) -> float:
        while self._calls and self._calls[0] <= now - self.period:
            self._calls.popleft()
        if len(self._calls) < self.count:
            return 0.0
        return self._calls[0] + self.period - now
