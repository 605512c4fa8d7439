"""SIGTERM on a real process: not ready at once, still serving through the drain (telling kept-alive
clients to reconnect), then exit 0; a request longer than GRACEFUL_TIMEOUT_S is cut at that bound."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

from tests.app import APP
from tests.service import running

DELAY_S = 1.5


def _until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_sigterm_drains_then_exits_zero(database_url: URL, tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    with running(
        database_url.render_as_string(hide_password=False),
        log=log,
        SHUTDOWN_DELAY_S=str(DELAY_S),
        LOG_LEVEL="INFO",
    ) as service:
        # One kept-alive connection, as a client behind a connection pool holds it.
        with httpx.Client(base_url=service.base, timeout=2) as client:
            before = client.get("/ready")
            assert before.status_code == 200
            assert before.headers.get("connection") != "close"
            sent = time.monotonic()
            service.process.send_signal(signal.SIGTERM)

            # The signal is handled soon, not at once: the first 503 is waited for, not slept for.
            readings: list[httpx.Response] = []
            _until(lambda: readings.append(client.get("/ready")) or readings[-1].status_code == 503)
            ready = readings[-1]
            # Load balancers stop routing here...
            assert ready.json()["checks"]["shutdown"].startswith("draining")
            health = client.get("/health")
            assert health.status_code == 200  # ...while it still serves
            # ...and kept-alive clients are told to reconnect, to a pod that is routed to.
            assert ready.headers["connection"] == "close"
            assert health.headers["connection"] == "close"

        exit_code = service.process.wait(timeout=30)
        took = time.monotonic() - sent
    assert exit_code == 0
    assert DELAY_S <= took < DELAY_S + 5
    # Said once, when the drain begins, with how long it lasts.
    lines = [json.loads(line) for line in log.read_text().splitlines()]  # every one JSON
    assert [line["delay_s"] for line in lines if line["event"] == "shutdown_draining"] == [DELAY_S]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{service.base}/health", timeout=1)


def test_a_request_longer_than_the_graceful_timeout_is_cut_and_the_process_exits(
    database_url: URL, tmp_path: Path
) -> None:
    delay_s, grace_s = 0.5, 1
    answers: list[httpx.Response | Exception] = []

    def hang(base: str) -> None:
        # Held by tests/app.py until released, which this test never does (its own limit is 30 s).
        try:
            answers.append(
                httpx.post(
                    f"{base}/_test/effects",
                    json={"hold": "forever"},
                    headers={"Idempotency-Key": str(uuid.uuid4())},
                    timeout=20,
                )
            )
        except httpx.HTTPError as exc:
            answers.append(exc)

    with running(
        database_url.render_as_string(hide_password=False),
        app=APP,
        SHUTDOWN_DELAY_S=str(delay_s),
        GRACEFUL_TIMEOUT_S=str(grace_s),
        TEST_SIGNALS_DIR=str(tmp_path),
    ) as service:
        client = threading.Thread(target=hang, args=(service.base,))
        client.start()
        _until((tmp_path / "forever.held").exists)  # the request is in its handler
        sent = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        try:
            exit_code = service.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("the process outlived GRACEFUL_TIMEOUT_S by 20 s: the hanging request held it")
        finally:
            took = time.monotonic() - sent
        client.join(timeout=30)
    assert exit_code == 0
    # It waited the drain and the whole grace for the request, then cut it: not before, not much after.
    assert delay_s + grace_s <= took < delay_s + grace_s + 10
    [answer] = answers
    assert not isinstance(answer, httpx.Response) or answer.status_code >= 500
