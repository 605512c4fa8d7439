"""Expired records go: in small batches, by a periodic job of the worker
(`platform/jobs/periodic.py`) and by a command."""

from __future__ import annotations

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.asyncio import AsyncEngine

from {{ cookiecutter.package_name }}.db.batches import in_batches

log = structlog.get_logger(__name__)

PURGE_BATCH = 1000


async def purge_expired(engine: AsyncEngine, *, batch: int = PURGE_BATCH) -> int:
    """Delete expired records, `batch` rows per short transaction; SKIP LOCKED, so replicas
    purging at once neither wait for each other nor for requests. Returns the rows deleted."""
    statement = text(
        "DELETE FROM idempotency_keys WHERE ctid IN ("
        " SELECT ctid FROM idempotency_keys WHERE expires_at < now() LIMIT :batch FOR UPDATE SKIP LOCKED)"
    )

    async def step(connection: AsyncConnection) -> int:
        return (await connection.execute(statement, {"batch": batch})).rowcount

    return await in_batches(engine, step, batch=batch)
