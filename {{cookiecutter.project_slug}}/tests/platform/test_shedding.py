"""Load shedding (#14): past MAX_CONCURRENT_REQUESTS in flight, the excess is answered 503 at once,
never queued; the probes are never shed. The service's own app and middleware, a route that is
slow on purpose, and the real database behind /ready."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from sqlalchemy.engine import URL

from {{ cookiecutter.package_name }}.main import create_app

from tests.conftest import make_settings
from tests.conftest import scrape
from tests.conftest import serving

LIMIT = 2


class Slots:
    """How many `/slow` requests are in their handler (holding an admission slot), and their release."""

    def __init__(self) -> None:
        self.held = 0
        self.changed = asyncio.Condition()
        self.release = asyncio.Event()

    async def holding(self, count: int) -> None:
        async with asyncio.timeout(10), self.changed:
            await self.changed.wait_for(lambda: self.held >= count)


def slow_app(database_url: URL, limit: int) -> tuple[FastAPI, Slots]:
    app = create_app(make_settings(database_url, max_concurrent_requests=limit))
    slots = Slots()

    async def slow() -> dict[str, bool]:
        async with slots.changed:
            slots.held += 1
            slots.changed.notify_all()
        await slots.release.wait()
        return {"ok": True}

    app.add_api_route("/slow", slow)
    return app, slots


async def test_the_excess_is_503_with_retry_after_at_once_while_probes_stay_200(database_url: URL) -> None:
    app, slots = slow_app(database_url, LIMIT)
    async with serving(app) as client:
        admitted = [asyncio.create_task(client.get("/slow")) for _ in range(LIMIT)]
        await slots.holding(LIMIT)  # both are in flight, holding their slots

        # Bounded: were the excess queued instead of shed, it would wait for the release.
        shed = await asyncio.wait_for(asyncio.gather(*[client.get("/slow") for _ in range(3)]), timeout=5)
        health, ready = await client.get("/health"), await client.get("/ready")
        assert all(not task.done() for task in admitted)  # answered while the slots were still held

        slots.release.set()
        answers = await asyncio.gather(*admitted)
        after = await client.get("/slow")  # the slots are free again
        metrics = await scrape(app)

        # And the limit is what it was: LIMIT in flight again, the next one is shed again.
        slots.release = asyncio.Event()
        again = [asyncio.create_task(client.get("/slow")) for _ in range(LIMIT)]
        await slots.holding(2 * LIMIT + 1)
        shed_again = await asyncio.wait_for(client.get("/slow"), timeout=5)
        slots.release.set()
        await asyncio.gather(*again)

    assert [a.status_code for a in answers] == [200] * LIMIT
    assert [s.status_code for s in shed] == [503] * 3
    for answer in shed:
        assert answer.headers["retry-after"] == "1"
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["type"] == "/problems/overloaded"
        assert answer.json()["detail"]
        assert answer.headers["x-request-id"] == answer.json()["request_id"]
    assert (health.status_code, ready.status_code) == (200, 200)
    assert after.status_code == 200
    assert shed_again.status_code == 503
    assert "http_server_requests_shed_total 3.0" in metrics
    # Shed requests are still counted (and logged) with their status, as every request is.
    assert 'http_server_requests_total{method="GET",route="unmatched",status="503"} 3.0' in metrics


async def test_a_failed_request_frees_its_slot(database_url: URL) -> None:
    app = create_app(make_settings(database_url, max_concurrent_requests=1))

    async def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/broken", broken)
    async with serving(app) as client:
        for _ in range(3):
            assert (await client.get("/broken")).status_code == 500
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/no-such-route")).status_code == 404  # admitted: not 503
