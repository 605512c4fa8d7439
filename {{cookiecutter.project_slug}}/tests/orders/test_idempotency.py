"""POST /v1/orders with an Idempotency-Key: a refusal is replayed, a failure leaves the key free.
Concurrent retries, across worker processes too, and holding no connection while the upstream
answers are the platform's, tested in every bake: tests/platform/test_idempotency.py,
test_replicas.py and test_upstream_calls.py."""

from __future__ import annotations

from sqlalchemy.engine import URL

from {{ cookiecutter.package_name }}.main import create_app

from tests.conftest import make_settings
from tests.conftest import serving
from tests.orders.conftest import count_and_clean
from tests.upstream import Reply
from tests.upstream import ScriptedUpstream

ORDER = {"sku": "SKU-1", "quantity": 1}
# These tests count reservations: the stock pre-check (its cache: test_stock_cache.py) is off.


async def test_a_refusal_is_replayed_after_the_upstream_recovers(committed: URL) -> None:
    """Insufficient stock is an answer, as Stripe stores its 4xx: the retry with the same key gets
    the same 409, even once stock is back; a new key orders."""
    async with ScriptedUpstream(default=Reply(201, {"reserved": True})) as inventory:
        inventory.then(Reply(409, {"available": 0}))
        async with serving(
            create_app(make_settings(committed, inventory_url=inventory.url, stock_cache_ttl_s=0))
        ) as client:
            refused = await client.post("/v1/orders", json=ORDER, headers={"Idempotency-Key": "k-1"})
            again = await client.post("/v1/orders", json=ORDER, headers={"Idempotency-Key": "k-1"})
            fresh = await client.post("/v1/orders", json=ORDER, headers={"Idempotency-Key": "k-2"})
        assert len(inventory.received) == 2  # the replay did not ask
    assert refused.status_code == again.status_code == 409
    assert refused.json()["type"] == "/problems/insufficient-stock"
    assert again.content == refused.content
    assert again.headers["idempotent-replayed"] == "true"
    assert fresh.status_code == 201
    assert await count_and_clean(committed) == 1


async def test_an_unavailable_upstream_leaves_the_key_free_for_the_retry(committed: URL) -> None:
    async with ScriptedUpstream(default=Reply(201, {"reserved": True})) as inventory:
        inventory.then(Reply(503), Reply(503), Reply(503))  # every attempt of the first request
        settings = make_settings(
            committed, inventory_url=inventory.url, stock_cache_ttl_s=0, http_retry_max_wait_s=0.05
        )
        async with serving(create_app(settings)) as client:
            failed = await client.post("/v1/orders", json=ORDER, headers={"Idempotency-Key": "k-1"})
            retried = await client.post("/v1/orders", json=ORDER, headers={"Idempotency-Key": "k-1"})
    assert failed.status_code == 503
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers
    assert await count_and_clean(committed) == 1
