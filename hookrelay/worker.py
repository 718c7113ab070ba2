"""The delivery worker: claim due deliveries, map them, send them, record the outcome.

Each thread claims at most one destination batch at a time, so a claim's lease only has to cover
filling it (`batch_wait`) and one send (hookrelay.sending). Outcomes: delivered; skipped (the
mapping's `when`, or a required field missing); pending again after a backoff (RetryLater);
dead (Permanent, or max_attempts reached), replayable. What the attempts say of a destination
goes to its shared health (hookrelay.health). One more thread keeps house: it ends the
deliveries whose destination left the config or stayed down past `throttle_max`, and erases what
`retention_days` no longer keeps; another hears other processes' wake-ups (hookrelay.wakeups).

No loop here ends for an error: whatever one delivery raises becomes that delivery's outcome
(an unexpected exception: dead, "internal error (TypeName)", logged with ids and a traceback
without values), and a loop that fails as a whole (storage down) logs, backs off and goes on.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from hookrelay import health, metrics, retention, sending, wakeups
from hookrelay.claims import Delivery, Outcome
from hookrelay.config import Policy
from hookrelay.errors import StorageUnavailable, trace

if TYPE_CHECKING:
    from hookrelay.runtime import Relay

logger = logging.getLogger(__name__)
PURGE_EVERY = 3600.0  # seconds between two retention purges
HOUSEKEEPING_EVERY = 60.0  # seconds between two looks for deliveries to a removed destination


class Worker:
    def __init__(self, relay: Relay, threads: int = 4) -> None:
        self.relay, self.threads = relay, threads
        self._wakeup, self._stopping = threading.Event(), threading.Event()
        self._reloaded = threading.Event()  # a new config may have dropped a destination
        self._running: list[threading.Thread] = []  # what stop() waits for
        self._listening: threading.Thread | None = None  # hookrelay.wakeups; not waited for
        self._gates: dict[str, threading.Lock] = {}
        self._pools: dict[str, tuple[int, ThreadPoolExecutor]] = {}
        self._gates_lock = threading.Lock()
        self._health: dict[str, health.Health] = {}  # as this process last read or made it

    def start(self) -> None:
        self._running = [
            threading.Thread(target=self._loop, args=(i,), name=f"worker-{i}", daemon=True)
            for i in range(self.threads)
        ]
        self._running.append(
            threading.Thread(target=self._keep_house, name="housekeeping", daemon=True)
        )
        listener = wakeups.listener(self.relay.store.engine.url)
        if listener:
            self._listening = threading.Thread(
                target=self._listen, args=(listener,), name="wakeups", daemon=True
            )
        for thread in self._threads():
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Let each thread finish the batch it holds, then return. The wake-up listener is not
        waited for: it holds nothing, and sees the stop within a second by itself."""
        self._stopping.set()
        self._wakeup.set()
        self._reloaded.set()
        for thread in self._running:
            thread.join(timeout)
        for _, pool in self._pools.values():
            pool.shutdown(wait=False)

    def _threads(self) -> list[threading.Thread]:
        return self._running + ([self._listening] if self._listening else [])

    def run_until_stopped(self) -> None:
        """Once started: wait for SIGTERM or Ctrl-C, then let each thread finish the batch it
        holds."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self._stopping.set())
        while not self._stopping.wait(1):
            pass
        self.stop()

    def wake(self) -> None:
        """New deliveries were stored: look now instead of at the next poll."""
        self._wakeup.set()

    def config_changed(self) -> None:
        """A new config took effect: look for deliveries to a removed destination now."""
        self._reloaded.set()

    def problems(self) -> list[str]:
        """Why this worker is not delivering: a thread of it that is no longer alive."""
        if self._stopping.is_set():
            return []
        return [f"worker thread {t.name} is not alive" for t in self._threads() if not t.is_alive()]

    def _loop(self, offset: int) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                done = self.run_once(offset)
                failures = 0
            except Exception as exc:  # the loop must outlive anything; back off and go on
                failures += 1
                _log_failure("the worker", exc)
                self._stopping.wait(min(30.0, 0.1 * 2 ** min(failures, 10)))
                continue
            if not done:
                self._wakeup.wait(self.idle())
                self._wakeup.clear()

    def _listen(self, listener: wakeups.Listener) -> None:
        """Wake the delivery threads when another process rings (hookrelay.wakeups); a channel
        that fails is opened again after a pause, and the poll covers the gap."""
        failures = 0
        while not self._stopping.is_set():
            try:
                listener.run(self.wake, self._stopping)
            except Exception as exc:
                failures += 1
                _log_failure("the wake-up listener", exc)
                self._stopping.wait(min(30.0, 0.1 * 2 ** min(failures, 10)))

    def _keep_house(self) -> None:
        """End deliveries to removed destinations, after each reload and every minute; erase what
        `retention_days` no longer keeps, at start and then every hour."""
        purged_at = -PURGE_EVERY
        while not self._stopping.is_set():
            try:
                self.end_orphans()
                for name, ended in health.expire(
                    self.relay.store, self.relay.config.policies
                ).items():
                    logger.warning(
                        "deliveries to %s ended dead after throttle_max: %d", name, ended
                    )
                if time.monotonic() - purged_at >= PURGE_EVERY:
                    purged_at = time.monotonic()
                    self.purge()
            except Exception as exc:  # the next round tries again
                _log_failure("housekeeping", exc)
            self._reloaded.wait(HOUSEKEEPING_EVERY)
            self._reloaded.clear()

    def purge(self) -> None:
        days = self.relay.config.retention_days
        erased = retention.purge(self.relay.store, time.time() - days * 86400)
        if erased:
            logger.info("finished events erased: %d (retention_days: %d)", erased, days)

    def end_orphans(self) -> int:
        """End dead the pending deliveries whose destination is no longer in the config (a
        replay sends them once it is back); returns how many."""
        config, ended = self.relay.config, 0
        while batch := self.relay.store.claim_orphans(config.destinations, 500, 60.0):
            for name in {d.destination for d in batch}:
                self.process(name, [d for d in batch if d.destination == name])
            ended += len(batch)
        return ended

    def idle(self) -> float:
        """Seconds between polls when nothing is due: no longer than the shortest backoff."""
        shortest = min(
            (p.backoff_initial for p in self.relay.config.policies.values()), default=1.0
        )
        return min(1.0, max(0.02, shortest))

    def run_once(self, offset: int = 0) -> int:
        """Claim and process one batch per destination; returns how many deliveries were done."""
        names = list(self.relay.config.destinations)
        done = 0
        for name in names[offset % len(names) :] + names[: offset % len(names)] if names else []:
            batch = self.claim(name)
            if batch:
                self.process(name, batch)
                done += len(batch)
        return done

    def claim(self, name: str) -> list[Delivery]:
        """Claim a batch for `name`: nothing while its rate limit is spent or it is paused (see
        hookrelay.health), one probe delivery while its circuit is open; for a destination with
        a `batch_wait`, one thread at a time fills a batch, waiting at most that long."""
        config, store = self.relay.config, self.relay.store  # a reload may swap the config
        destination = config.destinations.get(name)
        if destination is None or (destination.limit is not None and destination.limit.delay()):
            return []
        policy = config.policies[name]
        lease, wait = policy.lease, destination.batch_wait
        known = self._health[name] = health.read(store, name)
        if known.paused_until > store.clock():
            return []
        if known.state == "open":
            probing = health.take_probe(store, name, policy, known.failures)
            return store.claim_due(1, lease, [name]) if probing else []
        # One batch, or, for a destination that takes one record a call, one for each sender.
        size = destination.batch_size if destination.batch_size > 1 else policy.concurrency
        if wait <= 0:
            return self.relay.store.claim_due(size, lease, [name])
        with self._gates_lock:
            gate = self._gates.setdefault(name, threading.Lock())
        if not gate.acquire(blocking=False):
            return []  # another thread is filling this destination's batch
        try:
            batch = self.relay.store.claim_due(size, lease, [name])
            deadline = time.monotonic() + wait
            while batch and len(batch) < size and not self._stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._stopping.wait(min(left, 0.2))
                batch += self.relay.store.claim_due(size - len(batch), lease, [name])
            return batch
        finally:
            gate.release()

    def process(self, name: str, batch: list[Delivery]) -> None:
        destination = self.relay.config.destinations.get(name)
        policy = self.relay.config.policies.get(name, Policy())
        outcomes, records = sending.map_batch(self.relay.config, destination, batch)
        if destination is not None and records:
            # Sends that must not overlap (a sheet's header change) wait for one another, in
            # every process.
            exclusive = destination.exclusive
            with self.relay.store.exclusive(exclusive) if exclusive else nullcontext():
                if destination.batch_size > 1 or len(records) == 1:
                    outcomes += sending.send(destination, policy, records)
                else:  # one record a call: `concurrency` calls at once, each its own outcome
                    sends = self._senders(name, policy.concurrency).map(
                        lambda r: sending.send(destination, policy, [r]), records
                    )
                    outcomes += [o for sent in sends for o in sent]
        self.relay.store.record(outcomes)  # the whole batch's outcomes in one transaction
        self._judge(name, policy, [o for o in outcomes if o.signal])
        for o in outcomes:
            metrics.ATTEMPTS.labels(name, o.status).inc()
            if o.status == "delivered":
                metrics.LATENCY.labels(name).observe(max(0.0, time.time() - o.delivery.received_at))
            logger.info(
                "delivery %s of event %s to %s: %s%s",
                o.delivery.id,
                o.delivery.event_id,
                name,
                o.status,
                f" (http {o.http_status})" if o.http_status else "",
            )

    def _judge(self, name: str, policy: Policy, sent: list[Outcome]) -> None:
        """Tell the destination's shared health what this batch's attempts said of it, when that
        can change it: a failure or a 429, or an answer from a destination that had trouble."""
        known = self._health.get(name, health.Health(name))
        if not any(o.signal != "up" for o in sent) and not (sent and known.troubled):
            return
        before, after = health.record(self.relay.store, name, sent, policy)
        self._health[name] = after
        if after.state != before.state:
            logger.warning("destination %s: %s", name, after.describe(last_error=False))
            if after.state == "ok":
                self.wake()  # what waited for it is due now

    def _senders(self, name: str, size: int) -> ThreadPoolExecutor:
        """The threads that send to `name`: at most `size` of its deliveries at once in this
        process, whichever worker thread claimed them."""
        with self._gates_lock:
            if self._pools.get(name, (0, None))[0] != size:  # new, or resized by a reload
                self._pools[name] = (size, ThreadPoolExecutor(size, f"send-{name}"))
            return self._pools[name][1]


def _log_failure(what: str, exc: Exception) -> None:
    if isinstance(exc, SQLAlchemyError | StorageUnavailable):
        logger.error("storage unavailable to %s (%s); retrying", what, type(exc).__name__)
    else:
        logger.error("%s failed; retrying\n%s", what, trace(exc))
