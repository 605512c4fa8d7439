"""Errors as RFC 9457 problem details (`application/problem+json`), mapped in one place.

Standard: Error Handling (categorisation, centralised handling, client-safe messages) and
API Design / Error Contracts. Every error response has `type`, `title`, `status`, `detail` and
`request_id`; validation errors add `errors`, one entry per field. The `type` is a stable relative
URI, `/problems/<slug>`: clients branch on it, never on `detail`.

The tree, expected errors first:

    ServiceError                 an expected outcome a client can act on (4xx, or 503 for a
      NotFound        404        dependency that is down); raise it from services
      Conflict        409
      BadRequest      400
      Unauthorized    401        no or an invalid bearer token, with WWW-Authenticate (`auth`)
      Forbidden       403        a valid token without the scope (`auth`)
      TooManyRequests 429        `rate-limited`, with Retry-After (`ratelimit`)
    database pool exhausted      503 `database-busy` with Retry-After, after DB_POOL_TIMEOUT_S
    DatabaseUnreachable          503 `database-unavailable` with Retry-After: a server refused or
                                 silent at connect (`db/session.py` raises it)
    DBAPIError (SQLAlchemy)      by the SQLSTATE the server sent:
      a transient state          503 with Retry-After, one `type` per state (`TRANSIENT_SQLSTATES`):
                                 lock or statement timeout, deadlock, serialization failure, too
                                 many connections, server not accepting connections, session
                                 terminated; logged as a warning with the SQLSTATE (no stack) and
                                 counted in `database_transient_errors_total{sqlstate}`
      a dropped connection       503 `database-unavailable` with Retry-After
      anything else              a bug (bad SQL, a constraint we did not expect): 500, logged with
                                 its stack trace as `database_error`
    shed for load                503 `overloaded` with Retry-After: 1 (`shedding`, `overloaded`)
    HTTPException (Starlette)    routing and protocol: 404 unknown route, 405, 413 body too large
    RequestValidationError       400 malformed JSON, 422 fields that fail their schema
    any other exception          a bug: logged once with its stack trace, answered 500 with no
                                 internals (see `middleware.RequestContextMiddleware`)
"""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import orjson
import structlog
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from pydantic import Field
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import InterfaceError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from {{ cookiecutter.package_name }}.db.session import DatabaseUnreachable
from {{ cookiecutter.package_name }}.platform.metrics import Metrics

PROBLEM_JSON = "application/problem+json"

# Database states that pass: the same request, retried shortly, can succeed. SQLSTATE -> `type` slug.
TRANSIENT_SQLSTATES = {
    "55P03": "database-lock-timeout",  # lock_not_available: waited DB_LOCK_TIMEOUT_S for a lock
    "57014": "database-statement-timeout",  # query_canceled: DB_STATEMENT_TIMEOUT_S, or a cancel
    "40P01": "database-deadlock",  # deadlock_detected: this transaction was the one rolled back
    "40001": "database-serialization-failure",  # serialization_failure: a concurrent write won
    "53300": "database-too-many-connections",  # too_many_connections: server, role or database limit
    "57P03": "database-not-accepting-connections",  # cannot_connect_now: starting up, shutting down
    "57P01": "database-connection-terminated",  # admin_shutdown: pg_terminate_backend, fast shutdown
}

log = structlog.get_logger(__name__)


class ServiceError(Exception):
    """An expected failure, safe to show: its `detail` goes to the client as written."""

    status: int = 500
    slug: str = "internal-error"

    def __init__(
        self, detail: str, *, slug: str | None = None, headers: Mapping[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if slug is not None:
            self.slug = slug
        self.headers = dict(headers or {})
        self.extra = extra


class BadRequest(ServiceError):
    status, slug = 400, "bad-request"


class NotFound(ServiceError):
    status, slug = 404, "not-found"


class Conflict(ServiceError):
    status, slug = 409, "conflict"


class TooManyRequests(ServiceError):
    status, slug = 429, "rate-limited"


class ServiceUnavailable(ServiceError):
    status, slug = 503, "service-unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    slug = "database-unavailable"

    def __init__(self, detail: str = "The database is unavailable; retry shortly.") -> None:
        super().__init__(detail, headers={"Retry-After": "1"})


class PayloadTooLarge(HTTPException):
    """Raised from inside `receive` when a body grows past `MAX_BODY_BYTES`. An HTTPException so
    that FastAPI's body parsing passes it through instead of turning it into a 400."""

    def __init__(self, limit: int) -> None:
        # Connection: close, since the rest of the body is still on the wire and will not be read.
        super().__init__(
            413, f"The request body is larger than {limit} bytes.", headers={"connection": "close"}
        )


_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
    429: "too-many-requests",
    500: "internal-error",
    503: "service-unavailable",
}


class Problem(BaseModel):
    """The error body (RFC 9457), for the OpenAPI document."""

    type: str = Field(examples=["/problems/not-found"])
    title: str
    status: int
    detail: str
    request_id: str | None
    errors: list[dict[str, Any]] | None = Field(default=None, description="Validation errors, one per field.")


PROBLEM_RESPONSES: dict[int, dict[str, Any]] = {
    code: {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": HTTPStatus(code).phrase}
    for code in (400, 401, 403, 404, 409, 413, 422, 429, 500, 503, 504)
}


def problem(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    request_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    """Build a problem+json response; the single way this service answers an error."""
    body: dict[str, Any] = {
        "type": f"/problems/{slug or _SLUGS.get(status, 'error')}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "request_id": request_id,
        **extra,
    }
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _request_id(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    log.info("service_error", status=exc.status, problem=exc.slug, detail=exc.detail)
    return _render(request, exc)


def _render(request: Request, exc: ServiceError) -> Response:
    return problem(
        exc.status,
        exc.detail,
        slug=exc.slug,
        request_id=_request_id(request),
        headers=exc.headers,
        **exc.extra,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        # Starlette names the methods of the first route that matched the path only; a path served
        # by several routes (a GET list and a POST create) must list them all (RFC 9110, 15.5.6).
        exc.headers = {**(exc.headers or {}), "Allow": ", ".join(_allowed_methods(request))}
    return _render_http(request, exc)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> list[str]:
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.routes
        )
    ]


def _render_http(request: Request, exc: HTTPException) -> Response:
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).description
    return problem(exc.status_code, detail, request_id=_request_id(request), headers=exc.headers)


def _field_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    # `loc`, `msg` and `type` only: pydantic's `input` and `ctx` can echo secrets or internals.
    return [
        {
            "loc": [str(part) for part in error.get("loc", ())],
            "msg": error.get("msg"),
            "type": error.get("type"),
        }
        for error in errors
    ]


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = _field_errors(exc.errors())
    if any(error["type"] == "json_invalid" for error in errors):
        return problem(
            400, "The request body is not valid JSON.", slug="malformed-json", request_id=_request_id(request)
        )
    return problem(
        422, "The request does not match its schema.", request_id=_request_id(request), errors=errors
    )


async def _pool_exhausted(request: Request, exc: Exception) -> Response:
    log.warning("db_pool_exhausted", error=str(exc))
    busy = ServiceUnavailable(
        "The service is at capacity; retry shortly.", slug="database-busy", headers={"Retry-After": "1"}
    )
    return _render(request, busy)


async def _database_unreachable(request: Request, exc: Exception) -> Response:
    log.warning("database_unavailable", error=type(exc.__cause__).__name__)
    return _render(request, DatabaseUnavailable())


def _sqlstates(exc: DBAPIError) -> Iterator[str]:
    """The SQLSTATEs behind `exc`, outermost first. Usually one, on the driver's error (`exc.orig`).
    A FATAL error the server sends before it closes the connection (57P01) reaches asyncpg as a
    lost connection (08003) whose cause is the server's error, hence the walk down `__cause__`."""
    error: BaseException | None = exc.orig
    while error is not None:
        sqlstate = getattr(error, "sqlstate", None)
        if isinstance(sqlstate, str):
            yield sqlstate
        error = error.__cause__


async def _database_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DBAPIError)
    sqlstate = next((state for state in _sqlstates(exc) if state in TRANSIENT_SQLSTATES), None)
    if sqlstate is not None:
        slug = TRANSIENT_SQLSTATES[sqlstate]
        log.warning("database_transient_error", sqlstate=sqlstate, problem=slug)
        metrics: Metrics = request.app.state.metrics
        metrics.database_transient_errors.labels(sqlstate).inc()
        transient = ServiceUnavailable(
            "The database could not serve this request just now; retry shortly.",
            slug=slug,
            headers={"Retry-After": "1"},
        )
        return _render(request, transient)
    if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
        # The driver's own error (asyncpg's ConnectionDoesNotExistError), not the DB-API wrapper
        # SQLAlchemy's adapter raises from it, whose name is always "Error".
        driver_error = getattr(exc.orig, "__cause__", None) or exc.orig
        log.warning("database_unavailable", error=type(driver_error).__name__)
        return _render(request, DatabaseUnavailable())
    # Any other database error is a bug (a constraint we did not expect, bad SQL): a 500.
    log.error("database_error", exc_info=exc)
    return internal_error(_request_id(request))


def overloaded(request_id: str | None) -> Response:
    """The answer to a request shed for load (`shedding`): come back in a second, or elsewhere."""
    return problem(
        503,
        "The service is handling as many requests as it can; retry shortly.",
        slug="overloaded",
        request_id=request_id,
        headers={"Retry-After": "1"},
    )


def internal_error(request_id: str | None) -> Response:
    """The answer to a bug: nothing about it leaves the process but the request id to quote."""
    return problem(
        500, "An unexpected error occurred; quote the request_id when reporting it.", request_id=request_id
    )


def answer(request: Request, exc: Exception) -> Response | None:
    """The answer an expected error gets (a ServiceError or an HTTPException), built without
    logging it; None for anything else. For code that must know the answer before the handlers
    send it (idempotency stores a refusal to replay it)."""
    if isinstance(exc, ServiceError):
        return _render(request, exc)
    if isinstance(exc, HTTPException):
        return _render_http(request, exc)
    return None


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(PoolTimeout, _pool_exhausted)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(DatabaseUnreachable, _database_unreachable)
