"""Background jobs on a real PostgreSQL with real worker processes (platform/jobs/)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine

from {{ cookiecutter.package_name }}.platform import jobs
from {{ cookiecutter.package_name }}.platform.jobs.periodic import PURGE_AUDIT_EVENTS
from {{ cookiecutter.package_name }}.platform.jobs.periodic import PURGE_IDEMPOTENCY_KEYS
from {{ cookiecutter.package_name }}.platform.jobs.periodic import PURGE_RATE_LIMITS
from {{ cookiecutter.package_name }}.platform.jobs.periodic import platform_jobs
from {{ cookiecutter.package_name }}.platform.jobs.queue import backoff_s

from tests.conftest import MIGRATIONS
from tests.conftest import PROJECT
from tests.conftest import captured_logs
from tests.conftest import make_settings
from tests.worker import empty_queue
from tests.worker import eventually
from tests.worker import query
from tests.worker import worker


class Abort(Exception):
    pass


@pytest.fixture
async def queue(database_url: URL) -> AsyncIterator[URL]:
    await empty_queue(database_url)
    yield database_url
    await empty_queue(database_url)


async def test_a_job_exists_only_if_its_transaction_commits(queue: URL) -> None:
    engine = create_async_engine(queue)
    sessions = async_sessionmaker(engine)

    async def rolled_back() -> None:
        async with sessions() as session, session.begin():
            jobs.enqueue(session, "test.rolled_back", {"n": 1})
            await session.flush()
            raise Abort

    try:
        with captured_logs() as lines:
            with pytest.raises(Abort):
                await rolled_back()
            async with sessions() as session, session.begin():
                jobs.enqueue(session, "test.committed", {"n": 2})
    finally:
        await engine.dispose()
    rows = await query(queue, "SELECT kind, payload, status FROM jobs")
    assert rows == [("test.committed", {"n": 2}, "ready")]
    # Each enqueue is logged, its kind named (whether or not its transaction commits).
    assert [line["kind"] for line in lines() if line["event"] == "job_enqueued"] == [
        "test.rolled_back",
        "test.committed",
    ]


async def test_the_queue_depth_counts_each_state_and_ages_the_oldest_due_job(queue: URL) -> None:
    # What job_queue_depth and job_oldest_ready_age_seconds (and their alerts) read.
    await query(
        queue,
        """
        INSERT INTO jobs (kind, payload, status, run_at) VALUES
            ('test.due', '{}', 'ready', now() - interval '30 s'),
            ('test.due', '{}', 'ready', now() - interval '5 s'),
            ('test.backing_off', '{}', 'ready', now() + interval '1 hour'),
            ('test.running', '{}', 'running', now()),
            ('test.dead', '{}', 'dead', now()),
            ('test.dead', '{}', 'dead', now()),
            ('test.dead', '{}', 'dead', now())
        """,
    )
    engine = create_async_engine(queue)
    try:
        depth = await jobs.queue.depth(engine)
    finally:
        await engine.dispose()
    assert (depth.ready, depth.waiting, depth.running, depth.dead) == (2, 1, 1, 3)
    assert 30 <= depth.oldest_ready_age_s < 300  # the older due job's wait, in seconds


@pytest.mark.parametrize(
    ("overrides", "rate_limits_purged"),
    [
        ({"rate_limit_storage": "database"}, True),
        ({"rate_limit_storage": "memory"}, False),  # the windows are in each process
        ({"rate_limit_storage": "database", "rate_limit_enabled": False}, False),
    ],
)
def test_the_platform_purges_are_scheduled_as_configured(
    database_url: URL, overrides: dict[str, object], rate_limits_purged: bool
) -> None:
    settings = make_settings(
        database_url,
        idempotency_purge_interval_s=60,
        audit_purge_interval_s=3600,
        rate_limit_purge_interval_s=30,
        **overrides,
    )
    handlers, schedules = platform_jobs(settings)
    expected = {PURGE_IDEMPOTENCY_KEYS: 60.0, PURGE_AUDIT_EVENTS: 3600.0}
    if rate_limits_purged:
        expected[PURGE_RATE_LIMITS] = 30.0
    assert {schedule.name: schedule.interval_s for schedule in schedules} == expected
    assert set(expected) <= set(handlers)


def test_backoff_is_full_jitter_under_a_doubling_cap() -> None:
    for attempts, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (10, 30.0), (80, 30.0)]:
        delays = [backoff_s(attempts, base_s=1.0, max_s=30.0) for _ in range(200)]
        assert all(0 <= delay <= ceiling for delay in delays)
        assert max(delays) > ceiling / 2  # spread over the whole range, not a fixed delay
        assert min(delays) < ceiling / 2


def jobs_command(database_url: URL, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", "jobs", *args],
        cwd=PROJECT,
        env=os.environ
        | {
            "DATABASE_URL": database_url.render_as_string(hide_password=False),
            "MIGRATIONS_DIR": str(MIGRATIONS),
            "LOG_LEVEL": "WARNING",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_job_failing_every_attempt_is_kept_dead_listed_and_rerun(queue: URL, tmp_path: Path) -> None:
    await query(queue, "INSERT INTO jobs (kind, payload) VALUES ('test.no_such_handler', '{}')")
    async with worker(queue, tmp_path / "worker.log", JOB_MAX_ATTEMPTS="3") as running:

        async def dead() -> bool:
            return bool(await query(queue, "SELECT 1 FROM jobs WHERE status = 'dead'"))

        await eventually(dead)
        (job_id, attempts, error) = (await query(queue, "SELECT id, attempts, last_error FROM jobs"))[0]
        assert attempts == 3
        assert "no handler for 'test.no_such_handler'" in error
        failures = running.events("job_failed")
        assert [line["attempt"] for line in failures] == [1, 2]
        assert [line["outcome"] for line in failures] == ["retry", "retry"]
        assert all("no handler for 'test.no_such_handler'" in line["error"] for line in failures)
        assert all(0 <= line["retry_in_s"] <= 0.2 for line in failures)  # JOB_BACKOFF_MAX_S
        assert [line["attempt"] for line in running.events("job_dead")] == [3]
        async with httpx.AsyncClient() as client:
            assert (await client.get(running.health)).status_code == 200

    listed = jobs_command(queue, "list", "--dead")
    assert listed.returncode == 0, listed.stderr
    assert f"{job_id}\ttest.no_such_handler\tdead\tattempts=3" in listed.stdout
    rerun = jobs_command(queue, "retry", str(job_id))
    assert rerun.returncode == 0, rerun.stderr
    assert await query(queue, "SELECT status, attempts FROM jobs") == [("ready", 0)]
    assert jobs_command(queue, "retry", "999999999").returncode == 1


async def test_two_workers_run_a_periodic_job_once_per_period(
    queue: URL, owner_url: URL, tmp_path: Path
) -> None:
    # The other purges run on their own schedules: an audit event past AUDIT_RETENTION_S (400 days
    # by default) goes, one within it stays, and the rate limit windows are purged where they are
    # kept in the database.
    marker = f"periodic-{uuid.uuid4().hex}"
    for age_days in (500, 200):
        await query(
            owner_url,
            "INSERT INTO audit_events (occurred_at, actor, action, resource_type, resource_id, outcome)"
            " VALUES (now() - make_interval(days => :age), 'seed', 'test.seeded', :marker, :age, 'success')",
            marker=marker,
            age=age_days,
        )
    interval = {
        "IDEMPOTENCY_PURGE_INTERVAL_S": "1",
        "AUDIT_PURGE_INTERVAL_S": "1",
        "RATE_LIMIT_STORAGE": "database",
        "RATE_LIMIT_PURGE_INTERVAL_S": "1",
        "LOG_LEVEL": "DEBUG",  # the rate limit purge's line is a debug one
    }
    async with (
        worker(queue, tmp_path / "a.log", **interval) as first,
        worker(queue, tmp_path / "b.log", **interval) as second,
    ):
        await asyncio.sleep(4)

        def both(event: str) -> list[dict[str, Any]]:
            return first.events(event) + second.events(event)

        runs, purged = both("job_scheduled"), both("idempotency_keys_purged")
        audited, windows = both("audit_events_purged"), both("rate_limit_windows_purged")
    assert audited
    assert windows
    assert all(isinstance(line["deleted"], int) for line in audited + windows)
    kept = await query(queue, "SELECT resource_id FROM audit_events WHERE resource_type = :m", m=marker)
    assert kept == [("200",)]
    runs = [line for line in runs if line["kind"] == PURGE_IDEMPOTENCY_KEYS]
    times = sorted(datetime.fromisoformat(line["timestamp"]) for line in runs)
    gaps = [(later - earlier).total_seconds() for earlier, later in pairwise(times)]
    assert len(times) >= 3
    # One run per period, whichever worker got it: never two within a period.
    assert min(gaps) >= 0.9, gaps
    assert len(purged) >= len(times) - 1  # each enqueued run ran (the last may still be running)


async def test_sigterm_lets_a_running_job_finish_and_hands_back_one_past_the_grace(
    queue: URL, tmp_path: Path
) -> None:
    async def running_now() -> bool:
        return bool(await query(queue, "SELECT 1 FROM jobs WHERE status = 'running'"))

    # A job shorter than GRACEFUL_TIMEOUT_S finishes: its worker exits 0 once it is done. It was
    # enqueued in a request's trace: its lines continue that trace.
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    await query(
        queue,
        "INSERT INTO jobs (kind, payload, traceparent) VALUES ('test.sleep', '{\"s\": 2}', :traceparent)",
        traceparent=f"00-{trace_id}-b7ad6b7169203331-01",
    )
    async with worker(queue, tmp_path / "finishes.log", test_kinds=True, GRACEFUL_TIMEOUT_S="20") as running:
        await eventually(running_now)
        signalled = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(running.process.wait(), timeout=30) == 0
        waited_s = time.monotonic() - signalled
    [succeeded] = running.events("job_succeeded")
    assert succeeded["trace_id"] == trace_id
    assert isinstance(succeeded["duration_ms"], float)
    assert 1900 <= succeeded["duration_ms"] < 30_000  # the 2 s it ran
    assert await query(queue, "SELECT count(*) FROM jobs") == [(0,)]
    assert waited_s >= 1.0  # it waited for the job (2 s, begun before the signal)
    assert running.events("worker_stopped")

    # A job longer than the grace is handed back: ready at once for the next worker, the
    # interrupted run not counted against its attempts.
    await query(queue, "INSERT INTO jobs (kind, payload) VALUES ('test.sleep', '{\"s\": 60}')")
    async with worker(queue, tmp_path / "hands-back.log", test_kinds=True, GRACEFUL_TIMEOUT_S="1") as running:
        await eventually(running_now)
        running.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(running.process.wait(), timeout=30) == 0
    assert running.events("job_handed_back")
    assert await query(queue, "SELECT status, attempts, locked_by FROM jobs") == [("ready", 0, None)]
    [started] = running.events("worker_started")
    assert "test.sleep" in started["kinds"]
