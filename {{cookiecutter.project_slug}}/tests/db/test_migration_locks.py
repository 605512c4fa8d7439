"""Lock safety of every migration: env.py bounds each lock wait by lock_timeout and retries, so a
migration that meets a long transaction gives up instead of queueing the application behind it.

The test adds a revision of its own (a column on idempotency_keys, which every bake has) to a copy
of the migrations, and runs the real deploy step against it as a separate process.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from {{ cookiecutter.package_name }}.db import migrations

from tests.conftest import MIGRATIONS
from tests.conftest import PROJECT
from tests.conftest import TEST_DATABASE
from tests.conftest import migrations_with
from tests.conftest import recreate

SCRATCH = f"{TEST_DATABASE}_locks"
EXPAND = '''"""expand: a column on a table the application uses

Revision ID: 9999_expand
Revises: {head}
"""

import sqlalchemy as sa
from alembic import op

revision = "9999_expand"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("idempotency_keys", sa.Column("note", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("idempotency_keys", "note")
'''


def test_a_held_lock_makes_the_migration_give_up_and_never_blocks_reads_longer_than_lock_timeout(
    server_url: URL, tmp_path: Path
) -> None:
    copy = migrations_with(tmp_path, "2099-01-01_expand.py", EXPAND)
    asyncio.run(recreate(server_url, SCRATCH))
    url = server_url.set(database=SCRATCH)
    migrations.upgrade(MIGRATIONS, url.render_as_string(hide_password=False))  # the release before

    lock_timeout, retries = 0.5, 1
    env = os.environ | {
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "MIGRATIONS_DIR": str(copy),
        "MIGRATION_LOCK_TIMEOUT_S": str(lock_timeout),
        "MIGRATION_LOCK_RETRIES": str(retries),
        "LOG_LEVEL": "WARNING",
    }
    migrate = [sys.executable, "-m", "{{ cookiecutter.package_name }}", "migrate"]

    async def scenario() -> tuple[subprocess.CompletedProcess[str], float, float]:
        reading = create_async_engine(url, isolation_level="AUTOCOMMIT")
        holding = create_async_engine(url)  # not autocommit: its transaction is real
        holder = await holding.connect()
        transaction = await holder.begin()
        # A long transaction that has read the table holds ACCESS SHARE: ADD COLUMN must wait.
        await holder.execute(text("SELECT count(*) FROM idempotency_keys"))
        started = time.monotonic()
        run = asyncio.create_task(
            asyncio.to_thread(
                subprocess.run, migrate, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120
            )
        )
        worst_read = 0.0
        async with reading.connect() as reader:
            while not run.done():
                began = time.monotonic()
                await reader.execute(text("SELECT key FROM idempotency_keys LIMIT 1"))
                worst_read = max(worst_read, time.monotonic() - began)
                await asyncio.sleep(0.02)
        result = await run
        elapsed = time.monotonic() - started
        await transaction.rollback()
        await holder.close()
        await holding.dispose()
        await reading.dispose()
        return result, elapsed, worst_read

    result, elapsed, worst_read = asyncio.run(scenario())
    assert result.returncode != 0
    assert "migration stopped: a lock was not granted within lock_timeout" in result.stderr
    # Two attempts of 0.5 s, one backoff of at most 2 s, and the interpreter's start-up.
    assert elapsed < (retries + 1) * lock_timeout + 2.0 + 10
    # Reads queue behind the waiting ALTER, for lock_timeout at most.
    assert worst_read < lock_timeout + 0.4

    # Once the long transaction is gone, the same command finishes the job.
    done = subprocess.run(
        migrate, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
