"""A request in flight when SIGTERM arrives finishes, its effect committed, before the process
exits 0: on a real server process serving the test app (`tests/app.py`), so every bake keeps it."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from uuid import uuid4

import httpx
from sqlalchemy.engine import URL

from tests.app import APP
from tests.app import Signals
from tests.app import stored_answer
from tests.service import running


async def _until_refused(base: str, timeout_s: float = 30.0) -> None:
    """Returns once a new connection is refused: the drain delay is over, the listener closed."""
    limit = time.monotonic() + timeout_s
    while time.monotonic() < limit:
        try:
            async with httpx.AsyncClient(timeout=1) as probe:
                await probe.get(f"{base}/health")
        except httpx.ConnectError:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the server kept accepting connections")


async def test_a_request_in_flight_at_sigterm_finishes_with_its_effect(
    database_url: URL, tmp_path: Path
) -> None:
    signals, key = Signals(tmp_path), uuid4().hex
    with running(
        database_url.render_as_string(hide_password=False),
        app=APP,
        TEST_SIGNALS_DIR=str(tmp_path),
        SHUTDOWN_DELAY_S="0.5",
    ) as service:
        async with httpx.AsyncClient(base_url=service.base, timeout=30) as client:
            request = asyncio.create_task(
                client.post("/_test/effects", json={"hold": "in-flight"}, headers={"Idempotency-Key": key})
            )
            await signals.held("in-flight")
            service.process.send_signal(signal.SIGTERM)
            await _until_refused(service.base)  # shutting down, with our request still held
            # In flight well past the stop of accepting: the server must wait for it, not exit.
            await asyncio.sleep(1.0)
            signals.release("in-flight")
            answer = await request
        exit_code = await asyncio.to_thread(service.process.wait, 30)
    assert answer.status_code == 201
    assert exit_code == 0
    assert await stored_answer(database_url, key) == (201, answer.content)  # committed before the exit
