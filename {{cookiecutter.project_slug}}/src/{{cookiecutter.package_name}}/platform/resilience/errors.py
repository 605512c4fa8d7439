"""What a caller of an upstream sees when the call fails: `ServiceError`s, mapped to problem+json
by `platform/errors.py` like any other.

    UpstreamUnavailable         503 `upstream-unavailable` (failed after retries; unreachable; our
                                own connection pool full), `Retry-After` when the upstream sent one
      CircuitOpen               503 `circuit-open`, `Retry-After` = how long the circuit stays open
    UpstreamTimeout             504 `upstream-timeout`: no answer within the attempt timeouts and
                                the request's deadline
    UpstreamResponseTooLarge    502 `upstream-response-too-large`: an answer past
                                `HTTP_MAX_RESPONSE_BYTES` (not retried: it would be as large again)
"""

from __future__ import annotations

import math

from {{ cookiecutter.package_name }}.platform.errors import ServiceError


class UpstreamUnavailable(ServiceError):
    status, slug = 503, "upstream-unavailable"


class UpstreamTimeout(ServiceError):
    status, slug = 504, "upstream-timeout"


class UpstreamResponseTooLarge(ServiceError):
    status, slug = 502, "upstream-response-too-large"


class CircuitOpen(UpstreamUnavailable):
    slug = "circuit-open"

    def __init__(self, upstream: str, retry_after_s: float) -> None:
        seconds = max(1, math.ceil(retry_after_s))
        super().__init__(
            f"{upstream} is failing; calls to it are paused for {seconds}s.",
            headers={"Retry-After": str(seconds)},
        )
