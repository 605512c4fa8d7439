"""The stock pre-check's read-through cache in front of a real (scripted) inventory service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import URL

from {{ cookiecutter.package_name }}.main import create_app

from tests.clock import Clock
from tests.conftest import make_settings
from tests.conftest import scrape
from tests.conftest import serving
from tests.orders.conftest import count_and_clean
from tests.upstream import Reply
from tests.upstream import ScriptedUpstream

RESERVED = Reply(201, {"reserved": True})


@pytest.fixture
async def inventory() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream(default=RESERVED) as server:
        yield server


@pytest.fixture
def app(database_url: URL, inventory: ScriptedUpstream) -> FastAPI:
    return create_app(
        make_settings(
            database_url,
            inventory_url=inventory.url,
            stock_cache_ttl_s=5,
            stock_cache_stale_s=60,
            http_retry_attempts=1,
            breaker_fail_max=100,
        )
    )


def stock_reads(inventory: ScriptedUpstream) -> int:
    return sum(1 for call in inventory.received if call.path.startswith("/stock/"))


async def test_fifty_concurrent_orders_on_a_cold_cache_read_stock_once(
    app: FastAPI, inventory: ScriptedUpstream, database_url: URL
) -> None:
    inventory.routes["/stock/"] = Reply(200, {"available": 1000}, delay_s=0.5)
    try:
        async with serving(app) as client:
            responses = await asyncio.gather(
                *(
                    client.post(
                        "/v1/orders",
                        json={"sku": "HOT-1", "quantity": 1},
                        headers={"Idempotency-Key": f"hot-{n}"},
                    )
                    for n in range(50)
                )
            )
            metrics = await scrape(app)
    finally:
        await count_and_clean(database_url)
    assert [response.status_code for response in responses] == [201] * 50
    assert stock_reads(inventory) == 1
    assert len(inventory.received) == 51  # and one reservation per order
    assert 'cache_lookups_total{cache="stock",result="miss"} 1.0' in metrics


async def test_a_cached_shortage_is_refused_without_a_reservation(
    client: httpx.AsyncClient, inventory: ScriptedUpstream
) -> None:
    inventory.routes["/stock/"] = Reply(200, {"available": 2})
    for _ in range(2):
        response = await client.post("/v1/orders", json={"sku": "LOW-1", "quantity": 3})
        assert response.status_code == 409
        assert response.json()["type"] == "/problems/insufficient-stock"
        assert response.json()["available"] == 2
    assert [call.path for call in inventory.received] == ["/stock/LOW-1"]  # read once, nothing reserved


async def test_stale_stock_is_used_within_the_window_then_503(
    app: FastAPI, client: httpx.AsyncClient, inventory: ScriptedUpstream
) -> None:
    clock = Clock()
    app.state.inventory.stock.clock = clock
    inventory.routes["/stock/"] = Reply(200, {"available": 10})
    assert (await client.post("/v1/orders", json={"sku": "S-1", "quantity": 1})).status_code == 201

    inventory.routes["/stock/"] = Reply(503)  # stock reads fail; reservations still work
    clock.now += 5 + 59  # past the TTL, inside the stale window
    response = await client.post("/v1/orders", json={"sku": "S-1", "quantity": 1})
    assert response.status_code == 201
    assert 'cache_lookups_total{cache="stock",result="stale"} 1.0' in await scrape(app)

    clock.now += 2  # past TTL + stale: as without a cache
    response = await client.post("/v1/orders", json={"sku": "S-1", "quantity": 1})
    assert response.status_code == 503
    assert stock_reads(inventory) == 3
    assert sum(1 for call in inventory.received if call.path == "/reservations") == 2
