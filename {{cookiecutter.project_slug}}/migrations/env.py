"""Alembic environment: async (asyncpg), one transaction per migration, bounded lock waits.

The URL comes from the caller (`python -m {{ cookiecutter.package_name }} migrate`, the tests) or,
for the `alembic` command line, from `DATABASE_URL`. `lock_timeout` keeps a migration from queueing
every request behind a lock it waits for; `statement_timeout` bounds each statement.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from {{ cookiecutter.package_name }} import domains
from {{ cookiecutter.package_name }}.db.base import Base

# The platform's own model (idempotency records); domains are found by `domains.modules`.
from {{ cookiecutter.package_name }}.platform import idempotency  # noqa: F401
from {{ cookiecutter.package_name }}.settings import load_settings
from {{ cookiecutter.package_name }}.settings import to_async_url

LOCK_TIMEOUT = "5s"
STATEMENT_TIMEOUT = "60s"

# Every model, the platform's and each domain's, so that autogenerate and `alembic check` see the
# whole schema.
domains.modules("models")
target_metadata = Base.metadata


def _url() -> str:
    url = context.config.attributes.get("url")
    if url is None:
        configured = load_settings().database_async_url()
        if configured is None:
            raise SystemExit(
                "DATABASE_URL is not set (or use `make migrate`, which starts the embedded database)"
            )
        return configured.render_as_string(hide_password=False)
    return to_async_url(url).render_as_string(hide_password=False)


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        transaction_per_migration=True,
        compare_type=True,
        **kwargs,  # type: ignore[arg-type]
    )


def run_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        context.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
        context.run_migrations()


def _run(connection: Connection) -> None:
    connection.exec_driver_sql(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
    connection.exec_driver_sql(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
    connection.commit()
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_online() -> None:
    engine = create_async_engine(_url(), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    asyncio.run(run_online())
