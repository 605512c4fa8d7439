"""A deadline per inbound request.

Standard: Reliability / Timeouts. `middleware.RequestContextMiddleware` starts the clock when a
request arrives (`REQUEST_TIMEOUT_S`, default 10 s); outbound calls and their retries
(`resilience.Upstream`) size their timeouts to what is left and never start past it, so a slow
dependency cannot hold a request (and its client) longer than the deadline. Outside a request the
caller's own budget applies.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from contextvars import Token

# Absolute time on the monotonic clock when the current request's budget runs out.
_expires_at: ContextVar[float | None] = ContextVar("deadline_expires_at", default=None)


def start(seconds: float) -> Token[float | None]:
    """Give the current context `seconds` from now (a deadline already set can only shorten);
    `reset` with the token ends it. The middleware's form: no context-manager object per request."""
    expires = time.monotonic() + seconds
    current = _expires_at.get()
    return _expires_at.set(expires if current is None else min(current, expires))


def reset(token: Token[float | None]) -> None:
    _expires_at.reset(token)


@contextmanager
def scope(seconds: float) -> Iterator[None]:
    """Give the code inside `seconds` from now; a nested scope can only shorten the deadline."""
    token = start(seconds)
    try:
        yield
    finally:
        reset(token)


def remaining(default: float) -> float:
    """Seconds left before the current deadline (never negative); `default` when there is none."""
    expires = _expires_at.get()
    if expires is None:
        return default
    return max(0.0, expires - time.monotonic())
