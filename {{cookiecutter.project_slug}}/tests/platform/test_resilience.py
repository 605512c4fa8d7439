"""Outbound calls against a real, scripted upstream on 127.0.0.1: retries, deadline, breaker, budget.

Waits between retries go through an injected sleep that records them and returns at once, so the
suite measures decisions, not time. The breaker's reset timeout is real but short (0.2 s).
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from {{ cookiecutter.package_name }}.platform import deadline
from {{ cookiecutter.package_name }}.platform import http
from {{ cookiecutter.package_name }}.platform.metrics import Metrics
from {{ cookiecutter.package_name }}.platform.resilience import CircuitOpen
from {{ cookiecutter.package_name }}.platform.resilience import Upstream
from {{ cookiecutter.package_name }}.platform.resilience import UpstreamResponseTooLarge
from {{ cookiecutter.package_name }}.platform.resilience import UpstreamTimeout
from {{ cookiecutter.package_name }}.platform.resilience import UpstreamUnavailable
from {{ cookiecutter.package_name }}.platform.resilience import parse_retry_after
from {{ cookiecutter.package_name }}.settings import Settings

from tests.clock import Clock
from tests.upstream import Reply
from tests.upstream import ScriptedUpstream
from tests.upstream import closed_port

FAST = {
    "http_connect_timeout_s": 0.5,
    "http_read_timeout_s": 0.2,
    "http_attempt_timeout_s": 0.3,
    "http_retry_attempts": 3,
    "http_retry_backoff_s": 0.1,
    "http_retry_max_wait_s": 0.3,
    "breaker_fail_max": 5,
    "breaker_reset_timeout_s": 0.2,
    "request_timeout_s": 3.0,
}
OK = Reply(200, {"ok": True})
UNAVAILABLE = Reply(503)


class Sleeps:
    """Records the waits tenacity asks for; returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


MakeUpstream = Callable[..., Upstream]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with http.create_client(Settings(**FAST)) as client:  # type: ignore[arg-type]
        yield client


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_upstream(client: httpx.AsyncClient, sleeps: Sleeps, clock: Clock) -> MakeUpstream:
    def make(
        url: str, tracer: trace.Tracer | None = None, now: datetime | None = None, **overrides: Any
    ) -> Upstream:
        settings = Settings(**(FAST | overrides))  # type: ignore[arg-type]
        return Upstream(
            "inventory",
            url,
            client=client,
            settings=settings,
            metrics=Metrics(),
            tracer=tracer or trace.NoOpTracer(),
            sleep=sleeps,
            clock=clock,
            **({"now": lambda: now} if now is not None else {}),
        )

    return make


def attempts(upstream: Upstream) -> float:
    registry = upstream.metrics.registry
    return sum(
        sample.value
        for metric in registry.collect()
        if metric.name == "upstream_attempt_duration_seconds"
        for sample in metric.samples
        if sample.name.endswith("_count")
    )


async def test_a_transient_503_is_retried_once_and_succeeds(
    make_upstream: MakeUpstream, sleeps: Sleeps
) -> None:
    async with ScriptedUpstream().then(UNAVAILABLE, OK) as server:
        upstream = make_upstream(server.url)
        response = await upstream.request("GET", "/stock/a")
    assert response.status_code == 200
    assert len(server.received) == 2
    assert len(sleeps.waits) == 1
    assert (
        upstream.metrics.registry.get_sample_value("upstream_retries_total", {"upstream": "inventory"}) == 1
    )


async def test_a_hanging_upstream_gives_504_within_the_deadline(make_upstream: MakeUpstream) -> None:
    async with ScriptedUpstream(default=Reply(hang=True)) as server:
        upstream = make_upstream(
            server.url, http_read_timeout_s=5.0, http_attempt_timeout_s=5.0, request_timeout_s=5.0
        )
        started = time.monotonic()
        with deadline.scope(0.5), pytest.raises(UpstreamTimeout):
            await upstream.request("GET", "/stock/a")
        elapsed = time.monotonic() - started
    # The deadline, not the 5 s read timeout, ended it (loose: a loaded machine only adds to 0.5 s).
    assert elapsed < 0.5 + 1.5


async def test_read_timeouts_are_retried_for_idempotent_calls(make_upstream: MakeUpstream) -> None:
    async with ScriptedUpstream(default=Reply(hang=True)) as server:
        upstream = make_upstream(server.url)
        with pytest.raises(UpstreamTimeout):
            await upstream.request("GET", "/stock/a")
    assert len(server.received) == 3


async def test_a_closed_port_gives_503_after_at_most_the_configured_attempts(
    make_upstream: MakeUpstream,
) -> None:
    upstream = make_upstream(f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(UpstreamUnavailable) as raised:
        await upstream.request("GET", "/stock/a")
    assert raised.value.status == 503
    assert attempts(upstream) == 3


async def test_an_unsafe_call_is_retried_only_with_an_idempotency_key(make_upstream: MakeUpstream) -> None:
    async with ScriptedUpstream().then(UNAVAILABLE, UNAVAILABLE, OK) as server:
        upstream = make_upstream(server.url)
        with pytest.raises(UpstreamUnavailable):
            await upstream.request("POST", "/reservations", json={"sku": "a"})
        assert len(server.received) == 1
        response = await upstream.request(
            "POST", "/reservations", json={"sku": "a"}, headers={"Idempotency-Key": "k-1"}
        )
    assert response.status_code == 200
    assert len(server.received) == 3


async def test_the_breaker_opens_fails_fast_and_a_probe_closes_it(
    make_upstream: MakeUpstream, clock: Clock
) -> None:
    async with ScriptedUpstream(default=Reply(500)) as server:
        upstream = make_upstream(server.url, http_retry_attempts=1)
        for _ in range(5):
            with pytest.raises(UpstreamUnavailable):
                await upstream.request("GET", "/stock/a")
        assert upstream.breaker.state == "open"
        reached = len(server.received)

        tried = attempts(upstream)
        with pytest.raises(CircuitOpen) as raised:
            await upstream.request("GET", "/stock/a")
        # Fails fast: no attempt was made (no connection, no timeout to wait out), and so the
        # upstream never saw it. Counted, not timed: a wall-clock bound flakes on a loaded machine.
        assert attempts(upstream) == tried
        assert len(server.received) == reached
        assert raised.value.headers["Retry-After"] == "1"  # 0.2 s left, rounded up to whole seconds

        clock.advance(0.1)
        with pytest.raises(CircuitOpen):  # still open: the reset timeout has not passed
            await upstream.request("GET", "/stock/a")
        clock.advance(0.15)
        server.default = OK
        assert (await upstream.request("GET", "/stock/a")).status_code == 200
        assert upstream.breaker.state == "closed"
    gauge = upstream.metrics.registry.get_sample_value("circuit_breaker_state", {"upstream": "inventory"})
    assert gauge == 0


async def test_a_failed_probe_reopens_and_half_open_admits_a_bounded_number(
    make_upstream: MakeUpstream, clock: Clock
) -> None:
    async with ScriptedUpstream(default=Reply(500)) as server:
        upstream = make_upstream(server.url, http_retry_attempts=1, breaker_fail_max=1)
        with pytest.raises(UpstreamUnavailable):
            await upstream.request("GET", "/stock/a")
        clock.advance(0.25)

        gate = asyncio.Event()
        server.default = Reply(200, {"ok": True}, gate=gate)
        probe = asyncio.create_task(upstream.request("GET", "/stock/a"))
        await server.arrival(2)  # the probe is at the upstream, held there
        assert upstream.breaker.state == "half-open"
        with pytest.raises(CircuitOpen):  # one probe at a time
            await upstream.request("GET", "/stock/b")
        gate.set()
        assert (await probe).status_code == 200
        assert upstream.breaker.state == "closed"

        server.default = Reply(500)
        with pytest.raises(UpstreamUnavailable):
            await upstream.request("GET", "/stock/a")
        clock.advance(0.25)
        with pytest.raises(UpstreamUnavailable):
            await upstream.request("GET", "/stock/a")  # the probe fails
        assert upstream.breaker.state == "open"
        with pytest.raises(CircuitOpen):  # and the circuit is open for a full reset timeout again
            await upstream.request("GET", "/stock/a")


async def test_a_cancelled_call_does_not_count(make_upstream: MakeUpstream) -> None:
    async with ScriptedUpstream(default=Reply(hang=True)) as server:
        upstream = make_upstream(server.url, breaker_fail_max=1, http_read_timeout_s=5.0)
        for n in range(3):
            call = asyncio.create_task(upstream.request("GET", "/stock/a"))
            await server.arrival(n + 1)  # in flight: the upstream has it
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        assert upstream.breaker.state == "closed"
        assert upstream.breaker.storage.counter == 0


async def test_a_404_is_an_answer_not_a_failure(make_upstream: MakeUpstream) -> None:
    async with ScriptedUpstream(default=Reply(404, {"detail": "no such sku"})) as server:
        upstream = make_upstream(server.url, breaker_fail_max=1)
        for _ in range(3):
            assert (await upstream.request("GET", "/stock/a")).status_code == 404
    assert upstream.breaker.state == "closed"
    assert len(server.received) == 3  # and never retried


async def _waits_with_seed(make_upstream: MakeUpstream, sleeps: Sleeps, seed: int) -> list[float]:
    sleeps.waits.clear()
    random.seed(seed)
    async with ScriptedUpstream().then(UNAVAILABLE, UNAVAILABLE, OK) as server:
        await make_upstream(server.url).request("GET", "/stock/a")
    return list(sleeps.waits)


async def test_waits_are_random_and_bounded_by_the_cap(make_upstream: MakeUpstream, sleeps: Sleeps) -> None:
    first = await _waits_with_seed(make_upstream, sleeps, seed=7)
    again = await _waits_with_seed(make_upstream, sleeps, seed=7)
    other = await _waits_with_seed(make_upstream, sleeps, seed=8)
    assert first == again  # seeded: reproducible
    assert first != other  # but random
    assert len(first) == 2
    assert all(0 <= wait <= FAST["http_retry_max_wait_s"] for wait in first + other)


async def test_retry_after_is_honoured_in_both_forms_and_a_longer_one_is_passed_on(
    make_upstream: MakeUpstream, sleeps: Sleeps
) -> None:
    # The upstream's clock and ours agree to the second (an HTTP-date has whole seconds): read
    # against a fixed `now`, the wait is exact, however long the test takes to read it.
    now = datetime(2026, 1, 1, tzinfo=UTC)
    in_two_seconds = format_datetime(now + timedelta(seconds=2), usegmt=True)
    async with ScriptedUpstream().then(
        Reply(503, headers={"retry-after": "0"}),
        Reply(429, headers={"retry-after": in_two_seconds}),
        OK,
        Reply(503, headers={"retry-after": "120"}),
    ) as server:
        upstream = make_upstream(
            server.url, now=now, http_retry_max_wait_s=2.5, http_retry_attempts=3, request_timeout_s=6.0
        )
        await upstream.request("GET", "/stock/a")
        assert sleeps.waits == [0, 2.0]
        with pytest.raises(UpstreamUnavailable) as raised:
            await upstream.request("GET", "/stock/a")
    # 120 s is more than the cap: no early retry, and the caller learns when to come back.
    assert len(sleeps.waits) == 2
    assert len(server.received) == 4
    assert raised.value.headers["Retry-After"] == "120"


async def test_a_timeout_our_deadline_caused_does_not_count_against_the_upstream(
    make_upstream: MakeUpstream,
) -> None:
    async with ScriptedUpstream(default=Reply(200, {"ok": True}, delay_s=0.3)) as server:
        upstream = make_upstream(
            server.url, breaker_fail_max=1, http_read_timeout_s=1.0, http_attempt_timeout_s=1.0
        )
        for _ in range(3):
            with deadline.scope(0.05), pytest.raises(UpstreamTimeout):
                await upstream.request("GET", "/stock/a")
        assert upstream.breaker.state == "closed"
        # With its full budget, the same (healthy) upstream answers.
        assert (await upstream.request("GET", "/stock/a")).status_code == 200


async def test_a_cancelled_probe_frees_its_slot(make_upstream: MakeUpstream, clock: Clock) -> None:
    async with ScriptedUpstream(default=Reply(500)) as server:
        upstream = make_upstream(
            server.url, http_retry_attempts=1, breaker_fail_max=1, http_read_timeout_s=5.0
        )
        with pytest.raises(UpstreamUnavailable):
            await upstream.request("GET", "/stock/a")
        clock.advance(0.25)
        server.default = Reply(hang=True)
        probe = asyncio.create_task(upstream.request("GET", "/stock/a"))
        await server.arrival(2)  # the probe is at the upstream
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        server.default = OK
        assert (await upstream.request("GET", "/stock/a")).status_code == 200  # a new probe got in
        assert upstream.breaker.state == "closed"


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7", now=now) == 7
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now=now) == 30
    assert parse_retry_after("Wed, 31 Dec 2025 00:00:00 GMT", now=now) == 0  # in the past
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after("\xb2", now=now) is None  # a Unicode digit, not a delay
    assert parse_retry_after("1e3", now=now) is None
    assert parse_retry_after(None, now=now) is None


async def test_no_retry_would_end_past_the_deadline(make_upstream: MakeUpstream, sleeps: Sleeps) -> None:
    async with ScriptedUpstream().then(Reply(503, headers={"retry-after": "1"}), OK) as server:
        upstream = make_upstream(server.url, http_retry_max_wait_s=5.0, request_timeout_s=11.0)
        with deadline.scope(0.5), pytest.raises(UpstreamUnavailable):
            await upstream.request("GET", "/stock/a")
    assert len(server.received) == 1
    assert sleeps.waits == []


async def test_the_retry_budget_stops_a_retry_storm(make_upstream: MakeUpstream) -> None:
    requests = 100
    async with ScriptedUpstream(default=UNAVAILABLE) as server:
        upstream = make_upstream(server.url, breaker_fail_max=1000, breaker_min_throughput=100_000)
        for _ in range(requests):
            with pytest.raises(UpstreamUnavailable):
                await upstream.request("GET", "/stock/a")
    budget = FAST.get("http_retry_budget_ratio", 0.2)
    # Without a budget: 3 attempts each, 300. With it: one each, plus ~20 %, plus the reserve.
    assert requests <= len(server.received) <= (1 + budget) * requests + 10 + 1
    denied = upstream.metrics.registry.get_sample_value(
        "upstream_retries_denied_total", {"upstream": "inventory", "why": "budget"}
    )
    assert denied is not None
    assert denied > 0


async def test_trace_context_and_request_id_reach_the_upstream(make_upstream: MakeUpstream) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    async with ScriptedUpstream() as server:
        upstream = make_upstream(server.url, tracer=tracer)
        with (
            tracer.start_as_current_span("inbound request") as inbound,
            structlog.contextvars.bound_contextvars(request_id="req-123"),
        ):
            await upstream.request("GET", "/stock/a")
    [received] = server.received
    assert received.headers["x-request-id"] == "req-123"
    [client_span] = [span for span in exporter.get_finished_spans() if span.kind == SpanKind.CLIENT]
    trace_id = f"{inbound.get_span_context().trace_id:032x}"
    # The upstream continues our trace, as a child of the CLIENT span of this attempt.
    version, received_trace_id, parent_id, _flags = received.headers["traceparent"].split("-")
    assert (version, received_trace_id) == ("00", trace_id)
    assert parent_id == f"{client_span.context.span_id:016x}"
    assert client_span.parent is not None
    assert client_span.parent.span_id == inbound.get_span_context().span_id


async def test_outbound_connections_are_bounded_and_no_proxy_is_taken_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A proxy the host's environment names (nothing listens there) must not be used.
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{closed_port()}")
    settings = Settings(  # type: ignore[arg-type]
        **FAST | {"http_max_connections": 2, "http_connect_timeout_s": 10.0, "http_read_timeout_s": 10.0}
    )
    async with (
        ScriptedUpstream(default=Reply(200, {"ok": True}, delay_s=0.5)) as server,
        http.create_client(settings) as client,
    ):
        started = time.monotonic()
        answers = await asyncio.gather(*(client.get(f"{server.url}/stock/{n}") for n in range(4)))
        took = time.monotonic() - started
    assert [answer.status_code for answer in answers] == [200] * 4
    # HTTP_MAX_CONNECTIONS=2: four calls of 0.5 s go two at a time (all four at once: 0.5 s).
    assert took >= 0.9


async def test_a_host_that_never_accepts_the_connection_fails_after_the_connect_timeout() -> None:
    """A listener whose accept queue is full drops further SYNs, as a host gone dark does: the
    connect hangs. The factory's client gives up after HTTP_CONNECT_TIMEOUT_S, not the read timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):  # fills the queue
            settings = Settings(http_connect_timeout_s=0.2, http_read_timeout_s=30.0)
            async with http.create_client(settings) as client:
                started = time.monotonic()
                with pytest.raises(httpx.ConnectTimeout):
                    await asyncio.wait_for(client.get(f"http://127.0.0.1:{port}/"), timeout=5)
                assert time.monotonic() - started < 2


def test_no_bare_http_client_is_built_outside_the_factory() -> None:
    """A client made elsewhere would skip the timeouts, limits and propagation of `http.py`."""
    import ast
    from pathlib import Path

    import {{ cookiecutter.package_name }} as package

    root = Path(package.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path == root / "platform" / "http.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = (
                    node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                )
                if name in {"AsyncClient", "Client"}:
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []


async def test_a_hung_first_attempt_is_abandoned_and_the_retry_succeeds_within_the_deadline(
    make_upstream: MakeUpstream,
) -> None:
    async with ScriptedUpstream().then(Reply(hang=True), OK) as server:
        # The read timeout alone would wait 5 s; the attempt timeout gives up after 0.3 s.
        upstream = make_upstream(server.url, http_read_timeout_s=5.0, request_timeout_s=5.0)
        started = time.monotonic()
        with deadline.scope(2.0):
            response = await upstream.request("GET", "/stock/a")
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert len(server.received) == 2
    assert elapsed < 2.0


@pytest.mark.parametrize("undeclared", [False, True], ids=["content-length", "read-until-close"])
async def test_an_answer_over_the_size_limit_is_refused_and_not_retried(
    make_upstream: MakeUpstream, undeclared: bool
) -> None:
    big = Reply(200, {"items": ["x" * 100] * 100}, undeclared=undeclared)  # ~10 kB
    async with ScriptedUpstream(default=big) as server:
        upstream = make_upstream(server.url, http_max_response_bytes=4096, breaker_fail_max=1)
        with pytest.raises(UpstreamResponseTooLarge) as raised:
            await upstream.request("GET", "/stock/a")
        assert raised.value.status == 502
        assert len(server.received) == 1
        server.default = Reply(200, {"items": ["x" * 100] * 10}, undeclared=undeclared)  # ~1 kB
        assert len((await upstream.request("GET", "/stock/a")).json()["items"]) == 10
    registry = upstream.metrics.registry
    assert (
        registry.get_sample_value("upstream_calls_total", {"upstream": "inventory", "outcome": "too_large"})
        == 1
    )
    assert upstream.breaker.state == "closed"  # an answer too large says nothing of the upstream's health
