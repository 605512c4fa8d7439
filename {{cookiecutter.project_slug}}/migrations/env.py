"""Alembic environment: async (asyncpg), one transaction per migration, bounded lock waits.

The URL comes from the caller (`python -m {{ cookiecutter.package_name }} migrate`, the tests) or, for
the `alembic` command line, from `MIGRATION_DATABASE_URL` (else `DATABASE_URL`); `--sql` (offline)
needs none. Revisions read the settings from `context.config.attributes["settings"]`
(`DB_RUNTIME_ROLE`, the role they grant to).

Lock retries, as GitLab's `with_lock_retries`: while a DDL statement waits for its lock, every query
on the table queues behind it, so no attempt waits long. Each attempt is a fresh session whose
`lock_timeout` starts at 0.1 s and doubles up to `MIGRATION_LOCK_TIMEOUT_S` (default 0.5 s, the
longest a request queues behind the migration); a jittered sleep that grows separates attempts.
What is applied stays applied (a transaction per revision), so an attempt resumes where the last
stopped. When the next attempt and its sleep would pass `MIGRATION_LOCK_BUDGET_S` (time spent
waiting on locks and sleeping), the run stops with a message saying what to look for. Every session
also sets `statement_timeout` (`MIGRATION_STATEMENT_TIMEOUT_S`); offline SQL sets both, at the cap.

All attempts run under the service's migration lock (`migration_lock` in db/migrations.py, a
session-level advisory lock on a connection of its own): two runs at once never race.
"""

from __future__ import annotations

import asyncio
import random
import sys

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from {{ cookiecutter.package_name }} import domains
from {{ cookiecutter.package_name }}.db import migrations
from {{ cookiecutter.package_name }}.db.base import Base

# The platform's own models (audit trail, idempotency records, rate limit windows); domains are
# found by `domains.modules`.
from {{ cookiecutter.package_name }}.platform import audit  # noqa: F401
from {{ cookiecutter.package_name }}.platform import idempotency  # noqa: F401
from {{ cookiecutter.package_name }}.platform import jobs  # noqa: F401
from {{ cookiecutter.package_name }}.platform import ratelimit  # noqa: F401
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.settings import load_settings
from {{ cookiecutter.package_name }}.settings import to_async_url

LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout
# GitLab's first lock_timeout: a lock held for an instant (a short request's transaction) is got on
# the first or second try. Not a setting: the cap is what bounds the requests' wait.
FIRST_LOCK_TIMEOUT_S = 0.1
# Sleeps between attempts grow from ~0.1 s (a lock freed soon is got soon) to 5-10 s: a long holder
# is probed every few seconds, and the table is not kept under a near-constant train of stalls.
FIRST_SLEEP_S, MAX_SLEEP_S = 0.1, 10.0

# Every model, the platform's and each domain's, so that autogenerate and `alembic check` see the
# whole schema.
domains.modules("models")
target_metadata = Base.metadata


def _settings() -> Settings:
    settings = context.config.attributes.get("settings")
    if not isinstance(settings, Settings):
        settings = load_settings()
        context.config.attributes["settings"] = settings  # for the revisions (DB_RUNTIME_ROLE)
    return settings


def _url(settings: Settings) -> str:
    url = context.config.attributes.get("url")
    if url is not None:
        return to_async_url(url).render_as_string(hide_password=False)
    configured = settings.migration_async_url()
    if configured is None:
        raise SystemExit(
            "MIGRATION_DATABASE_URL (or DATABASE_URL) is not set (or use `make migrate`, which starts "
            "the embedded database)"
        )
    return configured.render_as_string(hide_password=False)


def _timeouts(settings: Settings, lock_timeout_s: float) -> list[str]:
    return [
        f"SET lock_timeout = '{max(1, round(lock_timeout_s * 1000))}ms'",
        f"SET statement_timeout = '{round(settings.migration_statement_timeout_s * 1000)}ms'",
    ]


def lock_schedule(settings: Settings) -> list[tuple[float, float]]:
    """Each attempt's lock_timeout and the sleep after it fails, for as many attempts as fit
    MIGRATION_LOCK_BUDGET_S. Both double: the timeout from FIRST_LOCK_TIMEOUT_S up to
    MIGRATION_LOCK_TIMEOUT_S, the sleep from FIRST_SLEEP_S up to MAX_SLEEP_S, drawn between half and
    all of that so that two runs do not retry in step (and it still grows; not cryptography)."""
    cap, budget = settings.migration_lock_timeout_s, settings.migration_lock_budget_s
    schedule: list[tuple[float, float]] = []
    spent = 0.0  # waiting for locks and sleeping; the work of revisions that apply is not counted
    while True:
        doubling = 2 ** len(schedule)
        lock_timeout = min(cap, FIRST_LOCK_TIMEOUT_S * doubling)
        if spent + lock_timeout > budget:
            return schedule
        sleep = random.uniform(0.5, 1.0) * min(MAX_SLEEP_S, FIRST_SLEEP_S * doubling)  # noqa: S311
        schedule.append((lock_timeout, sleep))
        spent += lock_timeout + sleep


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        transaction_per_migration=True,
        compare_type=True,
        **kwargs,  # type: ignore[arg-type]
    )


def run_offline(settings: Settings) -> None:
    """`alembic upgrade A:B --sql`: the SQL a DBA reviews and squawk lints."""
    _configure(url="postgresql+asyncpg://", literal_binds=True, dialect_opts={"paramstyle": "named"})
    for statement in _timeouts(settings, settings.migration_lock_timeout_s):
        context.execute(statement)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection, settings: Settings, lock_timeout_s: float) -> None:
    for statement in _timeouts(settings, lock_timeout_s):
        connection.exec_driver_sql(statement)
    connection.commit()
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def _attempt(settings: Settings, lock_timeout_s: float) -> None:
    engine = create_async_engine(_url(settings), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run, settings, lock_timeout_s)
    finally:
        await engine.dispose()


def run_online(settings: Settings) -> None:
    asyncio.run(_run_online(settings))


async def _run_online(settings: Settings) -> None:
    """The attempts, under the service's migration lock (db/migrations.py): a second run started
    meanwhile waits for this one, then finds the schema at its heads."""
    engine = create_async_engine(_url(settings), poolclass=NullPool)
    try:
        async with migrations.migration_lock(engine, settings.service_name):
            await _attempts(settings)
    finally:
        await engine.dispose()


async def _attempts(settings: Settings) -> None:
    schedule = lock_schedule(settings)
    for attempt, (lock_timeout, sleep) in enumerate(schedule, start=1):
        try:
            await _attempt(settings, lock_timeout)
            return
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            if attempt == len(schedule):
                raise SystemExit(
                    f"migration stopped: a lock was not granted in {attempt} attempts (lock_timeout "
                    f"up to {settings.migration_lock_timeout_s:g}s) within MIGRATION_LOCK_BUDGET_S "
                    f"({settings.migration_lock_budget_s:g}s). A long transaction holds the table; find "
                    "it with: SELECT pid, now() - xact_start AS age, state, query FROM pg_stat_activity "
                    "WHERE xact_start IS NOT NULL ORDER BY age DESC; "
                    "see RUNBOOK.md 'A migration is stuck or timed out on a lock'"
                ) from exc
            print(
                f"migration: lock_timeout ({lock_timeout:g}s), attempt {attempt} of {len(schedule)}; "
                f"retrying in {sleep:.1f}s",
                file=sys.stderr,
            )
            await asyncio.sleep(sleep)


if context.is_offline_mode():
    run_offline(_settings())
else:
    run_online(_settings())
