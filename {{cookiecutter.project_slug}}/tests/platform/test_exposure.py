"""Nothing sensitive exposed: metrics and docs off the public surface, a /ready that cannot be used
to make PostgreSQL fork, safe response headers, no credentials or personal data in logs, and a
trace that outsiders only join when trusted."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI
from fastapi import Response
from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic import BaseModel
from pydantic import ValidationError
from sqlalchemy import event
from sqlalchemy.engine import URL

from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.platform import http
from {{ cookiecutter.package_name }}.platform import logs
from {{ cookiecutter.package_name }}.platform.logs import PersonalData
from {{ cookiecutter.package_name }}.settings import Settings

from tests.conftest import make_settings
from tests.conftest import serving
from tests.upstream import ScriptedUpstream

LogLines = Any
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN_ID = 0x00F067AA0BA902B7


async def test_concurrent_ready_probes_share_one_database_check(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """200 probes at once open one connection, not 200; a second later the answer is fresh again."""
    connects = 0

    def counted(*_: object) -> None:
        nonlocal connects
        connects += 1

    event.listen(app.state.readiness.engine.sync_engine, "connect", counted)
    answers = await asyncio.gather(*(client.get("/ready") for _ in range(200)))
    assert [answer.status_code for answer in answers] == [200] * 200
    assert connects == 1
    for _ in range(20):  # one after another, within READY_CACHE_S: the same answer
        assert (await client.get("/ready")).status_code == 200
    assert connects == 1

    await asyncio.sleep(app.state.settings.ready_cache_s + 0.1)
    assert (await client.get("/ready")).status_code == 200
    assert connects == 2  # older than READY_CACHE_S: checked again


async def test_shutting_down_shows_at_once_whatever_the_cache_holds(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    assert (await client.get("/ready")).status_code == 200
    app.state.readiness.shutting_down = True
    response = await client.get("/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["shutdown"].startswith("draining")


async def test_answers_forbid_sniffing_and_storing(app: FastAPI, client: httpx.AsyncClient) -> None:
    @app.get("/cacheable")
    async def cacheable(response: Response) -> dict[str, bool]:
        response.headers["Cache-Control"] = "public, max-age=60"
        return {"ok": True}

    for path in ("/health", "/nowhere"):
        response = await client.get(path)
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"
    kept = await client.get("/cacheable")
    assert kept.headers.get_list("cache-control") == ["public, max-age=60"]  # a route's own, not doubled
    assert kept.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("overrides", "served"),
    [
        ({"environment": "development"}, True),
        # AUTH_MODE=none: production refuses to start without authentication configured.
        ({"environment": "production", "auth_mode": "none"}, False),
        ({"environment": "production", "auth_mode": "none", "docs_enabled": True}, True),
    ],
    ids=["development", "production", "production-DOCS_ENABLED"],
)
async def test_docs_are_off_in_production_unless_enabled(
    database_url: URL, overrides: dict[str, Any], served: bool
) -> None:
    async with serving(create_app(make_settings(database_url, **overrides))) as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await client.get(path)).status_code == (200 if served else 404), path


def test_metrics_cannot_share_the_api_port() -> None:
    with pytest.raises(ValidationError, match="METRICS_PORT must differ from PORT"):
        Settings(port=8000, metrics_port=8000)


class _Customer(BaseModel):
    name: str
    email: Annotated[str, PersonalData()]
    phone: Annotated[str | None, PersonalData()] = None


async def test_credentials_and_personal_data_never_reach_a_log_line(log_lines: LogLines) -> None:
    assert {"email", "phone"} <= logs.protect_personal_data()
    customer = _Customer(name="Ada", email="ada@example.com", phone="+44 20 7946 0958")
    log = structlog.get_logger("test")
    log.info(
        "with_secrets",
        authorization="Bearer eyJhbGciOiJSUzI1NiJ9.secret-token",
        headers={"Cookie": "session=s3ss10n", "Accept": "application/json"},
        customer=customer,
        email=customer.email,
        items=[{"phone": customer.phone}],
        nested={"a": {"b": {"c": {"password": "deep-s3cret"}}}},  # as deep as redaction goes (4)
    )
    logging.getLogger("library").warning("from a library", extra={"authorization": "Basic dXNlcjpwYXNz"})

    raw = json.dumps(log_lines())
    for secret in ("secret-token", "s3ss10n", "ada@example.com", "7946", "dXNlcjpwYXNz", "deep-s3cret"):
        assert secret not in raw
    [line] = [line for line in log_lines() if line["event"] == "with_secrets"]
    assert line["authorization"] == logs.REDACTED
    assert line["headers"] == {"Cookie": logs.REDACTED, "Accept": "application/json"}
    assert line["customer"] == {"name": "Ada", "email": logs.REDACTED, "phone": logs.REDACTED}
    assert line["items"] == [{"phone": logs.REDACTED}]


def _exporter(app: FastAPI) -> InMemorySpanExporter:
    provider: TracerProvider = app.state.tracer_provider
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def test_an_edge_service_starts_its_own_trace_linked_to_the_callers(database_url: URL) -> None:
    app = create_app(make_settings(database_url, trace_trust_incoming=False))
    exporter = _exporter(app)
    async with serving(app) as client:
        traceparent = f"00-{TRACE_ID:032x}-{CALLER_SPAN_ID:016x}-01"
        await client.get("/v1/anything", headers={"traceparent": traceparent})
    [server] = [span for span in exporter.get_finished_spans() if span.kind == SpanKind.SERVER]
    assert server.context.trace_id != TRACE_ID
    assert server.parent is None
    [link] = server.links
    assert (link.context.trace_id, link.context.span_id) == (TRACE_ID, CALLER_SPAN_ID)


@pytest.mark.parametrize("forward", [False, True], ids=["default", "TRACE_FORWARD_BAGGAGE"])
async def test_baggage_reaches_upstreams_only_when_asked(forward: bool) -> None:
    caller = trace.SpanContext(TRACE_ID, CALLER_SPAN_ID, is_remote=True, trace_flags=trace.TraceFlags(1))
    context = baggage.set_baggage(
        "user.email", "ada@example.com", trace.set_span_in_context(trace.NonRecordingSpan(caller))
    )
    token = otel_context.attach(context)
    try:
        async with (
            ScriptedUpstream() as upstream,
            http.create_client(Settings(trace_forward_baggage=forward)) as client,
        ):
            # As inside a request: the middleware has bound its id, which goes along either way.
            with structlog.contextvars.bound_contextvars(request_id="req-baggage"):
                await client.get(upstream.url)
    finally:
        otel_context.detach(token)
    [received] = upstream.received
    assert received.headers["traceparent"].split("-")[1] == f"{TRACE_ID:032x}"
    assert ("baggage" in received.headers) is forward
    assert received.headers["x-request-id"] == "req-baggage"
