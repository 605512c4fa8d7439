"""Expired records go: in small batches, by a periodic job of the worker
(`platform/jobs/periodic.py`) and by a command."""

from __future__ import annotations

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = structlog.get_logger(__name__)

PURGE_BATCH = 1000


async def purge_expired(engine: AsyncEngine, *, batch: int = PURGE_BATCH) -> int:
    """Delete expired records, `batch` rows per short transaction; SKIP LOCKED, so replicas
    purging at once neither wait for each other nor for requests. Returns the rows deleted."""
    deleted = 0
    statement = text(
        "DELETE FROM idempotency_keys WHERE ctid IN ("
        " SELECT ctid FROM idempotency_keys WHERE expires_at < now() LIMIT :batch FOR UPDATE SKIP LOCKED)"
    )
    while True:
        async with engine.begin() as connection:
            count = (await connection.execute(statement, {"batch": batch})).rowcount
        deleted += count
        if count < batch:
            return deleted
