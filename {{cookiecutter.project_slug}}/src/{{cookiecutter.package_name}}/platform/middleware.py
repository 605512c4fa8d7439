"""The request context: id, trace span, body limit, access log, metrics, last-resort errors.

Standards: Observability (correlation ids, tracing, metrics, one access line per request) and
Error Handling (no stack trace reaches a client). One pure-ASGI middleware does all of it: each
extra middleware layer costs throughput, and Starlette's base-class HTTP middleware would also
break contextvar propagation. Tuned by `MAX_BODY_BYTES`, `MAX_CONCURRENT_REQUESTS`; span export by the `OTEL_*` variables (see `tracing`).

Per request, in order: take `X-Request-ID` when it is safe (else make one) and bind it to the log
context; continue the caller's W3C `traceparent` in a SERVER span (or, with
`TRACE_TRUST_INCOMING=false`, start a new trace linked to it); refuse a body over the limit
with 413 before reading it; past `MAX_CONCURRENT_REQUESTS` in flight, answer 503 `overloaded` at
once (`shedding`; the probes are exempt); run the app under the request's deadline (`REQUEST_TIMEOUT_S`, see
`deadline`); answer 500 problem+json for an exception that escaped
every handler (logged once, with its stack trace); add `X-Content-Type-Options: nosniff` and
`Cache-Control: no-store` (unless the route set its own) and `traceresponse` (the trace that served
it, W3C Trace Context Level 2; none with `OTEL_SDK_DISABLED`) to every answer; write one `http_request`
line and record the request in the metrics (its exported trace as the latency's exemplar).
"""

from __future__ import annotations

import random
import re
import time

import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.trace import Status
from opentelemetry.trace import StatusCode
from starlette.types import ASGIApp
from starlette.types import Message
from starlette.types import Receive
from starlette.types import Scope
from starlette.types import Send

from {{ cookiecutter.package_name }}.platform import deadline
from {{ cookiecutter.package_name }}.platform import deprecation
from {{ cookiecutter.package_name }}.platform import errors
from {{ cookiecutter.package_name }}.platform import ratelimit
from {{ cookiecutter.package_name }}.platform import shutdown
from {{ cookiecutter.package_name }}.platform import tracing
from {{ cookiecutter.package_name }}.platform.metrics import Metrics
from {{ cookiecutter.package_name }}.platform.shedding import EXEMPT_PATHS
from {{ cookiecutter.package_name }}.platform.shedding import Admission

REQUEST_ID_HEADER = "x-request-id"
# A caller's id is kept only when it cannot forge log lines or bloat them.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Probes and scrapes are counted and logged, but not traced: they would drown the real traces.
# Their log lines still carry ids, from a span that is never recorded or exported.
UNTRACED_PATHS = frozenset({"/health", "/ready"})
# On every answer: browsers must not guess a JSON body's type (content sniffing turns data into script).
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_NO_STORE = (b"cache-control", b"no-store")

log = structlog.get_logger(__name__)


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        tracer: trace.Tracer,
        metrics: Metrics,
        max_body_bytes: int,
        request_timeout_s: float,
        trust_incoming_trace: bool = True,
        max_concurrent_requests: int = 1_000_000,
    ) -> None:
        self.app = app
        self.admission = Admission(max_concurrent_requests)
        self.request_timeout_s = request_timeout_s
        self.tracer = tracer
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.trust_incoming_trace = trust_incoming_trace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        started = time.perf_counter()
        # One pass over the raw headers (names are lower-case in ASGI; the first of a repeated one
        # wins, as in Starlette's `Headers`), then dictionary lookups: the request id, the body's
        # length, and whatever the configured propagators read.
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(scope["headers"])
        }
        request_id = headers.get(REQUEST_ID_HEADER, "")
        if not _SAFE_REQUEST_ID.fullmatch(request_id):
            # 128 random bits, as unique as a uuid4: an id, not a secret, so no system call for it.
            request_id = f"{random.getrandbits(128):032x}"
        # A copy: `request.state` must be this request's alone. uvicorn copies the lifespan state per
        # request, but not every server (or test transport) does.
        scope["state"] = {**scope.get("state", {}), "request_id": request_id}
        method: str = scope["method"]
        path: str = scope["path"]

        parent = propagate.extract(headers)
        links = None
        if not self.trust_incoming_trace:
            # An edge service: its own trace (and no caller's baggage), linked to the caller's.
            caller = trace.get_current_span(parent).get_span_context()
            parent = otel_context.Context()
            links = [trace.Link(caller)] if caller.is_valid else None
        # Admission first: a shed request must cost as little as possible (no span is recorded for
        # it; it is still logged and counted). The probes are never shed.
        admitted = path not in EXEMPT_PATHS and self.admission.enter()
        shed = path not in EXEMPT_PATHS and not admitted
        if path in UNTRACED_PATHS or shed:
            span = tracing.unrecorded_span(parent)
        else:
            span = self.tracer.start_span(
                method,
                context=parent,
                kind=SpanKind.SERVER,
                attributes={"http.request.method": method, "url.path": path},
                links=links,
            )
        token = otel_context.attach(trace.set_span_in_context(span, parent))

        status = 500
        response_started = False
        # When the last byte of the response went out: what the latency measures. Background
        # tasks run after it, inside `self.app`, and must not count.
        finished: float | None = None

        async def send_with_context(message: Message) -> None:
            nonlocal status, response_started, finished
            if message["type"] == "http.response.body":
                await send(message)
                if not message.get("more_body", False):
                    finished = time.perf_counter()
                return
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                # Appended as raw bytes: the app never sets X-Request-ID itself, so no lookup.
                headers = [*message.get("headers", ()), (b"x-request-id", request_id.encode()), _NOSNIFF]
                ids = span.get_span_context()
                if ids.is_valid:  # not with OTEL_SDK_DISABLED: all-zero ids are no trace
                    headers.append((b"traceresponse", _traceresponse(ids)))
                # API answers are per caller: no shared cache keeps one, unless a route says otherwise.
                if not any(name.lower() == b"cache-control" for name, _ in headers):
                    headers.append(_NO_STORE)
                if shutdown.is_draining():  # kept-alive clients must reconnect elsewhere
                    headers.append((b"connection", b"close"))
                # A deprecated route says so on every answer, errors included (`deprecation`).
                headers.extend(deprecation.headers(getattr(scope.get("route"), "openapi_extra", None)))
                # A limited route's RateLimit headers, likewise on every answer (`ratelimit`).
                headers.extend(ratelimit.headers(scope))
                message["headers"] = headers
            await send(message)

        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                await self._too_large(request_id, send_with_context)
            elif shed:
                self.metrics.shed.inc()
                await errors.overloaded(request_id)({"type": "http"}, _no_body, send_with_context)
            else:
                deadline_token = deadline.start(self.request_timeout_s)  # `deadline`: every wait inside
                try:
                    await self.app(scope, self._limited(receive), send_with_context)
                finally:
                    deadline.reset(deadline_token)
        except errors.PayloadTooLarge:
            # Only reached when a route reads the body itself; FastAPI's parsing answers it first.
            if not response_started:
                await self._too_large(request_id, send_with_context)
        except Exception:
            log.exception("unhandled_exception", method=method, path=path)
            if not response_started:
                await errors.internal_error(request_id)(scope, receive, send_with_context)
            status = 500
        finally:
            if admitted:
                self.admission.leave()
            route = _route_template(scope)
            duration = (finished or time.perf_counter()) - started
            if span.is_recording():
                span.update_name(f"{method} {route}")
                span.set_attributes({"http.route": route, "http.response.status_code": status})
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            log.info(
                "http_request",
                method=method,
                route=route,
                path=path,
                status=status,
                duration_ms=round(duration * 1000, 2),
            )
            # The latency's exemplar links to a trace that holds this request's span: one recorded
            # and sampled (exported). Without an exporter nothing is kept, and no exemplar is added.
            ids = span.get_span_context()
            trace_id = f"{ids.trace_id:032x}" if ids.trace_flags.sampled and span.is_recording() else None
            self.metrics.observe(method, route, status, duration, trace_id)
            span.end()
            otel_context.detach(token)
            # `actor_id` is bound by `auth.authenticate`, in this same context: this line carries it.
            structlog.contextvars.unbind_contextvars("request_id", "actor_id")

    def _limited(self, receive: Receive) -> Receive:
        """Count body bytes as they arrive; a chunked body past the limit stops being read."""
        limit = self.max_body_bytes
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise errors.PayloadTooLarge(limit)
            return message

        return limited_receive

    async def _too_large(self, request_id: str, send: Send) -> None:
        response = errors.problem(
            413, f"The request body is larger than {self.max_body_bytes} bytes.", request_id=request_id
        )
        # Connection: close, since the unread body is still on the wire.
        response.headers["connection"] = "close"
        await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def _traceresponse(ids: trace.SpanContext) -> bytes:
    """W3C Trace Context Level 2's response header: the caller learns which trace served it."""
    return f"00-{ids.trace_id:032x}-{ids.span_id:016x}-{ids.trace_flags:02x}".encode()


def _route_template(scope: Scope) -> str:
    """The matched route's template (`/v1/items/{item_id}`), never the raw path: raw paths would
    give metrics one series per id."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    return template if isinstance(template, str) else "unmatched"
