"""The breaker's sliding sampling window: how many calls, failures and slow calls in the last
`BREAKER_SAMPLING_S` seconds, as Polly's and Resilience4j's time-based windows count them.

pybreaker counts consecutive failures only: an upstream failing every other call never opens it.
This window is the part it lacks. It keeps `BUCKETS` buckets of equal width, so recording an
outcome is a few additions and the oldest bucket leaves whole (the window slides in steps of a
tenth of its length, not call by call: no per-call timestamps to keep). The clock is injected, so
tests move time instead of waiting.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

BUCKETS = 10


@dataclass(slots=True)
class _Bucket:
    start: float
    calls: int = 0
    failures: int = 0
    slow: int = 0


class Window:
    def __init__(self, sampling_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.sampling_s = sampling_s
        self.width = sampling_s / BUCKETS
        self.clock = clock
        self._buckets: deque[_Bucket] = deque()
        self.calls = self.failures = self.slow = 0

    def record(self, *, failed: bool, slow: bool) -> None:
        now = self.clock()
        self._expire(now)
        if not self._buckets or now - self._buckets[-1].start >= self.width:
            self._buckets.append(_Bucket(now))
        bucket = self._buckets[-1]
        bucket.calls += 1
        self.calls += 1
        if failed:
            bucket.failures += 1
            self.failures += 1
        if slow:
            bucket.slow += 1
            self.slow += 1

    def tripped(self, *, min_throughput: int, failure_ratio: float, slow_call_ratio: float | None) -> bool:
        """Whether the window holds enough calls and too many of them failed (or were slow)."""
        if self.calls < min_throughput:
            return False
        if self.failures >= failure_ratio * self.calls:
            return True
        return slow_call_ratio is not None and self.slow >= slow_call_ratio * self.calls

    def clear(self) -> None:
        self._buckets.clear()
        self.calls = self.failures = self.slow = 0

    def _expire(self, now: float) -> None:
        horizon = now - self.sampling_s
        while self._buckets and self._buckets[0].start <= horizon:
            old = self._buckets.popleft()
            self.calls -= old.calls
            self.failures -= old.failures
            self.slow -= old.slow
