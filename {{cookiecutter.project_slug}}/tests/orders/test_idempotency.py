"""POST /v1/orders with an Idempotency-Key: one order, however many retries, in one process or many."""

from __future__ import annotations

import asyncio
import time

import httpx
from sqlalchemy.engine import URL

from {{ cookiecutter.package_name }}.main import create_app

from tests.conftest import make_settings
from tests.conftest import serving
from tests.orders.conftest import count_and_clean
from tests.service import running
from tests.upstream import Reply
from tests.upstream import ScriptedUpstream

ORDER = {"sku": "SKU-1", "quantity": 1}


async def test_fifty_concurrent_retries_in_process_create_one_order(committed: URL) -> None:
    async with serving(create_app(make_settings(committed))) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/orders", json=ORDER, headers={"Idempotency-Key": "storm"}) for _ in range(50))
        )
    assert await count_and_clean(committed) == 1
    assert {response.status_code for response in responses} <= {201, 409}
    created = {response.json()["id"] for response in responses if response.status_code == 201}
    assert len(created) == 1


async def test_fifty_concurrent_retries_across_worker_processes_create_one_order(committed: URL) -> None:
    with running(committed.render_as_string(hide_password=False), WORKERS="3") as service:
        async with httpx.AsyncClient(base_url=service.base, timeout=10) as client:
            responses = await asyncio.gather(
                *(
                    client.post("/v1/orders", json=ORDER, headers={"Idempotency-Key": "storm"})
                    for _ in range(50)
                )
            )
    statuses = [response.status_code for response in responses]
    assert await count_and_clean(committed) == 1
    assert set(statuses) <= {201, 409}
    assert len({response.json()["id"] for response in responses if response.status_code == 201}) == 1


async def test_idempotent_posts_hold_no_connection_while_the_upstream_answers(committed: URL) -> None:
    """More concurrent orders than the pool has connections, against a slow inventory service:
    the stock check runs before the first statement, so reads keep being served and no order
    waits for a connection."""
    async with ScriptedUpstream(
        default=Reply(200, {"sku": "SKU-1", "available": 9}, delay_s=0.5)
    ) as inventory:
        app = create_app(
            make_settings(
                committed,
                inventory_url=inventory.url,
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
            await asyncio.sleep(0.2)  # every POST is now waiting on the inventory service
            began = time.monotonic()
            read = await client.get("/v1/orders")
            read_took = time.monotonic() - began
            created = await asyncio.gather(*posts)
    assert read.status_code == 200
    assert read_took < 0.5
    assert [response.status_code for response in created] == [201] * 8
    assert await count_and_clean(committed) == 8
