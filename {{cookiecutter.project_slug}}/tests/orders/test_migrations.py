"""The worked expand migration (0004_orders_updated_at) on a real PostgreSQL: the previous release
keeps working after it. (Lock safety, for every migration: tests/db/test_migration_locks.py.)"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from {{ cookiecutter.package_name }}.db import migrations

from tests.conftest import MIGRATIONS
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
        migrations.alembic_config(MIGRATIONS, before_expand.render_as_string(hide_password=False)), "heads"
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
