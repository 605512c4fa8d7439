"""Distributed tracing with OpenTelemetry.

Standard: Observability / Tracing. The server span for each request is started by
`middleware.RequestContextMiddleware`, continuing the caller's W3C `traceparent`; database calls
are child spans (`instrument_engine`), as are outbound HTTP calls. Spans leave through a batch
processor to OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and are dropped otherwise (ids are
still made, so logs still carry them). The SDK reads the other standard variables itself:
`OTEL_TRACES_SAMPLER`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`, ...
`OTEL_SDK_DISABLED=true` turns tracing off.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind
from opentelemetry.trace import Status
from opentelemetry.trace import StatusCode
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from {{ cookiecutter.package_name }}.settings import Settings

INSTRUMENTATION_NAME = "{{ cookiecutter.package_name }}"


def build_tracer_provider(settings: Settings) -> TracerProvider | None:
    """A provider for this app (not the global one, so tests can build many apps), or None when
    `OTEL_SDK_DISABLED` is set."""
    if settings.otel_sdk_disabled:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": settings.otel_service_name}))
    if settings.otel_exporter_otlp_endpoint:
        # Imported here: the exporter pulls in protobuf, which only costs start-up when it is used.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def get_tracer(provider: TracerProvider | None) -> trace.Tracer:
    if provider is None:
        return trace.NoOpTracer()
    return provider.get_tracer(INSTRUMENTATION_NAME)


def instrument_engine(engine: AsyncEngine, tracer: trace.Tracer) -> None:
    """Make every statement a CLIENT span, child of the request's span.

    Twenty lines of engine events rather than opentelemetry-instrumentation-sqlalchemy: that package
    declares SQLAlchemy < 2.1 and instruments nothing on 2.1, and it monkeypatches `create_engine`
    and `Engine.connect` process-wide. Statements are parameterised, so their text holds no values.
    """
    sync_engine = engine.sync_engine
    database = sync_engine.url.database

    def before(_conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool) -> None:
        operation = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SQL"
        context._otel_span = tracer.start_span(
            operation,
            kind=SpanKind.CLIENT,
            attributes={
                "db.system.name": "postgresql",
                "db.namespace": database or "",
                "db.operation.name": operation,
                "db.query.text": statement,
            },
        )

    def after(_conn: Any, _cursor: Any, _statement: str, _params: Any, context: Any, _many: bool) -> None:
        span = getattr(context, "_otel_span", None)
        if span is not None:
            span.end()

    def failed(exception_context: ExceptionContext) -> None:
        span = getattr(exception_context.execution_context, "_otel_span", None)
        if span is not None:
            span.set_status(Status(StatusCode.ERROR, type(exception_context.original_exception).__name__))
            span.end()

    event.listen(sync_engine, "before_cursor_execute", before)
    event.listen(sync_engine, "after_cursor_execute", after)
    event.listen(sync_engine, "handle_error", failed)
