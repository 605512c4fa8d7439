"""The queue's tables: `jobs` (one row per job until it succeeds) and `job_schedules` (one row per
periodic job, holding when it next runs). Migration 0007_jobs creates both."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger
from sqlalchemy import CheckConstraint
from sqlalchemy import DateTime
from sqlalchemy import Identity
from sqlalchemy import Index
from sqlalchemy import Text
from sqlalchemy import func
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from {{ cookiecutter.package_name }}.db.base import Base

STATUSES = ("ready", "running", "dead")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint("status IN ('ready', 'running', 'dead')", name="status"),
        # What the worker's claim scans: the due ready jobs, oldest first, and expired leases.
        Index("ix_jobs_status_run_at", "status", "run_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(Text, server_default=text("'ready'"))
    # Runs started: counted when a worker claims the job, so a job that kills its workers ends dead.
    attempts: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # When it may run next (enqueued: at once; after a failure: the backoff's end).
    run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # The worker running it and until when: past `locked_until` another worker takes it over.
    locked_by: Mapped[str | None] = mapped_column(Text)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    # The W3C traceparent of the code that enqueued it: the worker's span continues that trace.
    traceparent: Mapped[str | None] = mapped_column(Text)


class JobSchedule(Base):
    __tablename__ = "job_schedules"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    next_run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
