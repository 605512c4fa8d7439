"""The worked expand migration (0004_orders_updated_at) on a real PostgreSQL: the previous release
keeps working after it, and it never queues the application behind a lock."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from {{ cookiecutter.package_name }}.db import migrations

from tests.conftest import MIGRATIONS
from tests.conftest import PROJECT
from tests.conftest import TEST_DATABASE
from tests.conftest import recreate

BEFORE = "0003_orders"
SCRATCH = f"{TEST_DATABASE}_expand"
# How the previous release writes an order: it knows nothing of updated_at.
OLD_INSERT = text("INSERT INTO orders (id, sku, quantity) VALUES (:id, 'OLD-SKU', 1)")


@pytest.fixture
def before_expand(server_url: URL) -> URL:
    """A scratch database at the revision before the worked example, with some orders in it."""
    asyncio.run(recreate(server_url, SCRATCH))
    url = server_url.set(database=SCRATCH)
    migrations.upgrade(MIGRATIONS, url.render_as_string(hide_password=False), revision=BEFORE)

    async def seed() -> None:
        engine = create_async_engine(url)
        async with engine.begin() as connection:
            for _ in range(25):
                await connection.execute(OLD_INSERT, {"id": uuid.uuid4()})
        await engine.dispose()

    asyncio.run(seed())
    return url


def test_the_previous_release_still_writes_orders_after_the_expand(before_expand: URL) -> None:
    command.upgrade(
        migrations.alembic_config(MIGRATIONS, before_expand.render_as_string(hide_password=False)), "head"
    )

    async def check() -> None:
        engine = create_async_engine(before_expand)
        async with engine.begin() as connection:
            await connection.execute(OLD_INSERT, {"id": uuid.uuid4()})  # old code, new schema
            missing = await connection.scalar(text("SELECT count(*) FROM orders WHERE updated_at IS NULL"))
            backfilled = await connection.scalar(
                text("SELECT count(*) FROM orders WHERE updated_at = created_at")
            )
            nullable = await connection.scalar(
                text(
                    "SELECT is_nullable FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'updated_at'"
                )
            )
        await engine.dispose()
        assert missing == 0
        assert backfilled is not None
        assert backfilled >= 25  # the old rows, from created_at
        assert nullable == "NO"

    asyncio.run(check())


def test_a_held_lock_makes_the_migration_give_up_and_never_blocks_reads_longer_than_lock_timeout(
    before_expand: URL,
) -> None:
    lock_timeout = 0.5
    retries = 1

    async def scenario() -> tuple[subprocess.CompletedProcess[str], float, float]:
        engine = create_async_engine(before_expand, isolation_level="AUTOCOMMIT")
        holding = create_async_engine(before_expand)  # not autocommit: its transaction is real
        holder = await holding.connect()
        transaction = await holder.begin()
        # A long transaction that has read the table holds ACCESS SHARE: ADD COLUMN must wait.
        await holder.execute(text("SELECT count(*) FROM orders"))

        env = os.environ | {
            "DATABASE_URL": before_expand.render_as_string(hide_password=False),
            "MIGRATIONS_DIR": str(MIGRATIONS),
            "MIGRATION_LOCK_TIMEOUT_S": str(lock_timeout),
            "MIGRATION_LOCK_RETRIES": str(retries),
            "LOG_LEVEL": "WARNING",
        }
        started = time.monotonic()
        migrate = asyncio.create_task(
            asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "{{ cookiecutter.package_name }}", "migrate"],
                cwd=PROJECT,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
        )
        worst_read = 0.0
        async with engine.connect() as reader:
            while not migrate.done():
                began = time.monotonic()
                await reader.execute(text("SELECT id FROM orders LIMIT 1"))
                worst_read = max(worst_read, time.monotonic() - began)
                await asyncio.sleep(0.02)
        result = await migrate
        elapsed = time.monotonic() - started
        await transaction.rollback()
        await holder.close()
        await holding.dispose()
        await engine.dispose()
        return result, elapsed, worst_read

    result, elapsed, worst_read = asyncio.run(scenario())
    assert result.returncode != 0
    assert "migration stopped: a lock was not granted within lock_timeout" in result.stderr
    # Two attempts of 0.5 s, one backoff of at most 2 s, and the interpreter's start-up.
    assert elapsed < (retries + 1) * lock_timeout + 2.0 + 10
    assert worst_read < lock_timeout + 0.4

    # Once the long transaction is gone, the same command finishes the job.
    command.upgrade(
        migrations.alembic_config(MIGRATIONS, before_expand.render_as_string(hide_password=False)), "head"
    )
