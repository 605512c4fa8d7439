from __future__ import annotations

import httpx
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.trace import StatusCode
from sqlalchemy import text
from sqlalchemy.engine import URL

from {{ cookiecutter.package_name }}.db.session import SessionDep
from {{ cookiecutter.package_name }}.main import create_app

from tests.conftest import make_settings
from tests.conftest import serving

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_SPAN_ID = 0xB7AD6B7169203331


def _exporter(app: FastAPI) -> InMemorySpanExporter:
    provider: TracerProvider = app.state.tracer_provider
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def test_traceparent_is_continued_and_database_calls_are_child_spans(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    exporter = _exporter(app)
    traceparent = f"00-{TRACE_ID:032x}-{PARENT_SPAN_ID:016x}-01"
    response = await client.get("/v1/does-not-matter-for-tracing", headers={"traceparent": traceparent})
    assert response.status_code == 404

    [server] = [span for span in exporter.get_finished_spans() if span.kind == SpanKind.SERVER]
    assert server.context.trace_id == TRACE_ID
    # The caller can see which trace served it.
    assert response.headers["traceresponse"] == f"00-{TRACE_ID:032x}-{server.context.span_id:016x}-01"
    assert server.parent is not None
    assert server.parent.span_id == PARENT_SPAN_ID
    assert server.attributes is not None
    assert server.attributes["http.request.method"] == "GET"
    assert server.attributes["http.response.status_code"] == 404
    assert server.attributes["url.path"] == "/v1/does-not-matter-for-tracing"


async def test_statements_are_client_spans_under_the_request_span(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    exporter = _exporter(app)

    @app.get("/traced-query")
    async def traced_query(session: SessionDep) -> dict[str, int]:
        return {"one": int(await session.scalar(text("SELECT 1")) or 0)}

    assert (await client.get("/traced-query")).json() == {"one": 1}
    spans = exporter.get_finished_spans()
    [server] = [span for span in spans if span.kind == SpanKind.SERVER]
    queries = [span for span in spans if span.kind == SpanKind.CLIENT and span.name == "SELECT"]
    assert queries, [span.name for span in spans]
    for query in queries:
        assert query.context.trace_id == server.context.trace_id
        assert query.parent is not None
        assert query.parent.span_id == server.context.span_id
        assert query.attributes is not None
        assert query.attributes["db.system.name"] == "postgresql"
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/traced-query"
    assert server.name == "GET /traced-query"


async def test_a_failed_statement_ends_its_span_as_an_error(app: FastAPI, client: httpx.AsyncClient) -> None:
    exporter = _exporter(app)

    @app.get("/failed-query")
    async def failed_query(session: SessionDep) -> None:
        await session.execute(text("SELECT 1 / 0"))

    assert (await client.get("/failed-query")).status_code >= 400
    [query] = [
        span
        for span in exporter.get_finished_spans()
        if span.kind == SpanKind.CLIENT
        and span.attributes
        and span.attributes["db.query.text"] == "SELECT 1 / 0"
    ]
    assert query.status.status_code == StatusCode.ERROR
    assert query.status.description  # the error's type


async def test_probes_are_not_traced(app: FastAPI, client: httpx.AsyncClient) -> None:
    exporter = _exporter(app)
    await client.get("/health")
    await client.get("/ready")
    assert exporter.get_finished_spans() == ()


async def test_with_the_sdk_disabled_nothing_is_traced_and_no_trace_is_claimed(database_url: URL) -> None:
    app = create_app(make_settings(database_url, otel_sdk_disabled=True))
    async with serving(app) as client:
        traceparent = f"00-{TRACE_ID:032x}-{PARENT_SPAN_ID:016x}-01"
        answered = await client.get("/v1/anything", headers={"traceparent": traceparent})
    assert app.state.tracer_provider is None
    assert answered.status_code == 404  # served, as problem+json
    assert answered.headers["content-type"] == "application/problem+json"
    # An all-zero traceresponse would name a trace that does not exist.
    assert "traceresponse" not in answered.headers
