"""The audit trail: who did what to which resource, when, from which request, and how it ended.

Standards: Security / Audit logging and Governance / Accountability. Tuned by `AUDIT_RETENTION_S`
(default 400 days) and `AUDIT_PURGE_INTERVAL_S`; RUNBOOK.md "Reading the audit trail" queries it.

`record(session, ...)` adds one row to `audit_events` in the caller's session: it commits with the
action it describes, or rolls back with it, so the trail never claims what did not happen nor misses
what did. The request id and trace id come from the request's context (`platform/middleware.py`),
the actor from the `actor_id` bound in structlog's contextvars by the authentication layer (or an
explicit `actor=`), "anonymous" without either.

Append-only in the database, not by convention: the runtime role may INSERT and SELECT rows, never
UPDATE or DELETE them (migration 0005). Rows past the retention are deleted by
`purge_audit_events()`, a SECURITY DEFINER function owned by the migration role that deletes nothing
younger than 90 days whoever calls it; the worker calls it on its schedule (`platform/jobs/periodic.py`),
and `python -m <package> purge-audit-events` does once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import structlog
from opentelemetry import trace
from sqlalchemy import BigInteger
from sqlalchemy import CheckConstraint
from sqlalchemy import DateTime
from sqlalchemy import Identity
from sqlalchemy import Index
from sqlalchemy import Text
from sqlalchemy import func
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from {{ cookiecutter.package_name }}.db.base import Base
from {{ cookiecutter.package_name }}.db.batches import in_batches

log = structlog.get_logger(__name__)

Outcome = Literal["success", "failure", "denied"]
ANONYMOUS = "anonymous"
# The database refuses to purge rows younger than this (purge_audit_events in migration 0005).
RETENTION_FLOOR_S = 90 * 24 * 3600
PURGE_BATCH = 1000


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        CheckConstraint("outcome IN ('success', 'failure', 'denied')", name="outcome"),
        Index("ix_audit_events_occurred_at", "occurred_at"),
        Index("ix_audit_events_resource", "resource_type", "resource_id"),
    )
    # RETURNING fills id and occurred_at: the runtime role cannot write either (column grants).
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp()
    )
    actor: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    resource_type: Mapped[str] = mapped_column(Text)
    resource_id: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(Text)
    trace_id: Mapped[str | None] = mapped_column(Text)


def record(
    session: AsyncSession,
    *,
    action: str,
    resource_type: str,
    resource_id: str | None,
    outcome: Outcome,
    actor: str | None = None,
) -> AuditEvent:
    """Add an audit row to `session`'s transaction (written at its next flush or commit).
    `action` is a stable dotted name, `order.created`; `actor` defaults to the request's principal."""
    context = structlog.contextvars.get_contextvars()
    span = trace.get_current_span().get_span_context()
    event = AuditEvent(
        actor=actor or str(context.get("actor_id") or ANONYMOUS),
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        outcome=outcome,
        request_id=context.get("request_id"),
        trace_id=format(span.trace_id, "032x") if span.is_valid else None,
    )
    session.add(event)
    return event


async def purge_expired(engine: AsyncEngine, *, retention_s: float, batch: int = PURGE_BATCH) -> int:
    """Delete rows older than `retention_s`, `batch` per short transaction, through the database's
    purge_audit_events() (the runtime role cannot DELETE them itself). Returns the rows deleted."""
    statement = text("SELECT purge_audit_events(make_interval(secs => :retention_s), :batch)")

    async def step(connection: AsyncConnection) -> int:
        return int(await connection.scalar(statement, {"retention_s": retention_s, "batch": batch}) or 0)

    return await in_batches(engine, step, batch=batch)
