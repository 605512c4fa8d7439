"""The resilient client through the app, as a route uses it: the request's deadline ends a hanging
call, and what an operator alerts on reads right on /metrics (`circuit_breaker_state`,
`upstream_calls_total`, `service_ready`).

No domain is needed: the test app's `GET /_test/call/{name}` (tests/app.py) calls
`app.state.upstreams`, the way a domain's route does, against a real scripted upstream on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy.engine import URL

from {{ cookiecutter.package_name }}.main import create_app

from tests.app import create
from tests.conftest import make_settings
from tests.conftest import sample
from tests.conftest import scrape
from tests.conftest import serving
from tests.upstream import Reply
from tests.upstream import ScriptedUpstream
from tests.upstream import closed_port


async def test_a_hanging_upstream_is_answered_504_at_the_request_deadline(database_url: URL) -> None:
    """REQUEST_TIMEOUT_S, started by the middleware, ends the call: not the 5 s read timeout, and
    no retry starts once it is spent (without the deadline each attempt would be retried)."""
    settings = make_settings(
        database_url,
        request_timeout_s=0.5,
        http_read_timeout_s=5.0,
        http_attempt_timeout_s=0.5,
        http_retry_attempts=5,
        http_retry_backoff_s=0.01,
        http_retry_max_wait_s=0.05,
        breaker_fail_max=100,
        db_pool_timeout_s=0.4,
    )
    async with ScriptedUpstream(default=Reply(hang=True)) as hanging:
        app = create(settings, upstreams={"hanging": hanging.url})
        async with serving(app) as client:
            started = time.monotonic()
            response = await client.get("/_test/call/hanging")
            took = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["type"].endswith("upstream-timeout")
    assert len(hanging.received) == 1
    # About 0.5 s: loose bounds, a loaded machine only adds to it.
    assert 0.4 < took < 3.0


async def test_the_breaker_gauge_reads_2_open_1_half_open_0_closed(database_url: URL) -> None:
    """The values the CircuitBreakerOpen alert fires on, as Prometheus scrapes them."""
    settings = make_settings(database_url, http_retry_attempts=1, breaker_fail_max=1)
    gate = asyncio.Event()
    now = [1000.0]
    async with ScriptedUpstream(default=Reply(500)) as server:
        app = create(settings, upstreams={"flaky": server.url})
        async with serving(app) as client:
            # The breaker's clock, moved by the test: a slow scrape cannot end the break early.
            app.state.upstreams.clock = lambda: now[0]

            async def state() -> float | None:
                return sample(await scrape(app), "circuit_breaker_state", upstream="flaky")

            assert (await client.get("/_test/call/flaky")).status_code == 503
            assert await state() == 2
            refused = await client.get("/_test/call/flaky")
            assert refused.status_code == 503
            assert "retry-after" in refused.headers
            assert len(server.received) == 1  # refused by the open circuit, not sent

            now[0] += settings.breaker_reset_timeout_s  # the break is over: the next call is the probe
            server.default = Reply(200, {"ok": True}, gate=gate)
            probe = asyncio.create_task(client.get("/_test/call/flaky"))
            await server.arrival(2)  # the probe is at the upstream, held there by the gate
            assert await state() == 1
            gate.set()
            assert (await probe).status_code == 200
            assert await state() == 0


async def test_upstream_calls_are_counted_by_outcome(database_url: URL) -> None:
    settings = make_settings(
        database_url,
        request_timeout_s=1.0,
        http_attempt_timeout_s=0.3,
        http_read_timeout_s=0.3,
        http_retry_attempts=1,
        breaker_fail_max=2,
        breaker_reset_timeout_s=60.0,
        db_pool_timeout_s=0.5,
    )
    async with (
        ScriptedUpstream() as healthy,
        ScriptedUpstream(default=Reply(500)) as failing,
        ScriptedUpstream(default=Reply(hang=True)) as hanging,
    ):
        app = create(
            settings,
            upstreams={
                "healthy": healthy.url,
                "failing": failing.url,
                "hanging": hanging.url,
                "down": f"http://127.0.0.1:{closed_port()}",
            },
        )
        async with serving(app) as client:
            statuses = [
                (await client.get(f"/_test/call/{name}")).status_code
                for name in ("healthy", "healthy", "failing", "failing", "failing", "hanging", "down")
            ]
            exposition = await scrape(app)
    assert statuses == [200, 200, 503, 503, 503, 504, 503]

    def calls(upstream: str, outcome: str) -> float | None:
        return sample(exposition, "upstream_calls_total", upstream=upstream, outcome=outcome)

    assert calls("healthy", "ok") == 2
    assert calls("failing", "failed") == 2
    assert calls("failing", "circuit_open") == 1  # opened by the two failures: the third is refused
    assert len(failing.received) == 2
    assert calls("hanging", "timeout") == 1
    assert calls("down", "unreachable") == 1
    assert calls("healthy", "failed") is None


async def test_service_ready_is_1_when_ready_and_0_when_not(
    database_url: URL, empty_database_url: URL
) -> None:
    ready = create_app(make_settings(database_url, ready_cache_s=0))
    async with serving(ready) as client:
        assert (await client.get("/ready")).status_code == 200
        assert sample(await scrape(ready), "service_ready") == 1

    behind = create_app(make_settings(empty_database_url, ready_cache_s=0))  # schema behind its heads
    async with serving(behind) as client:
        assert (await client.get("/ready")).status_code == 503
        assert sample(await scrape(behind), "service_ready") == 0
