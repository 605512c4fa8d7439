"""The shared count: a `limits` storage on the service's own PostgreSQL, one statement per check.

Fixed window, because its one storage call (`incr`) is one atomic upsert: the row of a key holds the
window's hits and when it ends; a hit on an ended window starts a new one. The moving window needs a
row (or an array entry) per hit, the sliding window counter two windows read and a conditional
increment: more rows, more statements. The fixed window's cost is known: a caller can spend the
limit at the end of one window and again at the start of the next (up to twice the limit in a
short span); for abuse protection that is acceptable.

The table is UNLOGGED: no WAL for a counter that is rewritten on every request. A crash empties it
(every caller starts a fresh window) and standbys do not have it; neither matters for a limit.
Every time is the database's (`now()`), so replicas with skewed clocks count the same windows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

import structlog
from limits.aio.storage import Storage
from sqlalchemy import BigInteger
from sqlalchemy import DateTime
from sqlalchemy import Text
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from {{ cookiecutter.package_name }}.db.base import Base
from {{ cookiecutter.package_name }}.db.batches import in_batches
from {{ cookiecutter.package_name }}.db.session import DatabaseUnreachable

log = structlog.get_logger(__name__)

PURGE_BATCH = 1000


class RateLimitWindow(Base):
    __tablename__ = "rate_limits"
    __table_args__ = {"prefixes": ["UNLOGGED"]}

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    hits: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# One round trip: count the hit in the current window, or start a new one if it ended; return the
# count and the seconds until the window ends (the database's clock).
_HIT = text("""
INSERT INTO rate_limits AS w (key, hits, expires_at)
VALUES (:key, :amount, now() + make_interval(secs => :expiry_s))
ON CONFLICT (key) DO UPDATE SET
    hits = CASE WHEN w.expires_at <= now() THEN excluded.hits ELSE w.hits + excluded.hits END,
    expires_at = CASE WHEN w.expires_at <= now() THEN excluded.expires_at ELSE w.expires_at END
RETURNING hits, extract(epoch FROM expires_at - now())::float8 AS reset_s
""").columns(hits=BigInteger)

_GET = text(
    "SELECT hits, extract(epoch FROM expires_at - now())::float8 AS reset_s"
    " FROM rate_limits WHERE key = :key AND expires_at > now()"
)

# The exceptions a store that is down or slow raises: the limiter admits the request on them.
STORE_ERRORS = (SQLAlchemyError, DatabaseUnreachable, OSError, asyncio.TimeoutError)


class DatabaseStorage(Storage):
    """A `limits.aio` storage in PostgreSQL for the fixed window strategy (`FixedWindowRateLimiter`
    works on it). The limiter calls `hit` directly: `limits`' strategy answers `hit` with a bool, and
    the `RateLimit` header's remaining count and reset would cost two more statements (`get`,
    `get_expiry`); `hit` returns both from the one upsert. Each call takes a pooled connection for one
    statement in autocommit and gives it back, outside any request's transaction."""

    STORAGE_SCHEME = None  # built with an engine, never from a URI

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__()
        self.engine = engine

    @property
    def base_exceptions(self) -> tuple[type[Exception], ...]:
        return STORE_ERRORS

    async def hit(self, key: str, expiry_s: float, amount: int = 1) -> tuple[int, float]:
        """Count `amount` hits on `key`: the window's hits so far and the seconds until it ends."""
        async with self._autocommit() as connection:
            row = (await connection.execute(_HIT, {"key": key, "amount": amount, "expiry_s": expiry_s})).one()
        return int(row.hits), max(float(row.reset_s), 0.0)

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return (await self.hit(key, expiry, amount))[0]

    async def get(self, key: str) -> int:
        async with self._autocommit() as connection:
            row = (await connection.execute(_GET, {"key": key})).first()
        return 0 if row is None else int(row.hits)

    async def get_expiry(self, key: str) -> float:
        async with self._autocommit() as connection:
            row = (await connection.execute(_GET, {"key": key})).first()
        return time.time() + (0.0 if row is None else max(float(row.reset_s), 0.0))

    async def check(self) -> bool:
        try:
            async with self._autocommit() as connection:
                await connection.execute(text("SELECT 1"))
        except STORE_ERRORS:
            return False
        return True

    async def reset(self) -> int | None:
        async with self._autocommit() as connection:
            return (await connection.execute(text("DELETE FROM rate_limits"))).rowcount

    async def clear(self, key: str) -> None:
        async with self._autocommit() as connection:
            await connection.execute(text("DELETE FROM rate_limits WHERE key = :key"), {"key": key})

    @asynccontextmanager
    async def _autocommit(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as connection:
            yield await connection.execution_options(isolation_level="AUTOCOMMIT")


async def purge_expired(engine: AsyncEngine, *, batch: int = PURGE_BATCH) -> int:
    """Delete ended windows, `batch` rows per short transaction; SKIP LOCKED, so a purge never waits
    for a request counting its hit (nor for another replica's purge). No index on `expires_at`: it
    would be one more index to write on every new window, and the table holds only the keys of the
    last few windows, which a sequential scan reads quickly. Returns the rows deleted."""
    statement = text(
        "DELETE FROM rate_limits WHERE ctid IN ("
        " SELECT ctid FROM rate_limits WHERE expires_at <= now() LIMIT :batch FOR UPDATE SKIP LOCKED)"
    )

    async def step(connection: AsyncConnection) -> int:
        return (await connection.execute(statement, {"batch": batch})).rowcount

    return await in_batches(engine, step, batch=batch)
