"""Zero failed requests while two instances restart one after the other behind a load balancer."""

from __future__ import annotations

import httpx
from sqlalchemy.engine import URL

from tests.rolling import rolling_restart


async def _probe_and_docs(client: httpx.AsyncClient, _: str) -> httpx.Response:
    response = await client.get("/openapi.json")
    return response if response.status_code != 200 else await client.get("/health")


async def test_a_rolling_restart_fails_no_request(database_url: URL) -> None:
    statuses, exits = await rolling_restart(
        database_url.render_as_string(hide_password=False), _probe_and_docs
    )
    assert len(statuses) > 100  # the load really ran through both restarts
    assert [status for status in statuses if status != 200] == []
    assert all(code_took < 10 for code_took in exits)
