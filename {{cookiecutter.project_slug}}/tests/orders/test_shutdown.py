"""A request in flight when SIGTERM arrives finishes, with its effect, before the process exits."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import httpx
from sqlalchemy.engine import URL

from tests.service import running
from tests.upstream import Reply
from tests.upstream import ScriptedUpstream


async def test_a_request_in_flight_finishes_after_sigterm(committed: URL) -> None:
    async with ScriptedUpstream(default=Reply(201, {"reserved": True}, delay_s=2.0)) as inventory:
        with running(
            committed.render_as_string(hide_password=False),
            INVENTORY_URL=inventory.url,
            STOCK_CACHE_TTL_S="0",  # reservations alone: their scripted replies
            SHUTDOWN_DELAY_S="0.5",
        ) as service:
            answers: list[httpx.Response] = []

            def order() -> None:
                answers.append(
                    httpx.post(
                        f"{service.base}/v1/orders",
                        json={"sku": "SKU-1", "quantity": 1},
                        headers={"Idempotency-Key": "in-flight"},
                        timeout=10,
                    )
                )

            client = threading.Thread(target=order)
            client.start()
            deadline = time.monotonic() + 5
            while not inventory.received and time.monotonic() < deadline:
                await _pause()
            service.process.send_signal(signal.SIGTERM)  # the order is waiting on the inventory
            while client.is_alive():
                await _pause()
            exit_code = service.process.wait(timeout=30)
    assert [answer.status_code for answer in answers] == [201]
    assert exit_code == 0


async def _pause() -> None:
    await asyncio.sleep(0.05)  # lets the scripted inventory service, on this event loop, answer
