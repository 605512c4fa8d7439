"""Calls to other services that fail fast, retry carefully and never outlive the request.

Standard: Reliability & Resilience (timeouts, bounded retries with backoff and jitter, circuit
breakers, graceful degradation). Tuned by `REQUEST_TIMEOUT_S` (the deadline), `HTTP_CONNECT_TIMEOUT_S`,
`HTTP_READ_TIMEOUT_S`, `HTTP_RETRY_ATTEMPTS`, `HTTP_RETRY_BACKOFF_S`, `HTTP_RETRY_MAX_WAIT_S`,
`HTTP_RETRY_BUDGET_RATIO`, `BREAKER_FAIL_MAX`, `BREAKER_RESET_TIMEOUT_S`, `BREAKER_HALF_OPEN_PROBES`.

`Upstream.request` makes one call, in this order:

1. The upstream's circuit breaker admits it, or it fails at once, with no network I/O, as
   `CircuitOpen` (503, `Retry-After` = the time the circuit stays open).
2. The attempt runs with its timeouts cut to what is left of the request's deadline, in a CLIENT span.
3. 2xx to 4xx go back to the caller (a 404 is an answer, not a fault). 408, 429, 5xx, timeouts and
   connection errors are failures: the breaker counts them.
4. A failure is retried (tenacity; full-jitter exponential backoff, or the upstream's `Retry-After`
   when it is within the cap) when the method is idempotent or the request carries an `Idempotency-Key`, attempts
   remain, the breaker is not open, the retry budget has a token, and the wait ends before the deadline.
5. Otherwise the caller gets `UpstreamTimeout` (504) or `UpstreamUnavailable` (503).

Breakers are per process. Sharing their state across replicas through pybreaker's Redis storage
(`REDIS_URL`) is deliberately not wired in: that storage is synchronous, so every admission would
block the event loop on Redis round trips; per-replica breakers open within BREAKER_FAIL_MAX
failures each, which bounds a failing upstream's extra load to that many calls per replica.

`asyncio.CancelledError` is never counted: it is neither a success nor a failure. Neither is a
timeout that our own deadline caused, nor a full connection pool of our own: the breaker counts
only what the upstream did. A `Retry-After` longer than the cap ends the retries and is passed on.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Mapping
from datetime import UTC
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pybreaker
import structlog
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.trace import Status
from opentelemetry.trace import StatusCode
from tenacity import AsyncRetrying
from tenacity import RetryCallState
from tenacity import retry_if_exception
from tenacity import stop_after_attempt
from tenacity import stop_any
from tenacity import wait_random_exponential
from tenacity.stop import stop_base

from {{ cookiecutter.package_name }}.platform import deadline
from {{ cookiecutter.package_name }}.platform.errors import ServiceError
from {{ cookiecutter.package_name }}.platform.metrics import Metrics
from {{ cookiecutter.package_name }}.settings import Settings

log = structlog.get_logger(__name__)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Answers that mean "the upstream is struggling": counted by the breaker; retried when safe.
FAILURE_STATUSES = frozenset({408, 429})
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
BREAKER_STATES = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_HALF_OPEN: 1, pybreaker.STATE_OPEN: 2}
# Retries a quiet upstream may make before its budget has been earned by requests.
RETRY_BUDGET_RESERVE = 10.0


_DELAY_SECONDS = re.compile(r"[0-9]{1,9}")  # ASCII digits only: str.isdigit() also takes '²'


class UpstreamUnavailable(ServiceError):
    status, slug = 503, "upstream-unavailable"


class UpstreamTimeout(ServiceError):
    status, slug = 504, "upstream-timeout"


class CircuitOpen(UpstreamUnavailable):
    slug = "circuit-open"

    def __init__(self, upstream: str, retry_after_s: float) -> None:
        seconds = max(1, math.ceil(retry_after_s))
        super().__init__(
            f"{upstream} is failing; calls to it are paused for {seconds}s.",
            headers={"Retry-After": str(seconds)},
        )


class FailedStatus(Exception):
    """A response that counts as a failure (408, 429, 5xx); internal to the retry loop."""

    def __init__(self, response: httpx.Response, retry_after_s: float | None) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    """No time is left in the request's deadline for another attempt."""


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds from now, in either form (RFC 9110): delay-seconds or an HTTP-date."""
    if value is None:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class RetryBudget:
    """A token bucket that keeps retries to about `ratio` of requests, so that a failing upstream
    sees at most (1 + ratio) times its normal load instead of `attempts` times (a retry storm)."""

    def __init__(self, ratio: float, reserve: float = RETRY_BUDGET_RESERVE) -> None:
        self.ratio = ratio
        self.capacity = reserve
        self.tokens = reserve

    def deposit(self) -> None:
        self.tokens = min(self.capacity, self.tokens + self.ratio)

    def withdraw(self) -> bool:
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class _StateChanges(pybreaker.CircuitBreakerListener):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

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
        self.metrics.breaker_state.labels(cb.name).set(BREAKER_STATES[new_state.name])


class Breaker:
    """pybreaker's state machine, storage and listeners, driven correctly from asyncio.

    pybreaker's decorator does not await coroutines and its async path needs Tornado; its
    `calling()` context manager records every exit as a success or a failure, which would count a
    cancelled call one way or the other. So this adapter asks the breaker to admit a call before it
    starts and reports the outcome after it ends, and a cancellation reports nothing. Half-open
    admits at most `half_open_probes` calls at once; the first probe's outcome closes or reopens it.
    """

    def __init__(
        self,
        name: str,
        *,
        fail_max: int,
        reset_timeout_s: float,
        half_open_probes: int,
        listeners: list[pybreaker.CircuitBreakerListener],
        storage: pybreaker.CircuitBreakerStorage | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
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
        self.half_open_probes = half_open_probes
        self._probes = 0

    @property
    def name(self) -> str:
        return str(self.breaker.name)

    @property
    def state(self) -> str:
        return str(self.breaker.current_state)

    def open_for(self) -> float:
        """Seconds until an open circuit lets a probe through."""
        opened_at = self.storage.opened_at
        if opened_at is None:
            return 0.0
        elapsed = (self.clock() - opened_at).total_seconds()
        return max(0.0, self.breaker.reset_timeout - elapsed)

    def admit(self) -> bool:
        """Admit a call or raise `CircuitOpen`; True when the call is a half-open probe."""
        if self.state == pybreaker.STATE_OPEN:
            left = self.open_for()
            if left > 0:
                raise CircuitOpen(self.name, left)
            self.breaker.half_open()
        if self.state == pybreaker.STATE_HALF_OPEN:
            if self._probes >= self.half_open_probes:
                raise CircuitOpen(self.name, 1.0)
            self._probes += 1
            return True
        return False

    def succeeded(self, probe: bool) -> None:
        if probe:
            self._probes -= 1
            if self.state == pybreaker.STATE_HALF_OPEN:
                self.breaker.close()
        self.storage.reset_counter()

    def failed(self, probe: bool) -> None:
        if probe:
            self._probes -= 1
            if self.state == pybreaker.STATE_HALF_OPEN:
                self._open()
            return
        self.storage.increment_counter()
        if self.state == pybreaker.STATE_CLOSED and self.storage.counter >= self.breaker.fail_max:
            self._open()

    def _open(self) -> None:
        self.breaker.open()
        self.storage.opened_at = self.clock()  # on this breaker's clock (tests use a fake one)

    def abandoned(self, probe: bool) -> None:
        """The call says nothing of the upstream's health (cancelled, or cut short by our own
        deadline or pool): free its probe slot, record no outcome."""
        if probe:
            self._probes -= 1


class Upstream:
    """One service this service calls: its base URL, breaker, retry budget and policy."""

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        client: httpx.AsyncClient,
        settings: Settings,
        metrics: Metrics,
        tracer: trace.Tracer,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.tracer = tracer
        self.sleep = sleep
        self.budget = RetryBudget(settings.http_retry_budget_ratio)
        self.breaker = Breaker(
            name,
            fail_max=settings.breaker_fail_max,
            reset_timeout_s=settings.breaker_reset_timeout_s,
            half_open_probes=settings.breaker_half_open_probes,
            listeners=[_StateChanges(metrics)],
            clock=clock,
        )
        metrics.breaker_state.labels(name).set(0)
        self._jitter = wait_random_exponential(
            multiplier=settings.http_retry_backoff_s, max=settings.http_retry_max_wait_s
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Call the upstream; a 2xx-4xx response is returned, anything else raises a ServiceError."""
        method = method.upper()
        headers = dict(headers or {})
        idempotent = method in IDEMPOTENT_METHODS or any(k.lower() == "idempotency-key" for k in headers)
        url = f"{self.base_url}{path}"
        self.budget.deposit()
        retrying = AsyncRetrying(
            stop=stop_any(stop_after_attempt(self.settings.http_retry_attempts), _StopWhen(self._must_stop)),
            wait=self._wait,
            retry=retry_if_exception(_transient if idempotent else _never),
            before_sleep=self._log_retry,
            sleep=self.sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(method, url, headers=headers, json=json, params=params)
        except CircuitOpen:
            self.metrics.upstream_calls.labels(self.name, "circuit_open").inc()
            raise
        except FailedStatus as exc:
            self.metrics.upstream_calls.labels(self.name, "failed").inc()
            retry_after = exc.retry_after_s
            headers = {"Retry-After": str(math.ceil(retry_after))} if retry_after is not None else None
            raise UpstreamUnavailable(
                f"{self.name} answered {exc.response.status_code}.", headers=headers
            ) from exc
        except httpx.PoolTimeout as exc:
            self.metrics.upstream_calls.labels(self.name, "pool_timeout").inc()
            raise UpstreamUnavailable(f"Too many calls to {self.name} in flight; retry shortly.") from exc
        except (DeadlineExceeded, TimeoutError, httpx.TimeoutException) as exc:
            self.metrics.upstream_calls.labels(self.name, "timeout").inc()
            raise UpstreamTimeout(f"{self.name} did not answer in time.") from exc
        except httpx.TransportError as exc:
            self.metrics.upstream_calls.labels(self.name, "unreachable").inc()
            raise UpstreamUnavailable(f"{self.name} is unreachable.") from exc
        raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover

    async def _attempt(
        self, method: str, url: str, *, headers: dict[str, str], json: Any, params: Mapping[str, str] | None
    ) -> httpx.Response:
        left = deadline.remaining(self.settings.request_timeout_s)
        if left <= 0:
            raise DeadlineExceeded
        probe = self.breaker.admit()
        # When the deadline, not the configured timeouts, bounds this attempt, a timeout says more
        # about our deadline than about the upstream: it must not count against the breaker.
        cut_short = left < max(self.settings.http_connect_timeout_s, self.settings.http_read_timeout_s)
        timeout = httpx.Timeout(
            connect=min(self.settings.http_connect_timeout_s, left),
            read=min(self.settings.http_read_timeout_s, left),
            write=min(self.settings.http_read_timeout_s, left),
            pool=min(self.settings.http_connect_timeout_s, left),
        )
        started = time.perf_counter()
        with self.tracer.start_as_current_span(
            method,
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": method, "url.full": url, "peer.service": self.name},
            record_exception=False,
        ) as span:
            try:
                # The read timeout bounds each read; this bounds the whole attempt by the deadline.
                async with asyncio.timeout(left):
                    response = await self.client.request(
                        method, url, headers=headers, json=json, params=params, timeout=timeout
                    )
            except asyncio.CancelledError:
                self.breaker.abandoned(probe)
                raise
            except httpx.PoolTimeout:
                # Our own connection pool is full: nothing was sent, the upstream is not at fault.
                self.breaker.abandoned(probe)
                self._observe(started, "pool_timeout")
                raise
            except (TimeoutError, httpx.TimeoutException) as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                self._observe(started, "timeout")
                if cut_short:
                    self.breaker.abandoned(probe)
                    raise DeadlineExceeded from exc
                self.breaker.failed(probe)
                raise
            except Exception as exc:
                self.breaker.failed(probe)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                self._observe(started, "error")
                raise
            status = response.status_code
            span.set_attribute("http.response.status_code", status)
            if status in FAILURE_STATUSES or status >= 500:
                self.breaker.failed(probe)
                span.set_status(Status(StatusCode.ERROR, str(status)))
                self._observe(started, str(status))
                raise FailedStatus(response, parse_retry_after(response.headers.get("retry-after")))
            self.breaker.succeeded(probe)
            self._observe(started, str(status))
            self.metrics.upstream_calls.labels(self.name, "ok").inc()
            return response

    def _observe(self, started: float, outcome: str) -> None:
        self.metrics.upstream_latency.labels(self.name, outcome).observe(time.perf_counter() - started)

    def _wait(self, state: RetryCallState) -> float:
        """Full jitter, or the upstream's Retry-After (a longer one stops the retries instead:
        `_must_stop`); capped at HTTP_RETRY_MAX_WAIT_S."""
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, FailedStatus) and error.retry_after_s is not None:
            return min(error.retry_after_s, self.settings.http_retry_max_wait_s)
        return float(self._jitter(state))

    def _must_stop(self, state: RetryCallState) -> bool:
        """Stop retrying when the breaker is open, the upstream asks for a longer pause than the cap
        or the deadline allow, too little time would be left for an attempt, or the budget is spent
        (checked last, so a token is only spent on a retry that happens)."""
        error = state.outcome.exception() if state.outcome else None
        left = deadline.remaining(self.settings.request_timeout_s)
        if self.breaker.state == pybreaker.STATE_OPEN:
            return self._deny("circuit_open")
        asked = error.retry_after_s if isinstance(error, FailedStatus) else None
        if asked is not None and asked > min(self.settings.http_retry_max_wait_s, left):
            return self._deny("retry_after")
        if left - state.upcoming_sleep < self.settings.http_connect_timeout_s:
            return self._deny("deadline")
        if not self.budget.withdraw():
            return self._deny("budget")
        return False

    def _deny(self, why: str) -> bool:
        self.metrics.upstream_retries_denied.labels(self.name, why).inc()
        log.info("upstream_retry_denied", upstream=self.name, why=why)
        return True

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        reason = str(error) if isinstance(error, FailedStatus) else type(error).__name__
        self.metrics.upstream_retries.labels(self.name).inc()
        log.warning(
            "upstream_retry",
            upstream=self.name,
            attempt=state.attempt_number,
            wait_s=round(state.upcoming_sleep, 3),
            reason=reason,
        )


class _StopWhen(stop_base):
    """A plain predicate as a tenacity stop condition (what `stop_any` is typed to take)."""

    def __init__(self, predicate: Callable[[RetryCallState], bool]) -> None:
        self.predicate = predicate

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.predicate(retry_state)


def _transient(error: BaseException) -> bool:
    if isinstance(error, FailedStatus):
        return error.response.status_code in RETRY_STATUSES
    # A full pool of our own is not the upstream's trouble: retrying would only queue more calls.
    return isinstance(error, httpx.TransportError | TimeoutError) and not isinstance(error, httpx.PoolTimeout)


def _never(_: BaseException) -> bool:
    return False


class Upstreams:
    """The upstreams of this process, one breaker and budget each, made on first use."""

    def __init__(
        self, client: httpx.AsyncClient, *, settings: Settings, metrics: Metrics, tracer: trace.Tracer
    ) -> None:
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.tracer = tracer
        self._by_name: dict[str, Upstream] = {}

    def get(self, name: str, base_url: str) -> Upstream:
        upstream = self._by_name.get(name)
        if upstream is None:
            upstream = Upstream(
                name,
                base_url,
                client=self.client,
                settings=self.settings,
                metrics=self.metrics,
                tracer=self.tracer,
            )
            self._by_name[name] = upstream
        return upstream
