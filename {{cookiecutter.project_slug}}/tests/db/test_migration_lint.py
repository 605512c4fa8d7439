"""The migration linter catches an unsafe revision (and passes the shipped ones: `make lint`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT
from tests.conftest import migrations_with

UNSAFE = '''"""unsafe: a blocking index on a live table

Revision ID: 9999_unsafe
Revises: {head}
"""

from alembic import op

revision = "9999_unsafe"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_unsafe", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_unsafe", table_name="idempotency_keys")
'''


def _lint(migrations: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(PROJECT / "scripts" / "lint_migrations.py"),
            "--migrations-dir",
            str(migrations),
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_squawk_flags_a_blocking_index_and_names_the_revision(tmp_path: Path) -> None:
    copy = migrations_with(tmp_path, "2099-01-01_unsafe.py", UNSAFE)

    result = _lint(copy)
    assert result.returncode == 1
    assert "require-concurrent-index-creation" in result.stdout + result.stderr
    assert "squawk found problems in: 2099-01-01_unsafe.py" in result.stderr
