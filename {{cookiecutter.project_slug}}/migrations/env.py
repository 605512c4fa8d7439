"""Alembic environment: async (asyncpg), one transaction per migration, bounded lock waits.

The URL comes from the caller (`python -m {{ cookiecutter.package_name }} migrate`, the tests) or, for
the `alembic` command line, from `DATABASE_URL`; `--sql` (offline) needs none.

Every migration session sets `lock_timeout` (`MIGRATION_LOCK_TIMEOUT_S`, default 5 s) and
`statement_timeout` (`MIGRATION_STATEMENT_TIMEOUT_S`), offline SQL included. A statement that
waits for a lock longer fails instead of queueing every request behind it; the run is then retried
(`MIGRATION_LOCK_RETRIES` times, with backoff and jitter: what is applied stays applied) and finally
stops with a message saying what to look for.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from {{ cookiecutter.package_name }} import domains
from {{ cookiecutter.package_name }}.db.base import Base

# The platform's own model (idempotency records); domains are found by `domains.modules`.
from {{ cookiecutter.package_name }}.platform import idempotency  # noqa: F401
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.settings import load_settings
from {{ cookiecutter.package_name }}.settings import to_async_url

LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout

# Every model, the platform's and each domain's, so that autogenerate and `alembic check` see the
# whole schema.
domains.modules("models")
target_metadata = Base.metadata


def _settings() -> Settings:
    settings = context.config.attributes.get("settings")
    return settings if isinstance(settings, Settings) else load_settings()


def _url(settings: Settings) -> str:
    url = context.config.attributes.get("url")
    if url is not None:
        return to_async_url(url).render_as_string(hide_password=False)
    configured = settings.database_async_url()
    if configured is None:
        raise SystemExit(
            "DATABASE_URL is not set (or use `make migrate`, which starts the embedded database)"
        )
    return configured.render_as_string(hide_password=False)


def _timeouts(settings: Settings) -> list[str]:
    return [
        f"SET lock_timeout = '{int(settings.migration_lock_timeout_s * 1000)}ms'",
        f"SET statement_timeout = '{int(settings.migration_statement_timeout_s * 1000)}ms'",
    ]


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
    for statement in _timeouts(settings):
        context.execute(statement)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection, settings: Settings) -> None:
    for statement in _timeouts(settings):
        connection.exec_driver_sql(statement)
    connection.commit()
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_once(settings: Settings) -> None:
    engine = create_async_engine(_url(settings), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run, settings)
    finally:
        await engine.dispose()


def run_online(settings: Settings) -> None:
    attempts = settings.migration_lock_retries + 1
    for attempt in range(1, attempts + 1):
        try:
            asyncio.run(_run_once(settings))
            return
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            if attempt == attempts:
                raise SystemExit(
                    f"migration stopped: a lock was not granted within lock_timeout "
                    f"({settings.migration_lock_timeout_s:g}s), {attempts} times. A long transaction "
                    "holds the table; find it with: SELECT pid, now() - xact_start AS age, state, query "
                    "FROM pg_stat_activity WHERE xact_start IS NOT NULL ORDER BY age DESC; "
                    "see RUNBOOK.md 'A migration is stuck or timed out on a lock'"
                ) from exc
            # Jitter, so replicas of a migration Job do not retry in step; not cryptography.
            wait = random.uniform(0.5, 1.0) * min(30.0, 2.0**attempt)  # noqa: S311
            print(
                f"migration: lock_timeout ({settings.migration_lock_timeout_s:g}s), attempt {attempt} "
                f"of {attempts}; retrying in {wait:.1f}s",
                file=sys.stderr,
            )
            time.sleep(wait)


if context.is_offline_mode():
    run_offline(_settings())
else:
    run_online(_settings())
