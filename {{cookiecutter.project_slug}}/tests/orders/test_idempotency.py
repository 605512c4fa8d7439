"""POST /v1/orders with an Idempotency-Key: one order and one reservation upstream, however many
retries, in one process or many."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from sqlalchemy.engine import URL

from {{ cookiecutter.package_name }}.main import create_app

from tests.conftest import make_settings
from tests.conftest import serving
from tests.orders.conftest import count_and_clean
from tests.service import running
from tests.upstream import Reply
from tests.upstream import ScriptedUpstream

ORDER = {"sku": "SKU-1", "quantity": 1}
RESERVED = Reply(201, {"reserved": True}, delay_s=0.5)  # a slow inventory service
# These tests count reservations: the stock pre-check (its cache: test_stock_cache.py) is off.


def assert_one_order_from(responses: list[httpx.Response]) -> None:
    """One original 201; every other answer is its replay or a 409 for the key in flight."""
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {201, 409}, statuses
    created = [r for r in responses if r.status_code == 201]
    originals = [r for r in created if "idempotent-replayed" not in r.headers]
    assert len(originals) == 1
    assert all(r.content == originals[0].content for r in created)
    for conflict in (r for r in responses if r.status_code == 409):
        assert conflict.json()["type"] == "/problems/idempotency-key-in-use"
        assert conflict.headers["retry-after"] == "1"


@pytest.mark.parametrize("copies", [20, 50])
async def test_concurrent_retries_in_process_reserve_once_and_create_one_order(
    committed: URL, copies: int
) -> None:
    async with ScriptedUpstream(default=RESERVED) as inventory:
        app = create_app(make_settings(committed, inventory_url=inventory.url, stock_cache_ttl_s=0))
        async with serving(app) as client:
            responses = await asyncio.gather(
                *(
                    client.post("/v1/orders", json=ORDER, headers={"Idempotency-Key": "storm"})
                    for _ in range(copies)
                )
            )
        # The duplicates were refused before their handler ran: the upstream saw one call.
        assert len(inventory.received) == 1
    assert await count_and_clean(committed) == 1
    assert_one_order_from(responses)


async def test_fifty_concurrent_retries_across_worker_processes_reserve_once(committed: URL) -> None:
    async with ScriptedUpstream(default=RESERVED) as inventory:
        with running(
            committed.render_as_string(hide_password=False),
            WORKERS="3",
            INVENTORY_URL=inventory.url,
            STOCK_CACHE_TTL_S="0",
        ) as service:
            async with httpx.AsyncClient(base_url=service.base, timeout=10) as client:
                responses = await asyncio.gather(
                    *(
                        client.post("/v1/orders", json=ORDER, headers={"Idempotency-Key": "storm"})
                        for _ in range(50)
                    )
                )
        assert len(inventory.received) == 1
    assert await count_and_clean(committed) == 1
    assert_one_order_from(responses)


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


async def test_idempotent_posts_hold_no_connection_while_the_upstream_answers(committed: URL) -> None:
    """More concurrent orders than the pool has connections, against a slow inventory service:
    the key is claimed and the reservation made before the first statement of the request's
    transaction, so reads keep being served and no order waits for a connection."""
    async with ScriptedUpstream(default=RESERVED) as inventory:
        app = create_app(
            make_settings(
                committed,
                inventory_url=inventory.url,
                stock_cache_ttl_s=0,
                db_pool_size=2,
                db_max_overflow=0,
                db_pool_timeout_s=1.0,
            )
        )
        async with serving(app) as client:
            posts = [
                asyncio.create_task(
                    client.post("/v1/orders", json=ORDER, headers={"Idempotency-Key": f"k-{n}"})
                )
                for n in range(8)
            ]
            await inventory.arrival(8)  # every POST is now waiting on the inventory service
            began = time.monotonic()
            read = await client.get("/v1/orders")
            read_took = time.monotonic() - began
            created = await asyncio.gather(*posts)
    assert read.status_code == 200
    assert read_took < 0.5
    assert [response.status_code for response in created] == [201] * 8
    assert await count_and_clean(committed) == 8
