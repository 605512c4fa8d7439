"""What is retried, and when the upstream says to wait: the retry loop's vocabulary.

A failure is retried when it is transient (408, 429, 502, 503, 504, a timeout, a connection
error), never when it is an answer (2xx-4xx), our own full pool, or an answer too large (it would
be as large again). `Retry-After` is read in both of its forms.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC
from datetime import datetime
from email.utils import parsedate_to_datetime

import httpx
from tenacity import RetryCallState
from tenacity.stop import stop_base

# Answers that mean "the upstream is struggling": counted by the breaker; retried when safe.
FAILURE_STATUSES = frozenset({408, 429})
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

_DELAY_SECONDS = re.compile(r"[0-9]{1,9}")  # ASCII digits only: str.isdigit() also takes '²'


class FailedStatus(Exception):
    """A response that counts as a failure (408, 429, 5xx); internal to the retry loop."""

    def __init__(self, response: httpx.Response, retry_after_s: float | None) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    """No time is left in the request's deadline for another attempt."""


class ResponseTooLarge(Exception):
    """The answer grew past `HTTP_MAX_RESPONSE_BYTES`; reading stopped there."""


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds from now, in either form (RFC 9110): delay-seconds or an HTTP-date."""
    if value is None:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def transient(error: BaseException) -> bool:
    if isinstance(error, FailedStatus):
        return error.response.status_code in RETRY_STATUSES
    # A full pool of our own is not the upstream's trouble: retrying would only queue more calls.
    return isinstance(error, httpx.TransportError | TimeoutError) and not isinstance(error, httpx.PoolTimeout)


def never(_: BaseException) -> bool:
    return False


class StopWhen(stop_base):
    """A plain predicate as a tenacity stop condition (what `stop_any` is typed to take)."""

    def __init__(self, predicate: Callable[[RetryCallState], bool]) -> None:
        self.predicate = predicate

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.predicate(retry_state)
