"""POST /v1/orders reserves stock at a real (scripted) inventory service on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import URL

from {{ cookiecutter.package_name }}.main import create_app

from tests.conftest import make_settings
from tests.upstream import Reply
from tests.upstream import ScriptedUpstream


@pytest.fixture
async def inventory() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream(default=Reply(201, {"reserved": True})) as server:
        yield server


@pytest.fixture
def app(database_url: URL, inventory: ScriptedUpstream) -> FastAPI:
    return create_app(
        make_settings(
            database_url,
            inventory_url=inventory.url,
            http_read_timeout_s=0.2,
            http_attempt_timeout_s=0.2,
            http_retry_max_wait_s=0.05,
            breaker_fail_max=2,
            breaker_reset_timeout_s=30,
            request_timeout_s=1.5,
            db_pool_timeout_s=0.5,
            stock_cache_ttl_s=0,  # reservations alone here; the cached pre-check: test_stock_cache.py
        )
    )


async def _orders(client: httpx.AsyncClient) -> list[object]:
    items: list[object] = (await client.get("/v1/orders")).json()["items"]
    return items


async def test_an_order_within_stock_is_created(
    client: httpx.AsyncClient, inventory: ScriptedUpstream
) -> None:
    response = await client.post(
        "/v1/orders", json={"sku": "SKU-1", "quantity": 3}, headers={"Idempotency-Key": "order-1"}
    )
    assert response.status_code == 201
    [call] = inventory.received
    assert (call.method, call.path) == ("POST", "/reservations")
    assert call.json == {"sku": "SKU-1", "quantity": 3}
    # A key derived from the order's: stable across retries, never the client's own.
    assert len(call.headers["idempotency-key"]) == 64
    assert call.headers["idempotency-key"] != "order-1"
    assert call.headers["x-request-id"] == response.headers["x-request-id"]
    assert call.headers["traceparent"].startswith("00-")


async def test_insufficient_stock_is_a_409_and_nothing_is_written(
    client: httpx.AsyncClient, inventory: ScriptedUpstream
) -> None:
    inventory.then(Reply(409, {"available": 1}))
    response = await client.post("/v1/orders", json={"sku": "SKU-1", "quantity": 3})
    assert response.status_code == 409
    body = response.json()
    assert body["type"] == "/problems/insufficient-stock"
    assert (body["available"], body["requested"]) == (1, 3)
    assert await _orders(client) == []


async def test_a_failing_inventory_is_a_503_after_retries(
    client: httpx.AsyncClient, inventory: ScriptedUpstream
) -> None:
    inventory.default = Reply(503)
    response = await client.post("/v1/orders", json={"sku": "SKU-1", "quantity": 1})
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "/problems/upstream-unavailable"
    assert 1 < len(inventory.received) <= 3
    assert await _orders(client) == []


async def test_an_open_breaker_is_a_503_with_retry_after(
    client: httpx.AsyncClient, inventory: ScriptedUpstream
) -> None:
    inventory.default = Reply(503)
    await client.post(
        "/v1/orders", json={"sku": "SKU-1", "quantity": 1}
    )  # attempt, retry: two failures, open
    reached = len(inventory.received)
    response = await client.post("/v1/orders", json={"sku": "SKU-1", "quantity": 1})
    assert response.status_code == 503
    assert response.json()["type"] == "/problems/circuit-open"
    assert 0 < int(response.headers["retry-after"]) <= 30
    assert len(inventory.received) == reached


async def test_a_hanging_inventory_is_a_504_within_the_deadline(
    client: httpx.AsyncClient, inventory: ScriptedUpstream
) -> None:
    inventory.default = Reply(hang=True)
    response = await client.post("/v1/orders", json={"sku": "SKU-1", "quantity": 1})
    assert response.status_code == 504
    assert response.json()["type"] == "/problems/upstream-timeout"
    assert float(response.elapsed.total_seconds()) < 1.5 + 0.3
