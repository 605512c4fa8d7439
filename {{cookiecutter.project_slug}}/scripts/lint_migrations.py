"""Lint every migration with squawk, one revision at a time, for the production PostgreSQL major.

Each revision's offline SQL (`alembic upgrade <down>:<rev> --sql`, with the session timeouts that
env.py sets) is written to .data/squawk/ and checked on its own: a whole-chain run would let a
`SET lock_timeout` in one revision hide its absence in another, and mixes findings together.
Usage: python scripts/lint_migrations.py [--pg-version 18] [--migrations-dir migrations]
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

PROJECT = Path(__file__).resolve().parents[1]
OUT = PROJECT / ".data" / "squawk"
# The first revision's SQL creates Alembic's own bookkeeping table, whose DDL is Alembic's to choose;
# only that revision's file carries this ignore (keep the first revision free of other DDL).
ALEMBIC_TABLE = "CREATE TABLE alembic_version"
ALEMBIC_TABLE_IGNORED = (
    "-- Alembic's own bookkeeping table (version_num varchar), created once: not ours to shape.\n"
    "-- squawk-ignore-file prefer-text-field\n" + ALEMBIC_TABLE
)


def offline_sql(config: Config, down: str | None, revision: str) -> str:
    buffer = io.StringIO()
    config.output_buffer = buffer
    command.upgrade(config, f"{down}:{revision}" if down else revision, sql=True)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pg-version", default="18", help="production PostgreSQL major version")
    parser.add_argument("--migrations-dir", type=Path, default=PROJECT / "migrations")
    args = parser.parse_args(argv)
    squawk = shutil.which("squawk") or str(Path(sys.executable).parent / "squawk")
    config = Config()
    config.set_main_option("script_location", str(args.migrations_dir))
    script = ScriptDirectory.from_config(config)
    OUT.mkdir(parents=True, exist_ok=True)
    failed = []
    for revision in reversed(list(script.walk_revisions())):
        down = revision.down_revision
        if isinstance(down, tuple):
            down = None  # a merge point: lint it from scratch rather than guess a side
        path = OUT / f"{Path(revision.path).stem}.sql"
        path.write_text(
            offline_sql(config, down, revision.revision).replace(ALEMBIC_TABLE, ALEMBIC_TABLE_IGNORED)
        )
        result = subprocess.run([squawk, "--pg-version", args.pg_version, str(path)], check=False)
        if result.returncode != 0:
            failed.append(Path(revision.path).name)
    if failed:
        print(f"squawk found problems in: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
