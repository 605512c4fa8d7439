from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import uuid4

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine


async def _with_idempotency_key(request: httpx.Request) -> None:
    if request.method == "POST" and "idempotency-key" not in request.headers:
        request.headers["idempotency-key"] = uuid4().hex


@pytest.fixture
async def client(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The app client, giving each POST a fresh Idempotency-Key unless the test sets its own
    (POST /v1/orders requires one; tests of idempotency itself set theirs)."""
    client.event_hooks["request"].append(_with_idempotency_key)
    return client


async def count_and_clean(database_url: URL) -> int:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as connection:
            count = int(await connection.scalar(text("SELECT count(*) FROM orders")) or 0)
            # DELETE, not TRUNCATE: the runtime role the tests connect as has no TRUNCATE. Audit rows
            # stay (append-only): tests find theirs by request id.
            await connection.execute(text("DELETE FROM orders"))
            await connection.execute(text("DELETE FROM idempotency_keys"))
        return count
    finally:
        await engine.dispose()


@pytest.fixture
async def committed(database_url: URL) -> AsyncIterator[URL]:
    """The test database for tests that commit; emptied before and after."""
    await count_and_clean(database_url)
    yield database_url
    await count_and_clean(database_url)
