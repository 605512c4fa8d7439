"""SIGTERM on a real process: not ready at once, still serving through the drain, then exit 0."""

from __future__ import annotations

import signal
import time

import httpx
import pytest
from sqlalchemy.engine import URL

from tests.service import running

DELAY_S = 1.5


def test_sigterm_drains_then_exits_zero(database_url: URL) -> None:
    with running(
        database_url.render_as_string(hide_password=False), SHUTDOWN_DELAY_S=str(DELAY_S)
    ) as service:
        with httpx.Client(base_url=service.base, timeout=2) as client:
            assert client.get("/ready").status_code == 200
            sent = time.monotonic()
            service.process.send_signal(signal.SIGTERM)
            time.sleep(0.2)

            ready = client.get("/ready")
            assert ready.status_code == 503  # load balancers stop routing here...
            assert ready.json()["checks"]["shutdown"].startswith("draining")
            assert client.get("/health").status_code == 200  # ...while it still serves

        exit_code = service.process.wait(timeout=30)
        took = time.monotonic() - sent
    assert exit_code == 0
    assert DELAY_S <= took < DELAY_S + 5
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{service.base}/health", timeout=1)
