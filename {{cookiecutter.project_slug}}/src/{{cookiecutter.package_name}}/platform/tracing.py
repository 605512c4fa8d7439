"""Distributed tracing with OpenTelemetry.

Standard: Observability / Tracing. The server span for each request is started by
`middleware.RequestContextMiddleware`, continuing the caller's W3C `traceparent`; database calls
are child spans (`instrument_engine`), as are outbound HTTP calls. Spans leave through a batch
processor to OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. When it is not, nothing would
ever read a span, so none is recorded: each request still gets fresh ids (`unrecorded_span`), so
its log lines, `traceresponse` and outbound `traceparent` carry them, at a fraction of the SDK's
cost per span (bench/README.md). The SDK reads the other standard variables itself:
`OTEL_TRACES_SAMPLER`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`, ...
`OTEL_SDK_DISABLED=true` turns tracing off (no ids either).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind
from opentelemetry.trace import Status
from opentelemetry.trace import StatusCode
from opentelemetry.util.types import Attributes
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from {{ cookiecutter.package_name }}.settings import Settings

INSTRUMENTATION_NAME = "{{ cookiecutter.package_name }}"


class Provider(TracerProvider):
    """The SDK's provider, knowing whether anything reads its spans: the OTLP exporter's batch
    processor, or any processor added later (a test's in-memory exporter, a console exporter)."""

    recording = False

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        self.recording = True


def build_tracer_provider(settings: Settings) -> Provider | None:
    """A provider for this app (not the global one, so tests can build many apps), or None when
    `OTEL_SDK_DISABLED` is set."""
    if settings.otel_sdk_disabled:
        return None
    provider = Provider(resource=Resource.create({"service.name": settings.otel_service_name}))
    if settings.otel_exporter_otlp_endpoint:
        # Imported here: the exporter pulls in protobuf, which only costs start-up when it is used.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


class Tracer(trace.NoOpTracer):
    """The app's tracer: the SDK's while its provider records, `unrecorded_span` otherwise, and
    the API's no-op tracer when the SDK is disabled. (`start_as_current_span` is inherited: it
    starts a span with `start_span` and makes it current, as the SDK's own does.)"""

    def __init__(self, provider: Provider | None) -> None:
        self._provider = provider
        self._sdk = provider.get_tracer(INSTRUMENTATION_NAME) if provider is not None else None

    @property
    def recording(self) -> bool:
        return self._provider is not None and self._provider.recording

    def start_span(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        if self._sdk is None:
            return trace.INVALID_SPAN
        if self.recording:
            return self._sdk.start_span(
                name, context, kind, attributes, links, start_time, record_exception, set_status_on_exception
            )
        return unrecorded_span(context)


def get_tracer(provider: Provider | None) -> Tracer:
    return Tracer(provider)


def unrecorded_span(parent: otel_context.Context | None) -> trace.Span:
    """A span nothing records, with ids of its own: it continues the caller's trace and sampling
    decision, or starts an unsampled trace (this service keeps nothing of it)."""
    caller = trace.get_current_span(parent).get_span_context()
    span_id = random.getrandbits(64) or 1  # 0 is the invalid id
    if caller.is_valid:
        ids = trace.SpanContext(
            caller.trace_id,
            span_id,
            is_remote=False,
            trace_flags=caller.trace_flags,
            trace_state=caller.trace_state,
        )
    else:
        ids = trace.SpanContext(random.getrandbits(128) or 1, span_id, is_remote=False)
    return trace.NonRecordingSpan(ids)


def instrument_engine(engine: AsyncEngine, tracer: Tracer) -> None:
    """Make every statement a CLIENT span, child of the request's span.

    Twenty lines of engine events rather than opentelemetry-instrumentation-sqlalchemy: that package
    declares SQLAlchemy < 2.1 and instruments nothing on 2.1, and it monkeypatches `create_engine`
    and `Engine.connect` process-wide. Statements are parameterised, so their text holds no values.
    """
    sync_engine = engine.sync_engine
    database = sync_engine.url.database

    def before(_conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool) -> None:
        if not tracer.recording:  # no span nobody reads; the request's own ids are in its log lines
            return
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
