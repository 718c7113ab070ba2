"""What an attempt's result means for its delivery: delivered, skipped, retried after a backoff,
or dead. The worker sends; this module decides what comes next, by the destination's policy."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable

from hookrelay.claims import Delivery, Outcome, Signal
from hookrelay.config import Policy
from hookrelay.errors import DeliveryError, RetryLater, Skip, Throttled, trace

logger = logging.getLogger(__name__)
# Jitter of its own, like row ids: the `random` module's state is left to others.
_jitter = random.Random()
os.register_at_fork(after_in_child=_jitter.seed)  # processes forked apart do not jitter alike


def backoff(
    policy: Policy,
    attempt: int,
    retry_after: float | None,
    rng: Callable[[], float] | None = None,
) -> float:
    """Seconds before the next attempt: Retry-After when the vendor gave one (up to
    `throttle_max`: asking earlier only gets another refusal), else full jitter."""
    if retry_after is not None:
        return min(retry_after, policy.throttle_max)
    # 2 ** 60 s is past any backoff_max: a larger exponent would only overflow the float.
    ceiling: float = min(policy.backoff_max, policy.backoff_initial * 2 ** min(attempt - 1, 60))
    return (rng or _jitter.random)() * ceiling


def outcome(
    d: Delivery,
    policy: Policy,
    error: DeliveryError | None,
    started: float,
    took: int,
    delay: float,
) -> Outcome:
    """What an attempt that ended in `error` (None: it worked) means for the delivery: delivered;
    skipped; pending again after `delay` (a RetryLater within max_attempts, or a Throttled,
    which spends no attempt); dead (Permanent, or max_attempts reached). Its `signal` says what
    the attempt tells of the destination's health."""
    if error is None:
        return Outcome(d, "delivered", started, took, signal="up")
    status = getattr(error, "status", None)
    answered: Signal | None = (
        "up" if status else None
    )  # a refusal is an answer: the destination is there
    if isinstance(error, Skip):
        return Outcome(d, "skipped", started, took, error.message, status, signal=answered)
    later = time.time() + delay
    if isinstance(error, Throttled):  # the vendor's 429, or our own allowance for it spent
        throttled: Signal | None = "throttled" if status else None
        return Outcome(d, "pending", started, took, error.message, status, later, False, throttled)
    attempt = d.attempts + 1
    if isinstance(error, RetryLater) and attempt < policy.max_attempts:
        return Outcome(d, "pending", started, took, error.message, status, later, signal="down")
    if isinstance(error, RetryLater):
        message = f"gave up after {attempt} attempts: {error.message}"
        return Outcome(d, "dead", started, took, message, status, signal="down")
    return Outcome(d, "dead", started, took, error.message, status, signal=answered)


def internal_error(exc: Exception, d: Delivery) -> str:
    """Log an unexpected exception with the delivery's ids; the reason its attempt log keeps."""
    logger.error(
        "delivery %s of event %s to %s: internal error\n%s",
        d.id,
        d.event_id,
        d.destination,
        trace(exc),
    )
    return f"internal error ({type(exc).__name__}); see the relay's log"
