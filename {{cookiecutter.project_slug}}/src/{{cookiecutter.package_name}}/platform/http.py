"""The one factory for outbound HTTP clients.

Standards: Reliability / Timeouts (explicit connect, read, write and pool timeouts on every call),
Resource Management (one pooled client per process, opened by the lifespan and closed on shutdown)
and Observability / Tracing (every call carries `traceparent` and `X-Request-ID`; `baggage` only
with `TRACE_FORWARD_BAGGAGE=true`). Tuned by
`HTTP_CONNECT_TIMEOUT_S`, `HTTP_READ_TIMEOUT_S`, `HTTP_MAX_CONNECTIONS`.

Build clients here, never with `httpx.AsyncClient(...)` elsewhere (a test enforces it): a bare client
has a 5 s default timeout on everything, no limits and no propagation. Calls to another service go
through `resilience.Upstream`, which adds the deadline, retries and a circuit breaker.
"""

from __future__ import annotations

import httpx
import structlog
from opentelemetry import propagate
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from {{ cookiecutter.package_name }}.settings import Settings


def timeouts(settings: Settings) -> httpx.Timeout:
    return httpx.Timeout(
        connect=settings.http_connect_timeout_s,
        read=settings.http_read_timeout_s,
        write=settings.http_read_timeout_s,
        pool=settings.http_connect_timeout_s,
    )


_TRACE_CONTEXT = TraceContextTextMapPropagator()


async def _propagate_context(request: httpx.Request) -> None:
    """Continue the trace and the request id in the callee (an httpx request hook). Baggage stays
    here: it is whatever the caller put in it, and may be data the upstream must not see."""
    _TRACE_CONTEXT.inject(request.headers)
    _propagate_request_id(request)


async def _propagate_context_and_baggage(request: httpx.Request) -> None:
    """As `_propagate_context`, with the configured propagators (OTEL_PROPAGATORS), baggage included."""
    propagate.inject(request.headers)
    _propagate_request_id(request)


def _propagate_request_id(request: httpx.Request) -> None:
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    if isinstance(request_id, str) and "x-request-id" not in request.headers:
        request.headers["x-request-id"] = request_id


def create_client(settings: Settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=timeouts(settings),
        limits=httpx.Limits(
            max_connections=settings.http_max_connections,
            max_keepalive_connections=settings.http_max_connections,
            keepalive_expiry=30.0,
        ),
        event_hooks={
            "request": [
                _propagate_context_and_baggage if settings.trace_forward_baggage else _propagate_context
            ]
        },
        follow_redirects=False,  # a redirect from a service we call is a bug to see, not to follow
        trust_env=False,  # no proxy or netrc picked up by accident from the host's environment
    )
