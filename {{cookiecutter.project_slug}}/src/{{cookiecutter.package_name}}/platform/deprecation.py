"""A deprecated route tells its clients so, on every answer, in headers their libraries can read.

Standard: API Design / Versioning (backward compatibility, deprecation before removal). One
declaration on the route: `openapi_extra=deprecation.announce(since=..., sunset=..., notice=...)`.
It marks the operation `deprecated` in the OpenAPI document, and `middleware.RequestContextMiddleware`
adds to each of the route's answers, errors included:

- `Deprecation: @<unix seconds>` (RFC 9745): since when the route is deprecated;
- `Sunset: <HTTP-date>` (RFC 8594): after when it may stop answering;
- `Link: <notice>; rel="deprecation"` when a notice (the migration guide) is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC
from datetime import date
from datetime import datetime
from datetime import time
from email.utils import format_datetime
from functools import cache
from typing import Any

SINCE, SUNSET, NOTICE = "x-deprecated-since", "x-sunset", "x-deprecation-notice"


def announce(*, since: date, sunset: date, notice: str | None = None) -> dict[str, Any]:
    if sunset <= since:
        raise ValueError(f"a sunset ({sunset}) must come after the deprecation ({since})")
    extra: dict[str, Any] = {"deprecated": True, SINCE: since.isoformat(), SUNSET: sunset.isoformat()}
    if notice is not None:
        extra[NOTICE] = notice
    return extra


def headers(openapi_extra: Mapping[str, Any] | None) -> tuple[tuple[bytes, bytes], ...]:
    """The headers a route's answers carry: none unless it was announced deprecated."""
    if not openapi_extra or SUNSET not in openapi_extra:
        return ()
    return _headers(openapi_extra[SINCE], openapi_extra[SUNSET], openapi_extra.get(NOTICE))


@cache
def _headers(since: str, sunset: str, notice: str | None) -> tuple[tuple[bytes, bytes], ...]:
    def midnight(day: str) -> datetime:
        return datetime.combine(date.fromisoformat(day), time(), UTC)

    announced = [
        (b"deprecation", f"@{int(midnight(since).timestamp())}".encode()),
        (b"sunset", format_datetime(midnight(sunset), usegmt=True).encode()),
    ]
    if notice is not None:
        announced.append((b"link", f'<{notice}>; rel="deprecation"; type="text/html"'.encode()))
    return tuple(announced)
