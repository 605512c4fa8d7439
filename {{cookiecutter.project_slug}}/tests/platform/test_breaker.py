"""The breaker opens on a failure ratio over its sampling window (#14), against a real scripted
upstream, with the defaults for the ratio, the minimum throughput and the window. Its clock is
injected: the window slides and the break ends when the test moves time, not when it waits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from opentelemetry import trace

from {{ cookiecutter.package_name }}.platform import http
from {{ cookiecutter.package_name }}.platform.metrics import Metrics
from {{ cookiecutter.package_name }}.platform.resilience import CircuitOpen
from {{ cookiecutter.package_name }}.platform.resilience import Upstream
from {{ cookiecutter.package_name }}.platform.resilience import UpstreamUnavailable
from {{ cookiecutter.package_name }}.settings import Settings

from tests.clock import Clock
from tests.upstream import Reply
from tests.upstream import ScriptedUpstream


def default(name: str) -> Any:
    """A setting's default as shipped (not as this environment may override it)."""
    return Settings.model_fields[name].default


OK = Reply(200, {"ok": True})
FAIL = Reply(500)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with http.create_client(Settings()) as client:  # type: ignore[call-arg]
        yield client


def upstream(url: str, client: httpx.AsyncClient, clock: Clock, **overrides: Any) -> Upstream:
    # One attempt per call, so the window counts exactly the calls the test makes.
    settings = Settings(**({"http_retry_attempts": 1} | overrides))  # type: ignore[arg-type]
    return Upstream(
        "inventory",
        url,
        client=client,
        settings=settings,
        metrics=Metrics(),
        tracer=trace.NoOpTracer(),
        clock=clock,
    )


async def call(target: Upstream) -> int:
    try:
        return (await target.request("GET", "/stock/a")).status_code
    except CircuitOpen:
        return -1
    except UpstreamUnavailable:
        return 503


def gauge(target: Upstream) -> float | None:
    return target.metrics.registry.get_sample_value("circuit_breaker_state", {"upstream": "inventory"})


async def test_an_upstream_failing_every_other_call_opens_it_once_the_window_holds_enough_calls(
    client: httpx.AsyncClient,
) -> None:
    clock = Clock()
    enough = default("breaker_min_throughput")
    async with ScriptedUpstream().then(*[FAIL, OK] * enough) as server:
        target = upstream(server.url, client, clock)
        for _ in range(enough - 1):
            await call(target)
            clock.now += 0.1
        # Never two failures in a row: consecutive counting (BREAKER_FAIL_MAX) would never open it.
        assert target.breaker.state == "closed"
        await call(target)
        assert target.breaker.state == "open"
        assert gauge(target) == 2
        assert await call(target) == -1
        assert len(server.received) == enough  # the open circuit spared the upstream


async def test_an_upstream_failing_one_call_in_twenty_does_not_open_it(client: httpx.AsyncClient) -> None:
    clock = Clock()
    calls = 400  # 40 s at 10 calls a second: more than a full window, which slides
    async with ScriptedUpstream().then(*[FAIL if i % 20 == 0 else OK for i in range(calls)]) as server:
        target = upstream(server.url, client, clock)
        answers = []
        for _ in range(calls):
            answers.append(await call(target))
            clock.now += 0.1
    assert answers.count(503) == calls // 20
    assert -1 not in answers
    assert target.breaker.state == "closed"
    assert gauge(target) == 0


async def test_it_recovers_through_half_open_with_a_bounded_number_of_probes(
    client: httpx.AsyncClient,
) -> None:
    clock = Clock()
    async with ScriptedUpstream(default=FAIL) as server:
        # A minimum throughput the calls before the break reach: a window kept across it would reopen.
        target = upstream(server.url, client, clock, breaker_half_open_probes=2, breaker_min_throughput=4)
        for _ in range(default("breaker_fail_max")):
            await call(target)
        assert target.breaker.state == "open"
        clock.now += default("breaker_reset_timeout_s") - 0.1
        assert await call(target) == -1  # the break is not over

        clock.now += 0.2
        gate = asyncio.Event()
        server.default = Reply(200, {"ok": True}, gate=gate)
        probes = [asyncio.create_task(call(target)) for _ in range(2)]
        await server.arrival(len(server.received) + 2)  # both probes are at the upstream, held there
        assert target.breaker.state == "half-open"
        assert gauge(target) == 1
        reached = len(server.received)
        assert await call(target) == -1  # a third call while two probes are out is refused
        assert len(server.received) == reached
        gate.set()
        assert await asyncio.gather(*probes) == [200, 200]
        assert target.breaker.state == "closed"
        assert gauge(target) == 0

        # Closed with an empty window: the failures from before the break do not count again.
        server.default = FAIL
        await call(target)
        assert target.breaker.state == "closed"


async def test_the_gauge_reads_half_open_once_the_break_is_over_even_without_a_call(
    client: httpx.AsyncClient,
) -> None:
    """An upstream that recovered while nobody called it must not keep the circuit reading open
    (and CircuitBreakerOpen filing its ticket) until the next call."""
    clock = Clock()
    async with ScriptedUpstream(default=FAIL) as server:
        target = upstream(server.url, client, clock)
        for _ in range(default("breaker_fail_max")):
            await call(target)
        assert gauge(target) == 2
        clock.now += default("breaker_reset_timeout_s") + 0.1
        assert gauge(target) == 1  # no call came: the next one would be a trial
        assert target.breaker.state == "open"  # pybreaker's own state moves on the next call
        server.default = OK
        assert await call(target) == 200
        assert gauge(target) == 0


async def test_a_slow_call_ratio_opens_it_when_set(client: httpx.AsyncClient) -> None:
    clock = Clock()
    async with ScriptedUpstream(default=Reply(200, {"ok": True}, delay_s=0.06)) as server:
        target = upstream(
            server.url,
            client,
            clock,
            breaker_slow_call_ratio=0.5,
            breaker_slow_call_s=0.05,
            breaker_min_throughput=4,
        )
        answers = [await call(target) for _ in range(5)]
    assert answers[:4] == [200] * 4  # slow, but answers: the caller got them
    assert answers[4] == -1
    assert target.breaker.state == "open"
