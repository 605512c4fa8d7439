"""Orders keep being created and read, none failing, while both instances restart in turn."""

from __future__ import annotations

from uuid import uuid4

import httpx
from sqlalchemy.engine import URL

from tests.orders.conftest import count_and_clean
from tests.rolling import rolling_restart


async def _order_then_read(client: httpx.AsyncClient, _: str) -> httpx.Response:
    created = await client.post(
        "/v1/orders", json={"sku": "ROLL-1", "quantity": 1}, headers={"Idempotency-Key": uuid4().hex}
    )
    if created.status_code != 201:
        return created
    return await client.get(created.headers["location"])


async def test_a_rolling_restart_loses_no_order(committed: URL) -> None:
    statuses, _ = await rolling_restart(committed.render_as_string(hide_password=False), _order_then_read)
    assert len(statuses) > 50
    assert [status for status in statuses if status != 200] == []
    assert await count_and_clean(committed) == len(statuses)  # every order answered is stored
