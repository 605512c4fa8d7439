"""Prometheus metrics, served at `GET /metrics` on a port of their own (`METRICS_PORT`, default 9090).

Standard: Observability / Metrics. Request count and latency by method, route template and status
(recorded by `middleware.RequestContextMiddleware`), and requests shed for load (`shedding`); outbound
calls, retries and circuit breaker state per upstream (recorded by `resilience`); idempotency
outcomes (`idempotency`); rate limit refusals and store errors (`ratelimit`); job runs and the
queue's depth (`jobs`, set by the worker); transient
database errors answered 503, by SQLSTATE (`errors`); database pool gauges read at scrape time, with
how long each checkout waited for a connection and how many gave up (`DB_POOL_TIMEOUT_S`); how late
the event loop runs (`looplag`, `LOOP_LAG_WARN_S`); and the process itself: CPU seconds, resident
memory, open file descriptors, start time, garbage collections (prometheus-client's collectors).
Each app has its own registry, so two apps in one process (tests) never share counters.

A latency observation carries the request's `trace_id` as an OpenMetrics exemplar when its span is
recorded and sampled (exported: `OTEL_EXPORTER_OTLP_ENDPOINT`), so a slow bucket on a dashboard
links to a trace that shows why; the scraper sees it when it
asks for `application/openmetrics-text` (Prometheus does, with exemplar storage on), and the classic
text format leaves it out. No `_created` series: they would double the number of series for a value
no query here uses.

The metrics port is not the serving port: the Kubernetes Service exposes only the API, so what the
service counts (routes, upstreams, error rates) is not public. It is served by prometheus-client's
own threaded server, off the event loop: a scrape never waits behind requests, and the library
negotiates the OpenMetrics format and gzip with the scraper.
Metric names follow Prometheus conventions; the runbook and the alert rules use them as written here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import GCCollector
from prometheus_client import Histogram
from prometheus_client import PlatformCollector
from prometheus_client import ProcessCollector
from prometheus_client import disable_created_metrics
from prometheus_client import start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.pool import QueuePool

# Seconds. The SLO's threshold (p99 {{ cookiecutter.slo_latency_p99_ms }} ms) is a boundary itself,
# so "above the SLO" is counted exactly rather than interpolated between two buckets.
SLO_LATENCY_S = {{ (cookiecutter.slo_latency_p99_ms | float / 1000) | round(6) }}
LATENCY_BUCKETS = tuple(
    sorted({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, SLO_LATENCY_S})
)
# Seconds. A checkout that waits at all is news; one that waits past DB_POOL_TIMEOUT_S gives up.
POOL_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Seconds. A healthy loop runs a timer within a millisecond or two; 100 ms is a request's budget gone.
LOOP_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        # Process-wide in prometheus-client, and idempotent: every registry of this process agrees.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # the library leaves it unannotated
        self.registry = CollectorRegistry(auto_describe=True)
        # The process as the kernel and the interpreter see it (CPU, RSS, fds, GC): nothing on the
        # hot path, read at scrape time. The process collector reads /proc, so it is empty elsewhere.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.requests = Counter(
            "http_server_requests",
            "HTTP requests handled, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_server_request_duration_seconds",
            "Time from request start to the last byte of the response.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

        self.shed = Counter(
            "http_server_requests_shed",
            "Requests answered 503 at once because MAX_CONCURRENT_REQUESTS were in flight.",
            registry=self.registry,
        )
        self.upstream_calls = Counter(
            "upstream_calls",
            "Calls to an upstream, after retries, by outcome: ok, failed, timeout, unreachable, circuit_open, pool_timeout, too_large.",
            ["upstream", "outcome"],
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "upstream_attempt_duration_seconds",
            "Duration of each attempt of an outbound call, by status (or error).",
            ["upstream", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_retries = Counter(
            "upstream_retries",
            "Retries made, after a transient failure.",
            ["upstream"],
            registry=self.registry,
        )
        self.upstream_retries_denied = Counter(
            "upstream_retries_denied",
            "Retries not made, by why: circuit_open, retry_after, deadline, budget.",
            ["upstream", "why"],
            registry=self.registry,
        )
        self.idempotency = Counter(
            "idempotency_outcomes",
            "Requests with an Idempotency-Key, by outcome: stored, replay, conflict (in flight), mismatch.",
            ["outcome"],
            registry=self.registry,
        )
        self.database_transient_errors = Counter(
            "database_transient_errors",
            "Database errors a client may retry, answered 503, by SQLSTATE: 55P03 lock timeout, "
            "57014 statement timeout, 40P01 deadlock, 40001 serialization failure, 53300 too many "
            "connections, 57P03 not accepting connections, 57P01 connection terminated.",
            ["sqlstate"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "rate_limited_requests",
            "Requests refused 429 for their caller's rate limit, by route template.",
            ["route"],
            registry=self.registry,
        )
        self.rate_limit_store_errors = Counter(
            "rate_limit_store_errors",
            "Rate limit checks the shared store failed to answer; each request was admitted (fail open).",
            registry=self.registry,
        )
        self.ready = Gauge(
            "service_ready",
            "1 when the last /ready check passed, 0 when it failed (changes count readiness flaps).",
            registry=self.registry,
        )
        # Background jobs (platform/jobs/): set by the worker; every worker reports the same queue.
        self.job_runs = Counter(
            "job_runs",
            "Job runs by kind and outcome: succeeded, retry (failed, will run again), dead (failed its "
            "last attempt), handed_back (interrupted by a shutdown), lost (taken over after its lease).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.job_queue_depth = Gauge(
            "job_queue_depth",
            "Jobs in the queue by state: ready (due now), waiting (backing off), running, dead.",
            ["state"],
            registry=self.registry,
        )
        self.job_oldest_ready_age = Gauge(
            "job_oldest_ready_age_seconds",
            "How long the oldest due job has waited to be run (0 when none is due).",
            registry=self.registry,
        )
        # Read-through caches (platform/cache.py), by cache name.
        self.cache_lookups = Counter(
            "cache_lookups",
            "Cache lookups by cache and result: hit, miss (loaded), coalesced (waited for another's "
            "load), stale (served past its TTL because the load failed).",
            ["cache", "result"],
            registry=self.registry,
        )
        self.pool_checkout_wait = Histogram(
            "db_pool_checkout_wait_seconds",
            "Time a checkout waited for a pooled connection (a new one's connect included); the "
            "ones that gave up after DB_POOL_TIMEOUT_S are db_pool_timeouts_total.",
            buckets=POOL_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.pool_timeouts = Counter(
            "db_pool_timeouts",
            "Checkouts that gave up after DB_POOL_TIMEOUT_S: every connection was in use (answered 503).",
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "event_loop_lag_seconds",
            "How late the event loop ran a timer it had scheduled (looplag): the time every request "
            "in flight waited behind a callback that did not yield.",
            buckets=LOOP_LAG_BUCKETS,
            registry=self.registry,
        )
        # Circuit breakers report the state a call arriving now would meet, read at scrape time
        # (platform/resilience/breaker.py): an open circuit whose break is over reads half-open
        # even when no call has come to move it.
        self._breakers: dict[str, Callable[[], int]] = {}
        self.registry.register(_BreakerCollector(self._breakers))

    def observe(
        self, method: str, route: str, status: int, seconds: float, trace_id: str | None = None
    ) -> None:
        # The labelled children, cached: `labels()` costs a lock and a tuple of strings per call,
        # and this runs on every request. Routes are templates, so the cache stays small.
        children = self._children.get((method, route, status))
        if children is None:
            labels = (method, route, str(status))
            children = self._children[(method, route, status)] = (
                self.requests.labels(*labels),
                self.latency.labels(*labels),
            )
        children[0].inc()
        # The exemplar replaces the bucket's previous one: each bucket shows its latest exported trace.
        children[1].observe(seconds, {"trace_id": trace_id} if trace_id else None)

    def watch_breaker(self, upstream: str, state: Callable[[], int]) -> None:
        """Report `state()` (0 closed, 1 half-open, 2 open) as circuit_breaker_state{upstream}."""
        self._breakers[upstream] = state

    def watch_pool(self, engine: AsyncEngine) -> None:
        """Export the pool's gauges, and time each checkout: wrapping the pool's public `connect`
        (every session, the idempotency store and the rate limiter take connections through it)
        costs one clock read per checkout, and needs no hook in `db/`. The pool is replaced only by
        `engine.dispose()`, which the lifespan calls once, at shutdown."""
        self.registry.register(_PoolCollector(engine))
        pool = engine.sync_engine.pool
        connect = pool.connect
        wait, timeouts = self.pool_checkout_wait, self.pool_timeouts

        def timed_connect() -> PoolProxiedConnection:
            started = time.perf_counter()
            try:
                connection = connect()
            except PoolTimeoutError:
                timeouts.inc()
                raise
            finally:
                wait.observe(time.perf_counter() - started)
            return connection

        pool.connect = timed_connect  # type: ignore[method-assign]

    def serve(self, host: str, port: int) -> MetricsServer:
        """Start serving this registry on `host`:`port` (0: any free port) in a daemon thread."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsServer(server, thread)


class MetricsServer:
    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.port: int = server.server_port

    def close(self) -> None:
        """Stop serving and release the port (blocks up to half a second: call it off the loop)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _PoolCollector(Collector):
    """Connection pool state, read when Prometheus scrapes (no bookkeeping on the hot path)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._pool = engine.sync_engine.pool

    def collect(self) -> Iterator[Metric]:
        pool = self._pool
        if not isinstance(pool, QueuePool):
            return
        gauges = {
            "db_pool_size": ("Configured number of pooled connections.", pool.size()),
            "db_pool_checked_out": ("Connections in use by requests.", pool.checkedout()),
            "db_pool_checked_in": ("Idle connections in the pool.", pool.checkedin()),
            "db_pool_overflow": ("Connections open beyond the pool size.", max(pool.overflow(), 0)),
            "db_pool_max_connections": (
                "The most connections this process may open: DB_POOL_SIZE + DB_MAX_OVERFLOW.",
                pool.size() + max(pool._max_overflow, 0),
            ),
        }
        for name, (documentation, value) in gauges.items():
            yield GaugeMetricFamily(name, documentation, value=value)


class _BreakerCollector(Collector):
    def __init__(self, breakers: dict[str, Callable[[], int]]) -> None:
        self._breakers = breakers

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "circuit_breaker_state",
            "Circuit breaker state per upstream: 0 closed, 1 half-open (a call now would be a trial), 2 open.",
            labels=["upstream"],
        )
        for upstream, state in list(self._breakers.items()):
            family.add_metric([upstream], state())
        yield family
