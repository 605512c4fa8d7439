"""A request waiting on an upstream, through the platform's resilient client, on the test app's
idempotent route (`tests/app.py`): it holds no pooled connection while it waits. (The deadline and
the breaker's gauge through the app: test_upstream_app.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from uuid import uuid4

import httpx
import pytest
from sqlalchemy.engine import URL

from tests.app import UPSTREAM
from tests.app import create
from tests.conftest import make_settings
from tests.conftest import serving
from tests.upstream import Reply
from tests.upstream import ScriptedUpstream

CALL = {"upstream": True}


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
    async with serving(create(settings, upstreams={UPSTREAM: upstream.url})) as client:
        posts = [asyncio.create_task(_post(client)) for _ in range(8)]
        await upstream.arrival(8)  # every request is now waiting on the upstream
        read = await client.get("/_test/read")
        waiting = sum(not post.done() for post in posts)
        created = await asyncio.gather(*posts)
    assert read.status_code == 200
    assert waiting == 8  # the read did not wait for any of them
    assert [response.status_code for response in created] == [201] * 8
