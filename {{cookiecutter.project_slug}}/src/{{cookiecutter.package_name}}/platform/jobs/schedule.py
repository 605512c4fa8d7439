"""Periodic jobs, once per period across every worker replica.

Each schedule is a row of `job_schedules` holding when it next runs. A worker whose clock says a
schedule may be due moves `next_run_at` one interval on with a conditional UPDATE
(`WHERE next_run_at <= now()`) and, in the same transaction, enqueues the job: of the replicas
racing for it, the row lock lets exactly one UPDATE match, and the others find the row already
moved. The database's clock decides, so workers' clocks need not agree. The job then runs like any
other: retried with backoff, dead-lettered, listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from {{ cookiecutter.package_name }}.platform.jobs.queue import enqueue_statement


@dataclass(frozen=True)
class Schedule:
    name: str  # the job's kind, and the schedule's row
    interval_s: float
    payload: dict[str, Any] | None = None


async def register(engine: AsyncEngine, schedules: list[Schedule]) -> None:
    """Create the rows of new schedules (first run one interval from now); existing rows stay."""
    if not schedules:
        return
    async with engine.begin() as connection:
        for schedule in schedules:
            await connection.execute(
                text(
                    "INSERT INTO job_schedules (name, next_run_at)"
                    " VALUES (:name, now() + make_interval(secs => :interval_s)) ON CONFLICT (name) DO NOTHING"
                ),
                {"name": schedule.name, "interval_s": schedule.interval_s},
            )


async def enqueue_due(engine: AsyncEngine, schedules: list[Schedule]) -> list[str]:
    """Enqueue each schedule that is due and that no other worker enqueued first; the names."""
    enqueued = []
    for schedule in schedules:
        async with engine.begin() as connection:
            row = await connection.execute(
                text(
                    "UPDATE job_schedules SET next_run_at = now() + make_interval(secs => :interval_s)"
                    " WHERE name = :name AND next_run_at <= now() RETURNING name"
                ),
                {"name": schedule.name, "interval_s": schedule.interval_s},
            )
            if row.first() is None:
                continue
            await connection.execute(enqueue_statement(schedule.name, schedule.payload or {}))
        enqueued.append(schedule.name)
    return enqueued
