"""The worker: claims due jobs, runs each in a span continuing its enqueuer's trace, finishes it.

One loop per process: it enqueues the periodic jobs that are due, claims up to
`WORKER_CONCURRENCY` jobs (less what is running) and runs each as a task, under a deadline of
`JOB_TIMEOUT_S` that outbound calls (`platform.resilience`) size their timeouts to. A full claim
loops again at once; otherwise it waits `WORKER_POLL_INTERVAL_S` or until a job finishes.

On SIGTERM it claims nothing more and gives the running jobs `GRACEFUL_TIMEOUT_S` to finish; those
still running are cancelled and handed back (ready at once, the attempt not counted). A worker
killed outright leaves its jobs claimed until their lease (`JOB_LEASE_S`, longer than
`JOB_TIMEOUT_S`) runs out; then another worker runs them again. So a handler may run twice for one
job: handlers are idempotent (the example passes the order id as `Idempotency-Key`).

Liveness: the worker answers `GET /health` on `PORT` with 200 while its loop has gone round in the
last `max(30 s, 5 x WORKER_POLL_INTERVAL_S)` (a failed poll, such as a database outage, still counts
as a round: restarting the pod would not bring the database back), 503 when the loop is stuck. It
has no readiness: nothing routes traffic to it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.trace import Status
from opentelemetry.trace import StatusCode
from sqlalchemy.ext.asyncio import AsyncEngine

from {{ cookiecutter.package_name }}.db.session import create_engine
from {{ cookiecutter.package_name }}.platform import deadline
from {{ cookiecutter.package_name }}.platform import http
from {{ cookiecutter.package_name }}.platform import tracing
from {{ cookiecutter.package_name }}.platform.jobs import queue
from {{ cookiecutter.package_name }}.platform.jobs import schedule
from {{ cookiecutter.package_name }}.platform.jobs.schedule import Schedule
from {{ cookiecutter.package_name }}.platform.metrics import Metrics
from {{ cookiecutter.package_name }}.platform.resilience import Upstreams
from {{ cookiecutter.package_name }}.settings import Settings

log = structlog.get_logger(__name__)

# How often the queue's gauges are refreshed and due schedules looked for, at most.
DEPTH_EVERY_S = 5.0
SCHEDULES_EVERY_S = 1.0


@dataclass(frozen=True)
class JobContext:
    """What a handler gets besides its payload: the worker's resources, and which run this is."""

    settings: Settings
    engine: AsyncEngine
    upstreams: Upstreams
    job_id: int
    attempt: int


Handler = Callable[[JobContext, Mapping[str, Any]], Awaitable[None]]


class UnknownJob(Exception):
    """No handler is registered for the job's kind (a newer release enqueued it, or a typo)."""


class Worker:
    def __init__(
        self,
        *,
        settings: Settings,
        engine: AsyncEngine,
        upstreams: Upstreams,
        metrics: Metrics,
        tracer: trace.Tracer,
        handlers: Mapping[str, Handler],
        schedules: list[Schedule],
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.upstreams = upstreams
        self.metrics = metrics
        self.tracer = tracer
        self.handlers = dict(handlers)
        self.schedules = schedules
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.last_round = time.monotonic()
        self._wake = asyncio.Event()
        self._running: dict[asyncio.Task[None], queue.Claimed] = {}

    def stale_after_s(self) -> float:
        return max(30.0, 5 * self.settings.worker_poll_interval_s)

    async def run(self, stop: asyncio.Event) -> None:
        """Run jobs until `stop` is set, then drain (see the module's docstring)."""
        settings = self.settings
        await schedule.register(self.engine, self.schedules)
        next_depth = next_schedules = 0.0
        while not stop.is_set():
            now = self.last_round = time.monotonic()
            free = settings.worker_concurrency - len(self._running)
            claimed: list[queue.Claimed] = []
            try:
                if now >= next_schedules:
                    next_schedules = now + SCHEDULES_EVERY_S
                    for name in await schedule.enqueue_due(self.engine, self.schedules):
                        log.info("job_scheduled", kind=name)
                if free > 0:
                    claimed = await queue.claim(
                        self.engine, worker=self.name, limit=free, lease_s=settings.job_lease_s
                    )
                if now >= next_depth:
                    next_depth = now + DEPTH_EVERY_S
                    await self.observe_depth()
            except Exception:  # the database may be down: said, and tried again next round
                log.warning("worker_poll_failed", exc_info=True)
            for job in claimed:
                task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
                self._running[task] = job
                task.add_done_callback(self._finished)
            if free > 0 and len(claimed) == free:
                continue  # a full claim: more may be waiting
            self._wake.clear()
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait(
                    [stopping, asyncio.ensure_future(self._wake.wait())],
                    timeout=settings.worker_poll_interval_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                stopping.cancel()
                self._wake.set()  # ends the other waiter
        await self._drain()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._wake.set()

    async def _drain(self) -> None:
        running = set(self._running)
        log.info("worker_draining", running=len(running), grace_s=self.settings.graceful_timeout_s)
        if not running:
            return
        _, pending = await asyncio.wait(running, timeout=self.settings.graceful_timeout_s)
        for task in pending:
            task.cancel()  # `_run` hands its job back
        await asyncio.gather(*pending, return_exceptions=True)

    async def observe_depth(self) -> None:
        depth = await queue.depth(self.engine)
        for state in ("ready", "waiting", "running", "dead"):
            self.metrics.job_queue_depth.labels(state).set(getattr(depth, state))
        self.metrics.job_oldest_ready_age.set(depth.oldest_ready_age_s)

    async def _run(self, job: queue.Claimed) -> None:
        parent = propagate.extract({"traceparent": job.traceparent} if job.traceparent else {})
        span = self.tracer.start_span(
            f"job {job.kind}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "postgresql",
                "messaging.operation.type": "process",
                "job.id": job.id,
                "job.kind": job.kind,
                "job.attempt": job.attempts,
            },
        )
        if not span.get_span_context().is_valid:
            span = tracing.unrecorded_span(parent)  # tracing is off: logs still carry the enqueuer's trace id
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            with structlog.contextvars.bound_contextvars(job_id=job.id, kind=job.kind, attempt=job.attempts):
                await self._run_traced(job, span)
        except asyncio.CancelledError:
            raise
        except Exception:  # finishing failed (the database): the lease expires and it runs again
            log.error("job_finish_failed", exc_info=True)
        finally:
            span.end()
            otel_context.detach(token)

    async def _run_traced(self, job: queue.Claimed, span: trace.Span) -> None:
        settings = self.settings
        if await queue.dead_as_claimed(
            self.engine, job, worker=self.name, max_attempts=settings.job_max_attempts
        ):
            self._count(job, "dead")
            log.error("job_dead", error="lease expired on every attempt")
            return
        started = time.perf_counter()
        try:
            handler = self.handlers.get(job.kind)
            if handler is None:
                raise UnknownJob(f"no handler for {job.kind!r} in this worker")
            context = JobContext(settings, self.engine, self.upstreams, job.id, job.attempts)
            with deadline.scope(settings.job_timeout_s):
                async with asyncio.timeout(settings.job_timeout_s):
                    await handler(context, job.payload)
        except asyncio.CancelledError:
            await queue.handed_back(self.engine, job, worker=self.name)
            self._count(job, "handed_back")
            log.warning("job_handed_back")
            raise
        except Exception as exc:
            error = (
                f"timed out after {settings.job_timeout_s}s"
                if isinstance(exc, TimeoutError)
                else (f"{type(exc).__name__}: {exc}")
            )
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            delay_s = queue.backoff_s(
                job.attempts, base_s=settings.job_backoff_s, max_s=settings.job_backoff_max_s
            )
            outcome = await queue.failed(
                self.engine,
                job,
                worker=self.name,
                error=error,
                max_attempts=settings.job_max_attempts,
                delay_s=delay_s,
            )
            self._count(job, outcome)
            if outcome == "dead":
                log.error("job_dead", error=error)
            else:
                log.warning("job_failed", error=error, outcome=outcome, retry_in_s=round(delay_s, 3))
            return
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        if await queue.succeeded(self.engine, job, worker=self.name):
            self._count(job, "succeeded")
            log.info("job_succeeded", duration_ms=duration_ms)
        else:  # its lease ran out while it ran: another worker may run it again
            self._count(job, "lost")
            log.warning("job_lost", duration_ms=duration_ms)

    def _count(self, job: queue.Claimed, outcome: str) -> None:
        self.metrics.job_runs.labels(job.kind, outcome).inc()

    async def answer_health(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """`GET /health` (any path): 200 while the loop turns, 503 when it is stuck."""
        try:
            async with asyncio.timeout(2):
                while (await reader.readline()).strip():
                    pass  # the request line and headers; nothing in them matters
            alive = time.monotonic() - self.last_round < self.stale_after_s()
            body = b'{"status":"ok"}' if alive else b'{"status":"stuck"}'
            status = b"200 OK" if alive else b"503 Service Unavailable"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


async def serve(settings: Settings, *, handlers: Mapping[str, Handler], schedules: list[Schedule]) -> None:
    """`python -m <package> worker`: run jobs as DATABASE_URL's role until SIGTERM or SIGINT."""
    url = settings.database_async_url()
    if url is None:
        raise RuntimeError("DATABASE_URL is not set")
    tracer_provider = tracing.build_tracer_provider(settings)
    tracer = tracing.get_tracer(tracer_provider)
    metrics = Metrics()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with AsyncExitStack() as resources:
        if tracer_provider is not None:
            resources.push_async_callback(asyncio.to_thread, tracer_provider.shutdown)
        engine = create_engine(settings, url)
        resources.push_async_callback(engine.dispose)
        tracing.instrument_engine(engine, tracer)
        metrics.watch_pool(engine)
        client = http.create_client(settings)
        resources.push_async_callback(client.aclose)
        upstreams = Upstreams(client, settings=settings, metrics=metrics, tracer=tracer)
        metrics_server = metrics.serve(settings.host, settings.metrics_port)
        resources.push_async_callback(asyncio.to_thread, metrics_server.close)
        worker = Worker(
            settings=settings,
            engine=engine,
            upstreams=upstreams,
            metrics=metrics,
            tracer=tracer,
            handlers=handlers,
            schedules=schedules,
        )
        health = await asyncio.start_server(worker.answer_health, settings.host, settings.port)
        resources.push_async_callback(health.wait_closed)
        resources.callback(health.close)
        log.info(
            "worker_started",
            worker=worker.name,
            kinds=sorted(handlers),
            schedules=[s.name for s in schedules],
            health=f"http://{settings.host}:{settings.port}/health",
            metrics=f"http://{settings.host}:{metrics_server.port}/metrics",
        )
        await worker.run(stop)
    log.info("worker_stopped", worker=worker.name)
