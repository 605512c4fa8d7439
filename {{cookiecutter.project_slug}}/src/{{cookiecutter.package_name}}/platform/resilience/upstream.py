"""`Upstream`: one service this service calls, with its breaker, retry budget and policy.

`Upstream.request` makes one call, in this order:

1. The upstream's circuit breaker admits it, or it fails at once, with no network I/O, as
   `CircuitOpen` (503, `Retry-After` = the time the circuit stays open).
2. The attempt runs in a CLIENT span, bounded as a whole by `HTTP_ATTEMPT_TIMEOUT_S` cut to what is
   left of the request's deadline; inside it, `HTTP_CONNECT_TIMEOUT_S` bounds the connect and
   `HTTP_READ_TIMEOUT_S` each socket read (an upstream trickling a byte a second never trips a read
   timeout: the attempt timeout is what ends it). The answer is read up to
   `HTTP_MAX_RESPONSE_BYTES`; past it, reading stops and the call fails (502, not retried).
3. 2xx to 4xx go back to the caller (a 404 is an answer, not a fault). 408, 429, 5xx, timeouts and
   connection errors are failures: the breaker counts them.
4. A failure is retried (tenacity; full-jitter exponential backoff, or the upstream's `Retry-After`
   when it is within the cap) when the method is idempotent or the request carries an
   `Idempotency-Key`, attempts remain, the breaker is not open, the deadline still holds a whole
   attempt timeout after the wait, and the retry budget has a token.
5. Otherwise the caller gets `UpstreamTimeout` (504) or `UpstreamUnavailable` (503).

`asyncio.CancelledError` is never counted: it is neither a success nor a failure. Neither is a
timeout that our own deadline caused, nor a full connection pool of our own, nor an answer too
large: the breaker counts only what says something of the upstream's health.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Mapping
from datetime import UTC
from datetime import datetime
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

from {{ cookiecutter.package_name }}.platform import deadline
from {{ cookiecutter.package_name }}.platform.metrics import Metrics
from {{ cookiecutter.package_name }}.platform.resilience import bounded
from {{ cookiecutter.package_name }}.platform.resilience.breaker import Breaker
from {{ cookiecutter.package_name }}.platform.resilience.breaker import StateChanges
from {{ cookiecutter.package_name }}.platform.resilience.budget import RetryBudget
from {{ cookiecutter.package_name }}.platform.resilience.errors import CircuitOpen
from {{ cookiecutter.package_name }}.platform.resilience.errors import UpstreamResponseTooLarge
from {{ cookiecutter.package_name }}.platform.resilience.errors import UpstreamTimeout
from {{ cookiecutter.package_name }}.platform.resilience.errors import UpstreamUnavailable
from {{ cookiecutter.package_name }}.platform.resilience.retry import FAILURE_STATUSES
from {{ cookiecutter.package_name }}.platform.resilience.retry import IDEMPOTENT_METHODS
from {{ cookiecutter.package_name }}.platform.resilience.retry import DeadlineExceeded
from {{ cookiecutter.package_name }}.platform.resilience.retry import FailedStatus
from {{ cookiecutter.package_name }}.platform.resilience.retry import ResponseTooLarge
from {{ cookiecutter.package_name }}.platform.resilience.retry import StopWhen
from {{ cookiecutter.package_name }}.platform.resilience.retry import never
from {{ cookiecutter.package_name }}.platform.resilience.retry import parse_retry_after
from {{ cookiecutter.package_name }}.platform.resilience.retry import transient
from {{ cookiecutter.package_name }}.settings import Settings

log = structlog.get_logger(__name__)


class Upstream:
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
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.tracer = tracer
        self.sleep = sleep
        # The wall clock an HTTP-date Retry-After is read against (`clock` is the breakers' monotonic one).
        self.now = now
        self.budget = RetryBudget(settings.http_retry_budget_ratio)
        self.breaker = Breaker(
            name,
            failure_ratio=settings.breaker_failure_ratio,
            min_throughput=settings.breaker_min_throughput,
            sampling_s=settings.breaker_sampling_s,
            fail_max=settings.breaker_fail_max,
            reset_timeout_s=settings.breaker_reset_timeout_s,
            half_open_probes=settings.breaker_half_open_probes,
            slow_call_ratio=settings.breaker_slow_call_ratio,
            slow_call_s=settings.breaker_slow_call_s,
            listeners=[StateChanges()],
            clock=clock,
        )
        metrics.watch_breaker(name, self.breaker.reported_state)
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
            stop=stop_any(stop_after_attempt(self.settings.http_retry_attempts), StopWhen(self._must_stop)),
            wait=self._wait,
            retry=retry_if_exception(transient if idempotent else never),
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
        except ResponseTooLarge as exc:
            self.metrics.upstream_calls.labels(self.name, "too_large").inc()
            raise UpstreamResponseTooLarge(f"{self.name} answered with more than we accept.") from exc
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
        settings = self.settings
        left = deadline.remaining(settings.request_timeout_s)
        if left <= 0:
            raise DeadlineExceeded
        probe = self.breaker.admit()
        # When the deadline, not the attempt timeout, bounds this attempt, a timeout says more
        # about our deadline than about the upstream: it must not count against the breaker.
        cut_short = left < settings.http_attempt_timeout_s
        limit = min(settings.http_attempt_timeout_s, left)
        timeout = httpx.Timeout(
            connect=min(settings.http_connect_timeout_s, limit),
            read=min(settings.http_read_timeout_s, limit),
            write=min(settings.http_read_timeout_s, limit),
            pool=min(settings.http_connect_timeout_s, limit),
        )
        started = time.perf_counter()
        with self.tracer.start_as_current_span(
            method,
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": method, "url.full": url, "peer.service": self.name},
            record_exception=False,
        ) as span:
            try:
                async with asyncio.timeout(limit):
                    response = await bounded.fetch(
                        self.client,
                        method,
                        url,
                        limit=settings.http_max_response_bytes,
                        headers=headers,
                        json=json,
                        params=params,
                        timeouts=timeout,
                    )
            except asyncio.CancelledError:
                self.breaker.abandoned(probe)
                raise
            except (httpx.PoolTimeout, ResponseTooLarge) as exc:
                # Our own pool is full (nothing was sent), or the answer is too large (it would be
                # as large again): neither says the upstream is unhealthy.
                self.breaker.abandoned(probe)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                self._observe(started, "too_large" if isinstance(exc, ResponseTooLarge) else "pool_timeout")
                raise
            except (TimeoutError, httpx.TimeoutException) as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                self._observe(started, "timeout")
                if cut_short:
                    self.breaker.abandoned(probe)
                    raise DeadlineExceeded from exc
                self.breaker.failed(probe, time.perf_counter() - started)
                raise
            except Exception as exc:
                self.breaker.failed(probe, time.perf_counter() - started)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                self._observe(started, "error")
                raise
            status = response.status_code
            span.set_attribute("http.response.status_code", status)
            took = time.perf_counter() - started
            if status in FAILURE_STATUSES or status >= 500:
                self.breaker.failed(probe, took)
                span.set_status(Status(StatusCode.ERROR, str(status)))
                self._observe(started, str(status))
                retry_after = parse_retry_after(response.headers.get("retry-after"), now=self.now())
                raise FailedStatus(response, retry_after)
            self.breaker.succeeded(probe, took)
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
        or the deadline allow, the deadline could not hold a whole attempt after the wait, or the
        budget is spent (checked last, so a token is only spent on a retry that happens)."""
        error = state.outcome.exception() if state.outcome else None
        left = deadline.remaining(self.settings.request_timeout_s)
        if self.breaker.state == pybreaker.STATE_OPEN:
            return self._deny("circuit_open")
        asked = error.retry_after_s if isinstance(error, FailedStatus) else None
        if asked is not None and asked > min(self.settings.http_retry_max_wait_s, left):
            return self._deny("retry_after")
        if left - state.upcoming_sleep < self.settings.http_attempt_timeout_s:
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


class Upstreams:
    """The upstreams of this process, one breaker and budget each, made on first use."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        settings: Settings,
        metrics: Metrics,
        tracer: trace.Tracer,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.tracer = tracer
        # The breakers' clock: a test moves it past a reset timeout instead of waiting one out.
        self.clock = clock
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
                clock=self.clock,
            )
            self._by_name[name] = upstream
        return upstream
