"""Idempotency holds across processes: concurrent retries spread over three uvicorn workers run the
handler, and call the upstream, once. `X-Worker-Pid` (tests/app.py) shows several workers served."""

from __future__ import annotations

import asyncio
import time
from uuid import uuid4

import httpx
from sqlalchemy.engine import URL

from tests.app import APP
from tests.app import stored_answer
from tests.service import running
from tests.upstream import Reply
from tests.upstream import ScriptedUpstream

WORKERS = 3


async def _every_worker_serving(base: str, timeout_s: float = 60.0) -> None:
    """Each request on a new connection until every worker has answered one: all are accepting."""
    seen: set[str] = set()
    limit = time.monotonic() + timeout_s
    async with httpx.AsyncClient(
        base_url=base, timeout=5, limits=httpx.Limits(max_keepalive_connections=0)
    ) as client:
        while len(seen) < WORKERS:
            if time.monotonic() > limit:
                raise TimeoutError(f"only workers {seen} answered")
            seen.add((await client.get("/health")).headers["x-worker-pid"])


async def test_fifty_retries_across_worker_processes_run_the_handler_once(database_url: URL) -> None:
    key = uuid4().hex
    async with ScriptedUpstream(default=Reply(201, {}, delay_s=0.5)) as upstream:  # a slow upstream
        with running(
            database_url.render_as_string(hide_password=False),
            app=APP,
            WORKERS=str(WORKERS),
            TEST_UPSTREAM_URL=upstream.url,
        ) as service:
            await _every_worker_serving(service.base)
            async with httpx.AsyncClient(base_url=service.base, timeout=10) as client:
                responses = await asyncio.gather(
                    *(
                        client.post(
                            "/_test/effects", json={"upstream": True}, headers={"Idempotency-Key": key}
                        )
                        for _ in range(50)
                    )
                )
        assert len(upstream.received) == 1  # the handler ran once, in one of the processes
    assert len({response.headers["x-worker-pid"] for response in responses}) > 1
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {201, 409}, statuses
    created = [response for response in responses if response.status_code == 201]
    originals = [response for response in created if "idempotent-replayed" not in response.headers]
    assert len(originals) == 1
    assert all(response.content == originals[0].content for response in created)
    for conflict in (response for response in responses if response.status_code == 409):
        assert conflict.json()["type"] == "/problems/idempotency-key-in-use"
    assert await stored_answer(database_url, key) == (201, originals[0].content)
