from __future__ import annotations

import logging
import logging.config
import re
from collections.abc import Callable
from datetime import UTC
from datetime import date
from datetime import datetime
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import structlog
import uvicorn.config
from fastapi import FastAPI
from pydantic import BaseModel

from tests.conftest import captured_logs

LogLines = Callable[[], list[dict[str, Any]]]

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


async def test_every_line_in_a_request_carries_request_and_trace_ids(
    app: FastAPI, client: httpx.AsyncClient, log_lines: LogLines
) -> None:
    @app.get("/logs-twice")
    async def logs_twice() -> dict[str, str]:
        structlog.get_logger("some.handler").info("handler_said")
        logging.getLogger("some.library").warning("library said")
        return {}

    before = len(log_lines())
    response = await client.get("/logs-twice", headers={"traceparent": TRACEPARENT})
    request_id = response.headers["x-request-id"]

    # Every line written while the request ran, none dropped: a line without the ids fails here.
    # Excepted, by what it is: the test client's own line (httpx logs each request it sends).
    lines = [line for line in log_lines()[before:] if "http://testserver/" not in line["event"]]
    events = {line["event"] for line in lines}
    assert {"handler_said", "library said", "http_request"} <= events, events
    for line in lines:
        assert line.get("request_id") == request_id, line
        assert line["trace_id"] == TRACE_ID  # the caller's trace, continued
        assert len(line["span_id"]) == 16
        assert line["span_id"] != "b7ad6b7169203331"  # our span, a child of the caller's


async def test_one_access_line_per_request_with_route_template(
    client: httpx.AsyncClient, log_lines: LogLines
) -> None:
    response = await client.get("/ready")
    access = [line for line in log_lines() if line["event"] == "http_request"]
    assert len(access) == 1
    line = access[0]
    assert line["request_id"] == response.headers["x-request-id"]
    assert (line["method"], line["route"], line["status"]) == ("GET", "/ready", 200)
    assert isinstance(line["duration_ms"], float)
    assert line["level"] == "info"
    # RFC 3339 in UTC with `Z`, as log pipelines parse it, and the time the request was served.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z", line["timestamp"]), line["timestamp"]
    assert abs(datetime.fromisoformat(line["timestamp"]) - datetime.now(UTC)) < timedelta(minutes=1)

    # The request's ids end with it: a line written after it (here in the same task, as a
    # background job's or the next request's could be) claims no request.
    structlog.get_logger("test").info("after_the_request")
    [after] = [line for line in log_lines() if line["event"] == "after_the_request"]
    assert "request_id" not in after


async def test_a_safe_request_id_is_kept_and_an_unsafe_one_replaced(client: httpx.AsyncClient) -> None:
    kept = await client.get("/health", headers={"x-request-id": "abc-123.retry:2"})
    assert kept.headers["x-request-id"] == "abc-123.retry:2"

    for unsafe in ("a" * 129, 'x"\n{"forged": true}', "with space"):
        replaced = await client.get("/health", headers={"x-request-id": unsafe.replace("\n", "")})
        assert replaced.headers["x-request-id"] != unsafe.replace("\n", "")
        assert len(replaced.headers["x-request-id"]) == 32


async def test_standard_library_records_are_json_with_the_request_context(
    app: FastAPI, client: httpx.AsyncClient, log_lines: LogLines
) -> None:
    @app.get("/stdlib-log")
    async def stdlib_log() -> dict[str, str]:
        logging.getLogger("some.library").warning("library said %s", "hello")
        return {}

    response = await client.get("/stdlib-log", headers={"traceparent": TRACEPARENT})
    [line] = [line for line in log_lines() if line.get("logger") == "some.library"]
    assert line["event"] == "library said hello"
    assert line["level"] == "warning"
    assert line["request_id"] == response.headers["x-request-id"]
    assert line["trace_id"] == TRACE_ID


def test_uvicorn_started_by_its_own_command_line_logs_json_too() -> None:
    # `uvicorn module:app` configures its loggers (plain-text handlers, not propagating) before the
    # app's factory runs; configure() must take uvicorn's lines over anyway.
    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)
    with captured_logs() as lines:
        logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
        logging.getLogger("uvicorn").warning("Invalid HTTP request received.")
    assert [(line["logger"], line["event"]) for line in lines()] == [
        ("uvicorn.error", "Started server process [42]"),
        ("uvicorn", "Invalid HTTP request received."),
    ]


def test_a_model_in_a_line_is_written_as_its_json_form(log_lines: LogLines) -> None:
    class Priced(BaseModel):
        total: Decimal
        on: date

    structlog.get_logger("test").info("priced", order=Priced(total=Decimal("1.50"), on=date(2026, 12, 1)))
    [line] = [line for line in log_lines() if line["event"] == "priced"]
    assert line["order"] == {"total": "1.50", "on": "2026-12-01"}  # as the API would answer it


async def test_probe_lines_carry_ids_too(client: httpx.AsyncClient, log_lines: LogLines) -> None:
    response = await client.get("/ready", headers={"traceparent": TRACEPARENT})
    [line] = [line for line in log_lines() if line["event"] == "http_request"]
    assert line["request_id"] == response.headers["x-request-id"]
    assert line["trace_id"] == TRACE_ID
    assert len(line["span_id"]) == 16

    await client.get("/health")
    untraced = [line for line in log_lines() if line["event"] == "http_request"][-1]
    assert len(untraced["trace_id"]) == 32
