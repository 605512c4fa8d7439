"""A circuit breaker per upstream: pybreaker's state machine, opened on a failure ratio.

pybreaker keeps the state (closed, open, half-open), its listeners (the `circuit_state_changed`
log line) and its storage. The `circuit_breaker_state` gauge is read when Prometheus scrapes
(`reported_state`): pybreaker leaves an open circuit open until the next call, so a gauge set on
transitions would say "open" for hours after the upstream recovered if no call came; at scrape
time an open circuit whose `BREAKER_RESET_TIMEOUT_S` is over reads half-open, which is what the
next call meets (a trial). What it cannot do, this adapter
adds: pybreaker opens on `fail_max` consecutive failures only, so an upstream failing every other
call never opens it; here the circuit also opens when, over the last `BREAKER_SAMPLING_S`, at least
`BREAKER_MIN_THROUGHPUT` calls were seen and `BREAKER_FAILURE_RATIO` of them failed (or, when
`BREAKER_SLOW_CALL_RATIO` is set, that share took longer than `BREAKER_SLOW_CALL_S`), as Polly's
and Resilience4j's breakers do. `BREAKER_FAIL_MAX` consecutive failures still open it: that is
what opens it for a service too quiet to reach the minimum throughput.

pybreaker's decorator does not await coroutines and its async path needs Tornado; its `calling()`
context manager records every exit as a success or a failure, which would count a cancelled call
one way or the other. So the upstream asks the breaker to `admit` a call before it starts and
reports the outcome after it ends; a cancellation reports nothing (`abandoned`). Half-open admits
at most `BREAKER_HALF_OPEN_PROBES` calls at once; the first probe's outcome closes or reopens it,
and a closed circuit starts with an empty window.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pybreaker
import structlog

from {{ cookiecutter.package_name }}.platform.resilience.errors import CircuitOpen
from {{ cookiecutter.package_name }}.platform.resilience.window import Window

log = structlog.get_logger(__name__)

BREAKER_STATES = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_HALF_OPEN: 1, pybreaker.STATE_OPEN: 2}


class StateChanges(pybreaker.CircuitBreakerListener):
    """Every transition, logged."""

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        log.warning(
            "circuit_state_changed",
            upstream=cb.name,
            from_state=old_state.name if old_state else None,
            to_state=new_state.name,
        )


class Breaker:
    def __init__(
        self,
        name: str,
        *,
        failure_ratio: float,
        min_throughput: int,
        sampling_s: float,
        fail_max: int,
        reset_timeout_s: float,
        half_open_probes: int,
        slow_call_ratio: float | None = None,
        slow_call_s: float = math.inf,
        listeners: list[pybreaker.CircuitBreakerListener],
        storage: pybreaker.CircuitBreakerStorage | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.storage = storage or pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
        self.clock = clock
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout_s,
            state_storage=self.storage,
            listeners=listeners,
            name=name,
        )
        self.window = Window(sampling_s, clock=clock)
        self.failure_ratio = failure_ratio
        self.min_throughput = min_throughput
        self.slow_call_ratio = slow_call_ratio
        self.slow_call_s = slow_call_s
        self.half_open_probes = half_open_probes
        self._probes = 0
        self._opened_at: float | None = None  # on this breaker's clock (tests move a fake one)

    @property
    def name(self) -> str:
        return str(self.breaker.name)

    @property
    def state(self) -> str:
        return str(self.breaker.current_state)

    def open_for(self) -> float:
        """Seconds until an open circuit lets a probe through."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.breaker.reset_timeout - (self.clock() - self._opened_at))

    def reported_state(self) -> int:
        """0 closed, 1 half-open, 2 open: the state a call arriving now meets. An open circuit whose
        break is over admits a trial, so it reads half-open (1) without waiting for that call."""
        state = self.state
        if state == pybreaker.STATE_OPEN and self.open_for() == 0:
            return BREAKER_STATES[pybreaker.STATE_HALF_OPEN]
        return BREAKER_STATES[state]

    def admit(self) -> bool:
        """Admit a call or raise `CircuitOpen`; True when the call is a half-open probe."""
        state = self.state
        if state == pybreaker.STATE_CLOSED:
            return False
        if state == pybreaker.STATE_OPEN:
            left = self.open_for()
            if left > 0:
                raise CircuitOpen(self.name, left)
            self.breaker.half_open()
        if self._probes >= self.half_open_probes:
            raise CircuitOpen(self.name, 1.0)
        self._probes += 1
        return True

    def succeeded(self, probe: bool, duration_s: float = 0.0) -> None:
        self.storage.reset_counter()
        if probe:
            self._probes -= 1
            if self.state == pybreaker.STATE_HALF_OPEN:
                self.window.clear()
                self.breaker.close()
            return
        self._record(failed=False, duration_s=duration_s)

    def failed(self, probe: bool, duration_s: float = 0.0) -> None:
        if probe:
            self._probes -= 1
            if self.state == pybreaker.STATE_HALF_OPEN:
                self._open()
            return
        self.storage.increment_counter()
        self._record(failed=True, duration_s=duration_s)
        if self.state == pybreaker.STATE_CLOSED and self.storage.counter >= self.breaker.fail_max:
            self._open()

    def abandoned(self, probe: bool) -> None:
        """The call says nothing of the upstream's health (cancelled, or cut short by our own
        deadline or pool): free its probe slot, record no outcome."""
        if probe:
            self._probes -= 1

    def _record(self, *, failed: bool, duration_s: float) -> None:
        self.window.record(failed=failed, slow=duration_s > self.slow_call_s)
        if self.state == pybreaker.STATE_CLOSED and self.window.tripped(
            min_throughput=self.min_throughput,
            failure_ratio=self.failure_ratio,
            slow_call_ratio=self.slow_call_ratio,
        ):
            self._open()

    def _open(self) -> None:
        self._opened_at = self.clock()
        self.window.clear()
        self.breaker.open()
