from __future__ import annotations

from uuid import uuid4

import httpx
import pytest


async def _with_idempotency_key(request: httpx.Request) -> None:
    if request.method == "POST" and "idempotency-key" not in request.headers:
        request.headers["idempotency-key"] = uuid4().hex


@pytest.fixture
async def client(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The app client, giving each POST a fresh Idempotency-Key unless the test sets its own
    (POST /v1/orders requires one; tests of idempotency itself set theirs)."""
    client.event_hooks["request"].append(_with_idempotency_key)
    return client
