"""Migration operations that never take the service down: the expand/contract toolbox.

Standard: Data & Persistence / Migrations (zero-downtime deployments). Use these in revisions
instead of the plain `op` calls they wrap; `docs/migrations.md` shows the patterns, and
`make lint` runs squawk over each revision's SQL to catch the plain ones.

Why each exists, in one line:

- `create_index_concurrently`: a plain CREATE INDEX blocks every write to the table while it builds.
- `add_column`: only nullable, without a default; anything else rewrites or locks the table.
- `set_default`: the default for new rows, set after the column exists: never a rewrite.
- `backfill`: one UPDATE over a big table holds its row locks and bloats WAL for minutes; batches
  of `batch_size` rows along the primary key, each its own short transaction, do not.
- `set_not_null`: SET NOT NULL alone scans the table under an ACCESS EXCLUSIVE lock; a NOT VALID
  check constraint, VALIDATE (which lets reads and writes through), then SET NOT NULL does not scan.
- `add_foreign_key`: NOT VALID then VALIDATE, for the same reason.

Statements that need ACCESS EXCLUSIVE still take it, briefly: `migrations/env.py` bounds the wait
with `lock_timeout` and retries, so a migration never queues the application behind it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context
from alembic import op

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _ident(name: str) -> str:
    """Names go into SQL as written, so they must be plain lowercase identifiers."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"{name!r} is not a plain lowercase identifier")
    return name


def _each_committed(*statements: str) -> None:
    """Run each statement in its own transaction: a lock one of them takes is released at once,
    not held while the next one works. squawk's prefer-robust-stmts wants a transaction around
    each; the ignore says why there is none, in the SQL it lints."""
    with context.get_context().autocommit_block():
        for statement in statements:
            op.execute(
                "-- Committed on its own, on purpose: no lock is held across steps; safe to rerun.\n"
                f"-- squawk-ignore prefer-robust-stmts\n{statement}"
            )


def _concurrently(statement: str) -> None:
    """Run a CONCURRENTLY statement with no `lock_timeout`, `statement_timeout` still bounding it.
    It waits for every older transaction to end, but its lock (SHARE UPDATE EXCLUSIVE) blocks no
    read or write meanwhile: the migration's short lock timeout, there to keep requests from
    queueing behind a DDL statement, would only make it fail and rebuild from scratch on a busy
    table. The attempt's own lock_timeout is kept and put back after it, in SQL, so the offline
    script does the same."""
    op.execute(
        "SELECT set_config('paved.lock_timeout', current_setting('lock_timeout'), false),"
        " set_config('lock_timeout', '0', false)"
    )
    op.execute(statement)
    op.execute("SELECT set_config('lock_timeout', current_setting('paved.lock_timeout'), false)")


def create_index_concurrently(
    name: str, table: str, columns: Sequence[str], *, unique: bool = False, where: str | None = None
) -> None:
    """CREATE INDEX CONCURRENTLY, outside the migration's transaction, and safe to rerun: an INVALID
    index left by an interrupted build is dropped first, a valid one is kept."""
    with context.get_context().autocommit_block():
        if not context.is_offline_mode():
            invalid = op.get_bind().scalar(
                sa.text(
                    "SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE c.relname = :name AND c.relnamespace = current_schema()::regnamespace"
                ),
                {"name": name},
            )
            if invalid:
                _concurrently(f"DROP INDEX CONCURRENTLY IF EXISTS {_ident(name)}")
        _concurrently(
            f"CREATE {'UNIQUE ' if unique else ''}INDEX CONCURRENTLY IF NOT EXISTS {_ident(name)} "
            f"ON {_ident(table)} ({', '.join(_ident(column) for column in columns)})"
            + (f" WHERE {where}" if where else "")
        )


def drop_index_concurrently(name: str) -> None:
    with context.get_context().autocommit_block():
        _concurrently(f"DROP INDEX CONCURRENTLY IF EXISTS {_ident(name)}")


def add_column(table: str, column: sa.Column[object]) -> None:
    """Expand: add a nullable column with no default, instant at any table size. Set a default for
    new rows afterwards (`ALTER ... SET DEFAULT`, instant too) and backfill old rows in batches."""
    if not column.nullable or column.server_default is not None:
        raise ValueError(
            f"{table}.{column.name}: add it nullable and without a default; set the default and "
            "NOT NULL in later steps (set_not_null)"
        )
    op.add_column(table, column, if_not_exists=True)


def set_default(table: str, column: str, expression: str) -> None:
    """A default for rows inserted from now on: a catalog change, no rewrite, even when volatile
    (`clock_timestamp()`), because existing rows are not touched. Old rows are backfilled."""
    op.execute(
        "-- SET DEFAULT is idempotent: rerunning it after a failure part way is harmless.\n"
        f"-- squawk-ignore prefer-robust-stmts\nALTER TABLE {_ident(table)} ALTER COLUMN {_ident(column)} "
        f"SET DEFAULT {expression}"
    )


def backfill(table: str, *, set_: str, where: str, key: str = "id", batch_size: int = 10_000) -> None:
    """UPDATE `table` SET `set_` for the rows matching `where`, walking the primary key `key` in
    batches of `batch_size`, each its own short transaction. The walk follows the key's index, so
    every batch costs the same (an `UPDATE ... WHERE <where> LIMIT n` loop rescans what is already
    done, and slows down as it goes). `where` keeps a rerun from touching finished rows."""
    table, key = _ident(table), _ident(key)
    first = f"SELECT {key} FROM {table} ORDER BY {key} LIMIT {int(batch_size)}"
    after = f"SELECT {key} FROM {table} WHERE {key} > :after ORDER BY {key} LIMIT {int(batch_size)}"

    def statement(batch: str) -> str:
        return (
            f"WITH batch AS ({batch}), "
            f"done AS (UPDATE {table} SET {set_} WHERE {key} IN (SELECT {key} FROM batch) AND ({where})) "
            f"SELECT {key} FROM batch ORDER BY {key} DESC LIMIT 1"
        )

    with context.get_context().autocommit_block():
        if context.is_offline_mode():
            op.execute(
                f"-- then again with `{key} > <last {key} of the batch>` until a batch is empty\n{statement(first)}"
            )
            return
        connection = op.get_bind()
        last = connection.scalar(sa.text(statement(first)))
        while last is not None:
            last = connection.scalar(sa.text(statement(after)), {"after": last})


def set_not_null(table: str, column: str) -> None:
    """Contract: NOT NULL without scanning the table under an ACCESS EXCLUSIVE lock. Each step
    commits on its own; only VALIDATE reads the table, and it lets reads and writes through."""
    table, column = _ident(table), _ident(column)
    check = _ident(f"ck_{table}_{column}_not_null")
    drop_helper_check = (
        "-- The constraint dropped is this helper's own temporary check; NOT NULL holds instead.\n"
        f"-- squawk-ignore ban-drop-constraint\nALTER TABLE {table} DROP CONSTRAINT IF EXISTS {check}"
    )
    _each_committed(
        drop_helper_check,  # a leftover of an interrupted run
        f"ALTER TABLE {table} ADD CONSTRAINT {check} CHECK ({column} IS NOT NULL) NOT VALID",
        f"ALTER TABLE {table} VALIDATE CONSTRAINT {check}",
        # PostgreSQL 12+ proves NOT NULL from the valid constraint instead of scanning the table.
        f"ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL",
        drop_helper_check,
    )


def add_foreign_key(
    name: str, table: str, columns: Sequence[str], referred_table: str, referred_columns: Sequence[str]
) -> None:
    """A foreign key checked for new rows at once and for old rows by VALIDATE, which takes only a
    SHARE UPDATE EXCLUSIVE lock (reads and writes go on)."""
    _each_committed(
        f"ALTER TABLE {_ident(table)} ADD CONSTRAINT {_ident(name)} FOREIGN KEY "
        f"({', '.join(map(_ident, columns))}) REFERENCES {_ident(referred_table)} "
        f"({', '.join(map(_ident, referred_columns))}) NOT VALID",
        f"ALTER TABLE {_ident(table)} VALIDATE CONSTRAINT {_ident(name)}",
    )
