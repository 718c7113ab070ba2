"""Vendor rate limits: a sliding window, shared by every destination on one account."""

from __future__ import annotations

import pytest

from hookrelay import limits
from hookrelay.errors import Throttled


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_window_allows_count_calls_then_says_how_long_to_wait():
    clock = Clock()
    limit = limits.RateLimit(3, 60.0, clock)
    for _ in range(3):
        assert limit.delay() == 0
        limit.acquire()
    assert limit.delay() == 60.0
    clock.now += 45
    assert limit.delay() == 15.0
    clock.now += 15
    assert limit.delay() == 0


def test_the_window_slides_rather_than_resetting():
    clock = Clock()
    limit = limits.RateLimit(2, 10.0, clock)
    limit.acquire()
    clock.now += 9
    limit.acquire()
    clock.now += 1  # the first call left the window, the second has not
    assert limit.delay() == 0
    limit.acquire()
    assert limit.delay() == 9.0


def test_one_limit_per_account_and_kind():
    a = limits.shared("test", "token-a", lambda: limits.RateLimit(1, 1.0))
    assert limits.shared("test", "token-a", lambda: limits.RateLimit(5, 1.0)) is a
    assert limits.shared("test", "token-b", lambda: limits.RateLimit(1, 1.0)) is not a
    assert limits.shared("other", "token-a", lambda: limits.RateLimit(1, 1.0)) is not a


def test_a_long_wait_is_handed_back_as_throttled_not_slept():
    clock = Clock()
    limit = limits.RateLimit(1, 60.0, clock)
    limit.acquire()
    with pytest.raises(Throttled) as caught:
        limit.acquire(patience=2.0)
    assert caught.value.delay == 60.0
    assert "limit of 1 requests per 60s is spent" in caught.value.message
