"""Enqueue in the caller's transaction; claim, finish, retry and re-run, in short transactions."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from opentelemetry import propagate
from sqlalchemy import Insert
from sqlalchemy import insert
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.package_name }}.platform.jobs.models import Job

log = structlog.get_logger(__name__)

# The longest last_error kept: a traceback's last line is what an operator needs, not a page.
MAX_ERROR_CHARS = 2000


def enqueue(session: AsyncSession, kind: str, payload: Mapping[str, Any]) -> Job:
    """Add a job to the caller's transaction: it exists if and only if that transaction commits.
    The current trace's `traceparent` goes with it, so the worker's span continues this trace."""
    job = Job(**_row(kind, payload))
    session.add(job)
    log.info("job_enqueued", kind=kind)
    return job


def enqueue_statement(kind: str, payload: Mapping[str, Any]) -> Insert:
    """`enqueue` for code that holds a Core connection rather than a session."""
    return insert(Job).values(**_row(kind, payload))


def _row(kind: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {"kind": kind, "payload": dict(payload), "traceparent": carrier.get("traceparent")}


@dataclass(frozen=True)
class Claimed:
    id: int
    kind: str
    payload: dict[str, Any]
    attempts: int
    traceparent: str | None
    created_at: datetime


# Due ready jobs and jobs whose worker's lease ran out (it died), oldest first. SKIP LOCKED: workers
# claiming at once take different rows and never wait for each other.
_CLAIM = text(
    """
    UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_by = :worker,
                    locked_until = now() + make_interval(secs => :lease_s)
    WHERE id IN (
        SELECT id FROM jobs
        WHERE (status = 'ready' AND run_at <= now()) OR (status = 'running' AND locked_until < now())
        ORDER BY run_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id, kind, payload, attempts, traceparent, created_at
    """
)


async def claim(engine: AsyncEngine, *, worker: str, limit: int, lease_s: float) -> list[Claimed]:
    async with engine.begin() as connection:
        rows = await connection.execute(_CLAIM, {"worker": worker, "limit": limit, "lease_s": lease_s})
        return [Claimed(*row) for row in rows]


# Every transition names the worker and the run (`id = :id AND status = 'running' AND locked_by =
# :worker AND attempts = :attempts`): a job taken over after its lease ran out (its worker was
# presumed dead) is no longer this worker's to finish.
_SUCCEEDED = text(
    "DELETE FROM jobs WHERE id = :id AND status = 'running' AND locked_by = :worker AND attempts = :attempts"
)
_FAILED = text(
    "UPDATE jobs SET status = :status, last_error = :error, locked_by = NULL, locked_until = NULL,"
    " run_at = now() + make_interval(secs => :delay_s)"
    " WHERE id = :id AND status = 'running' AND locked_by = :worker AND attempts = :attempts"
)
_HANDED_BACK = text(
    "UPDATE jobs SET status = 'ready', attempts = attempts - 1, locked_by = NULL, locked_until = NULL,"
    " run_at = now() WHERE id = :id AND status = 'running' AND locked_by = :worker AND attempts = :attempts"
)


async def succeeded(engine: AsyncEngine, job: Claimed, *, worker: str) -> bool:
    """Delete the job (done jobs are not kept: the logs and metrics say what ran)."""
    async with engine.begin() as connection:
        result = await connection.execute(
            _SUCCEEDED,
            {"id": job.id, "worker": worker, "attempts": job.attempts},
        )
    return bool(result.rowcount)


def backoff_s(attempts: int, *, base_s: float, max_s: float) -> float:
    """Full jitter (AWS Architecture Blog, "Exponential Backoff and Jitter"): uniformly random
    between 0 and base * 2^(attempts-1), capped, so failed jobs do not come back in lockstep."""
    ceiling = min(max_s, base_s * 2.0 ** min(attempts - 1, 62))
    return random.uniform(0, ceiling)  # noqa: S311 (jitter spreads retries; nothing secret)


async def failed(
    engine: AsyncEngine, job: Claimed, *, worker: str, error: str, max_attempts: int, delay_s: float
) -> str:
    """Schedule the next attempt after `delay_s`, or, past `max_attempts`, keep it as dead.
    Returns the outcome: `retry` or `dead` (`lost` when the job is no longer this worker's)."""
    outcome = "dead" if job.attempts >= max_attempts else "retry"
    async with engine.begin() as connection:
        result = await connection.execute(
            _FAILED,
            {
                "id": job.id,
                "worker": worker,
                "attempts": job.attempts,
                "status": "dead" if outcome == "dead" else "ready",
                "error": error[:MAX_ERROR_CHARS],
                "delay_s": delay_s,
            },
        )
    return outcome if result.rowcount else "lost"


async def handed_back(engine: AsyncEngine, job: Claimed, *, worker: str) -> None:
    """Give an interrupted job back (a worker stopping): ready at once, the attempt not counted."""
    async with engine.begin() as connection:
        await connection.execute(
            _HANDED_BACK,
            {"id": job.id, "worker": worker, "attempts": job.attempts},
        )


async def dead_as_claimed(engine: AsyncEngine, job: Claimed, *, worker: str, max_attempts: int) -> bool:
    """A job claimed past its last attempt (its workers kept dying mid-run) is kept as dead, not run."""
    if job.attempts <= max_attempts:
        return False
    await failed(
        engine,
        job,
        worker=worker,
        error="its worker stopped mid-run on every attempt (lease expired)",
        max_attempts=max_attempts,
        delay_s=0,
    )
    return True


@dataclass(frozen=True)
class Listed:
    id: int
    kind: str
    status: str
    attempts: int
    created_at: datetime
    run_at: datetime
    last_error: str | None


async def list_jobs(engine: AsyncEngine, *, status: str | None, limit: int = 100) -> list[Listed]:
    query = "SELECT id, kind, status, attempts, created_at, run_at, last_error FROM jobs"
    if status is not None:
        query += " WHERE status = :status"
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(query + " ORDER BY id LIMIT :limit"), {"status": status, "limit": limit}
        )
        return [Listed(*row) for row in rows]


async def retry(engine: AsyncEngine, job_id: int) -> bool:
    """Put a dead job back in the queue with fresh attempts; False when no dead job has that id."""
    async with engine.begin() as connection:
        result = await connection.execute(
            text(
                "UPDATE jobs SET status = 'ready', attempts = 0, run_at = now() WHERE id = :id AND status = 'dead'"
            ),
            {"id": job_id},
        )
    return bool(result.rowcount)


@dataclass(frozen=True)
class Depth:
    ready: int  # due now
    waiting: int  # ready, but backing off until run_at
    running: int
    dead: int
    oldest_ready_age_s: float


async def depth(engine: AsyncEngine) -> Depth:
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text(
                    """
                    SELECT count(*) FILTER (WHERE status = 'ready' AND run_at <= now()),
                           count(*) FILTER (WHERE status = 'ready' AND run_at > now()),
                           count(*) FILTER (WHERE status = 'running'),
                           count(*) FILTER (WHERE status = 'dead'),
                           coalesce(extract(epoch FROM now() - min(run_at)
                                    FILTER (WHERE status = 'ready' AND run_at <= now())), 0)
                    FROM jobs
                    """
                )
            )
        ).one()
    return Depth(int(row[0]), int(row[1]), int(row[2]), int(row[3]), float(row[4]))
