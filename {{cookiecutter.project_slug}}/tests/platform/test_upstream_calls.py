"""A request waiting on an upstream, through the platform's resilient client, on the test app's
idempotent route (`tests/app.py`): it holds no pooled connection while it waits, the request's
deadline ends it, and the breaker's gauge reads what the CircuitBreakerOpen alert fires on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from uuid import uuid4

import httpx
import pytest
from sqlalchemy.engine import URL

from tests.app import UPSTREAM
from tests.app import create
from tests.conftest import make_settings
from tests.conftest import scrape
from tests.conftest import serving
from tests.upstream import Reply
from tests.upstream import ScriptedUpstream

CALL = {"upstream": True}
SERIES = 'circuit_breaker_state{upstream="' + UPSTREAM + '"}'


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream(default=Reply(201, {})) as server:
        yield server


async def _post(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post("/_test/effects", json=CALL, headers={"Idempotency-Key": uuid4().hex})


async def test_requests_waiting_on_an_upstream_hold_no_pooled_connection(
    database_url: URL, upstream: ScriptedUpstream
) -> None:
    """More requests waiting on a slow upstream than the pool has connections: a read is served
    while every one of them still waits (a held connection would make it wait out the pool
    timeout, 503)."""
    upstream.default = Reply(201, {}, delay_s=2.0)  # within HTTP_ATTEMPT_TIMEOUT_S (3 s)
    settings = make_settings(database_url, db_pool_size=2, db_max_overflow=0, db_pool_timeout_s=1.0)
    async with serving(create(settings, upstream_url=upstream.url)) as client:
        posts = [asyncio.create_task(_post(client)) for _ in range(8)]
        limit = time.monotonic() + 10
        while len(upstream.received) < 8:  # every request is now waiting on the upstream
            assert time.monotonic() < limit, f"{len(upstream.received)} of 8 reached the upstream"
            await asyncio.sleep(0.01)
        read = await client.get("/_test/read")
        waiting = sum(not post.done() for post in posts)
        created = await asyncio.gather(*posts)
    assert read.status_code == 200
    assert waiting == 8  # the read did not wait for any of them
    assert [response.status_code for response in created] == [201] * 8


async def test_a_hanging_upstream_is_a_504_at_the_deadline_not_the_read_timeout(
    database_url: URL, upstream: ScriptedUpstream
) -> None:
    """Each attempt may take 0.6 s and the read timeout is 5 s: without the request's 1 s deadline
    the three attempts would run to the end (about 1.9 s); with it the second one is cut short and
    no third starts."""
    upstream.default = Reply(hang=True)
    settings = make_settings(
        database_url,
        request_timeout_s=1.0,
        http_read_timeout_s=5.0,
        http_attempt_timeout_s=0.6,
        http_retry_attempts=3,
        http_retry_backoff_s=0.05,
        http_retry_max_wait_s=0.05,
        breaker_fail_max=10,
        db_pool_timeout_s=0.4,
    )
    async with serving(create(settings, upstream_url=upstream.url)) as client:
        started = time.monotonic()
        response = await _post(client)
        elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["type"] == "/problems/upstream-timeout"
    assert 1 <= len(upstream.received) < 3
    assert elapsed < 4.0  # far from the 5 s read timeout, whatever the machine's load


def _gauge(metrics: str) -> float:
    [line] = [line for line in metrics.splitlines() if line.startswith(SERIES)]
    return float(line.rsplit(" ", 1)[1])


async def test_the_breaker_gauge_reads_2_open_1_half_open_0_closed(
    database_url: URL, upstream: ScriptedUpstream
) -> None:
    settings = make_settings(
        database_url, http_retry_attempts=1, breaker_fail_max=2, breaker_reset_timeout_s=0.3
    )
    app = create(settings, upstream_url=upstream.url)
    upstream.default = Reply(503)
    async with serving(app) as client:
        for _ in range(2):
            await _post(client)
        assert _gauge(await scrape(app)) == 2
        await asyncio.sleep(0.35)  # the break ends; the next call is a probe
        upstream.default = Reply(201, {}, delay_s=0.5)
        probe = asyncio.create_task(_post(client))
        limit = time.monotonic() + 10
        while len(upstream.received) < 3:  # the probe is at the upstream
            assert time.monotonic() < limit
            await asyncio.sleep(0.01)
        assert _gauge(await scrape(app)) == 1
        assert (await probe).status_code == 201
        assert _gauge(await scrape(app)) == 0
