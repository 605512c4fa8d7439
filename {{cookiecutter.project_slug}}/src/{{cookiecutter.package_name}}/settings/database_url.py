"""DATABASE_URL and MIGRATION_DATABASE_URL as the service's driver takes them.

Any PostgreSQL URL a hosting provider hands out (`postgres://`, `postgresql://`, a
`postgresql+driver://` URL, the unix-socket form) is rewritten to asyncpg's; libpq's query parameters
that asyncpg lacks are refused at start-up, naming the setting to use instead. The URL holds the
password: no error message here ever echoes it.
"""

from __future__ import annotations

from sqlalchemy.engine import URL
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

# The async driver the service speaks; a plain `postgresql://` URL is rewritten to it.
ASYNC_DRIVER = "postgresql+asyncpg"

# libpq query parameters that have an asyncpg equivalent, and those that are refused with the
# setting to use instead (asyncpg would otherwise fail on every connection with a TypeError).
_SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
_REFUSED_PARAMETERS = {
    "connect_timeout": "use DB_CONNECT_TIMEOUT_S",
    "application_name": "use SERVICE_NAME",
    "options": "use the DB_*_TIMEOUT_S settings",
}


def to_async_url(raw: str) -> URL:
    """Accept `postgresql://`, `postgres://` or any `postgresql+driver://` URL, including the
    unix-socket form `postgresql://user@/db?host=/path`, and pick the service's async driver.
    Error messages never echo the URL: it holds the password."""
    if raw.startswith("postgres://"):
        raw = "postgresql://" + raw.removeprefix("postgres://")
    try:
        url = make_url(raw)
        _ = url.port  # parsing the port is where a password with an unencoded ':' or '@' fails
    except (ArgumentError, ValueError):
        raise ValueError(
            "not a valid URL (expected postgresql://user:password@host:5432/database; "
            "percent-encode special characters in the password)"
        ) from None
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"must be a postgresql:// URL, not {url.drivername}://")
    query = dict(url.query)
    for name, instead in _REFUSED_PARAMETERS.items():
        if name in query:
            raise ValueError(f"the query parameter {name!r} is not supported: {instead}")
    if "sslmode" in query:
        mode = query.pop("sslmode")
        if mode not in _SSL_MODES:
            raise ValueError(f"sslmode must be one of {', '.join(sorted(_SSL_MODES))}")
        query["ssl"] = mode  # asyncpg's name for the same modes
    return url.set(drivername=ASYNC_DRIVER, query=query)
