"""Zero failed requests while two instances restart one after the other behind a load balancer:
idempotent writes and reads on the test app (`tests/app.py`), every answered write committed."""

from __future__ import annotations

from uuid import uuid4

import httpx
from sqlalchemy.engine import URL

from tests.app import APP
from tests.app import answered
from tests.rolling import rolling_restart

RUN = uuid4().hex  # this run's keys: counted afterwards


async def _write_then_read(client: httpx.AsyncClient, _: str) -> httpx.Response:
    written = await client.post(
        "/_test/effects", json={}, headers={"Idempotency-Key": f"{RUN}-{uuid4().hex}"}
    )
    return written if written.status_code != 201 else await client.get("/_test/read")


async def test_a_rolling_restart_fails_no_request_and_loses_no_write(database_url: URL) -> None:
    statuses, exits = await rolling_restart(
        database_url.render_as_string(hide_password=False), _write_then_read, app=APP
    )
    assert len(statuses) > 50  # the load really ran through both restarts
    assert [status for status in statuses if status != 200] == []
    assert await answered(database_url, RUN) == len(statuses)  # every write answered is stored
    assert all(code_took < 10 for code_took in exits)
