"""The expand/contract toolbox (`db/zero_downtime.py`) run as a revision would run it: a revision of
the test's own on top of the service's, applied by the real migration runner to a scratch database,
then the schema and the data read back from PostgreSQL's catalogs. And the same revision as offline
SQL (`--sql`), which is what a DBA reviews and squawk lints."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from {{ cookiecutter.package_name }}.db import migrations
from {{ cookiecutter.package_name }}.db import zero_downtime

from tests.conftest import MIGRATIONS
from tests.conftest import TEST_DATABASE
from tests.conftest import migrations_with
from tests.conftest import recreate

SCRATCH = f"{TEST_DATABASE}_zero_downtime"
ROWS = 25
BATCH = 10  # three batches, the last one short

TOOLBOX = '''"""expand and contract: every helper of the toolbox, on a table of the test's own

Revision ID: 9999_toolbox
Revises: {head}
"""

import sqlalchemy as sa
from alembic import op

from {{ cookiecutter.package_name }}.db import zero_downtime

revision = "9999_toolbox"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "toolbox",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("parent_id", sa.BigInteger(), nullable=True),
    )
    op.execute(
        "INSERT INTO toolbox (id, name, parent_id) "
        "SELECT i, CASE WHEN i % 2 = 0 THEN 'n' || i END, CASE WHEN i > 1 THEN i - 1 END "
        "FROM generate_series(1, {rows}) AS i"
    )
    op.execute("CREATE TABLE toolbox_seen (step text, lock_timeout text)")
    op.execute("INSERT INTO toolbox_seen SELECT 'before', current_setting('lock_timeout')")
    zero_downtime.add_column("toolbox", sa.Column("note", sa.Text(), nullable=True))
    zero_downtime.add_column("toolbox", sa.Column("note", sa.Text(), nullable=True))  # a rerun
    zero_downtime.set_default("toolbox", "note", "'new'")
    zero_downtime.backfill("toolbox", set_="note = 'old'", where="note IS NULL", batch_size={batch})
    zero_downtime.set_not_null("toolbox", "note")
    zero_downtime.create_index_concurrently(
        "ix_toolbox_name", "toolbox", ["name"], unique=True, where="name IS NOT NULL"
    )
    zero_downtime.create_index_concurrently("ix_toolbox_parent", "toolbox", ["parent_id"])
    op.execute("INSERT INTO toolbox_seen SELECT 'after', current_setting('lock_timeout')")
    zero_downtime.add_foreign_key("fk_toolbox_parent", "toolbox", ["parent_id"], "toolbox", ["id"])
    zero_downtime.create_index_concurrently("ux_toolbox_pair", "toolbox", ["id", "parent_id"], unique=True)
    zero_downtime.add_foreign_key("fk_toolbox_pair", "toolbox", ["id", "parent_id"], "toolbox", ["id", "parent_id"])


def downgrade() -> None:
    zero_downtime.drop_index_concurrently("ix_toolbox_parent")
    op.drop_table("toolbox_seen")
    op.drop_table("toolbox")
'''

RERUN = '''"""the index step of 9999_toolbox again, as a rerun after an interrupted build

Revision ID: 9999_rerun
Revises: 9999_toolbox
"""

from {{ cookiecutter.package_name }}.db import zero_downtime

revision = "9999_rerun"
down_revision = "9999_toolbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    zero_downtime.create_index_concurrently("ix_toolbox_parent", "toolbox", ["parent_id"])


def downgrade() -> None:
    pass
'''


@pytest.fixture
def scratch(server_url: URL, tmp_path: Path) -> tuple[URL, Path]:
    copy = migrations_with(
        tmp_path, "2099-01-01_toolbox.py", TOOLBOX.replace("{rows}", str(ROWS)).replace("{batch}", str(BATCH))
    )
    asyncio.run(recreate(server_url, SCRATCH))
    return server_url.set(database=SCRATCH), copy


def rows(url: URL, query: str) -> list[Any]:
    async def read() -> list[Any]:
        engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as connection:
                result = await connection.execute(text(query))
                return list(result.all()) if result.returns_rows else []
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_the_toolbox_expands_backfills_and_contracts_without_losing_a_row(scratch: tuple[URL, Path]) -> None:
    url, copy = scratch
    migrations.upgrade(copy, url.render_as_string(hide_password=False))

    # Every old row backfilled, across batches; new rows take the default; the column is NOT NULL
    # and the helper's temporary check constraint is gone.
    assert rows(url, "SELECT note, count(*) FROM toolbox GROUP BY note") == [("old", ROWS)]
    assert rows(url, "INSERT INTO toolbox (id) VALUES (1000) RETURNING note") == [("new",)]
    assert rows(
        url,
        "SELECT is_nullable FROM information_schema.columns WHERE table_name = 'toolbox' "
        "AND column_name = 'note'",
    ) == [("NO",)]
    assert (
        rows(url, "SELECT conname FROM pg_constraint WHERE conrelid = 'toolbox'::regclass AND contype = 'c'")
        == []
    )
    # The indexes: valid, unique and partial only when asked.
    indexes = {
        name: (valid, unique, partial)
        for name, valid, unique, partial in rows(
            url,
            "SELECT c.relname, i.indisvalid, i.indisunique, i.indpred IS NOT NULL FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'toolbox'::regclass",
        )
    }
    assert indexes["ix_toolbox_name"] == (True, True, True)
    assert indexes["ix_toolbox_parent"] == (True, False, False)
    # The foreign key checked for old rows too (VALIDATE ran), and enforced for new ones.
    validated = "SELECT conname, convalidated FROM pg_constraint WHERE contype = 'f' ORDER BY conname"
    assert rows(url, validated) == [("fk_toolbox_pair", True), ("fk_toolbox_parent", True)]
    with pytest.raises(sa.exc.IntegrityError):
        rows(url, "INSERT INTO toolbox (id, parent_id) VALUES (2000, 999999)")
    # A CONCURRENTLY statement runs without lock_timeout, and the attempt's own is put back after it.
    seen = dict(rows(url, "SELECT step, lock_timeout FROM toolbox_seen"))
    assert seen["after"] == seen["before"] != "0"


def test_an_index_an_interrupted_build_left_invalid_is_built_again(scratch: tuple[URL, Path]) -> None:
    """A CREATE UNIQUE INDEX CONCURRENTLY that fails part way (here on duplicates) leaves an INVALID
    index, which IF NOT EXISTS alone would keep forever: the rerun drops it and builds it again."""
    url, copy = scratch
    raw = url.render_as_string(hide_password=False)
    migrations.upgrade(copy, raw)
    rows(url, "DROP INDEX CONCURRENTLY ix_toolbox_parent")
    with pytest.raises(sa.exc.IntegrityError):  # every note is 'old': the build fails part way
        rows(url, "CREATE UNIQUE INDEX CONCURRENTLY ix_toolbox_parent ON toolbox (note)")
    assert rows(url, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_toolbox_parent'::regclass") == [
        (False,)
    ]
    (copy / "versions" / "2099-01-02_rerun.py").write_text(RERUN)
    migrations.upgrade(copy, raw)
    [(valid, definition)] = rows(
        url,
        "SELECT indisvalid, pg_get_indexdef(indexrelid) FROM pg_index "
        "WHERE indexrelid = 'ix_toolbox_parent'::regclass",
    )
    assert valid
    assert definition.endswith("USING btree (parent_id)"), definition  # built again


def test_unsafe_columns_and_names_are_refused_before_any_sql() -> None:
    with pytest.raises(ValueError, match=r"toolbox\.note: add it nullable and without a default"):
        zero_downtime.add_column("toolbox", sa.Column("note", sa.Text(), nullable=False))
    with pytest.raises(ValueError, match=r"toolbox\.note: add it nullable"):
        zero_downtime.add_column("toolbox", sa.Column("note", sa.Text(), server_default="x"))
    with pytest.raises(ValueError, match="'Toolbox; DROP' is not a plain lowercase identifier"):
        zero_downtime.backfill("Toolbox; DROP", set_="x = 1", where="true")


def test_offline_sql_shows_every_step_for_review(scratch: tuple[URL, Path]) -> None:
    url, copy = scratch
    (head,) = migrations.domain_heads(MIGRATIONS)
    output = io.StringIO()
    config = migrations.alembic_config(copy, url.render_as_string(hide_password=False))
    config.output_buffer = output
    command.upgrade(config, f"{head}:9999_toolbox", sql=True)
    sql = output.getvalue()
    assert "ALTER TABLE toolbox ADD COLUMN IF NOT EXISTS note TEXT" in sql
    assert "ALTER TABLE toolbox ALTER COLUMN note SET DEFAULT 'new'" in sql
    assert (
        f"-- then again with `id > <last id of the batch>` until a batch is empty\nWITH batch AS (SELECT id FROM toolbox ORDER BY id LIMIT {BATCH})"
        in sql
    )
    assert (
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS ix_toolbox_name ON toolbox (name) WHERE name IS NOT NULL"
        in sql
    )
    assert "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_toolbox_parent ON toolbox (parent_id)" in sql
    # NOT NULL in steps: a leftover of an interrupted run dropped, the check added NOT VALID, then
    # validated (no lock on writes), then NOT NULL (proved from the check), then the check dropped.
    steps = [
        "DROP CONSTRAINT IF EXISTS ck_toolbox_note_not_null",
        "ADD CONSTRAINT ck_toolbox_note_not_null CHECK (note IS NOT NULL) NOT VALID",
        "VALIDATE CONSTRAINT ck_toolbox_note_not_null",
        "ALTER COLUMN note SET NOT NULL",
        "DROP CONSTRAINT IF EXISTS ck_toolbox_note_not_null",
    ]
    at = 0
    for step in steps:
        at = sql.index(step, at) + len(step)  # each found after the one before it
    assert "FOREIGN KEY (id, parent_id) REFERENCES toolbox (id, parent_id) NOT VALID" in sql
    assert "ALTER TABLE toolbox VALIDATE CONSTRAINT fk_toolbox_parent" in sql
    assert "indisvalid" not in sql  # the invalid-index check reads the catalog: online only
