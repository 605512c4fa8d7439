"""Print the revision a new revision of this service revises (`make migration` passes it to `alembic
revision --head`): the head of the service's own branch, or the platform's head while the service has
no revision yet. Platform revisions (`platform_revision = True`) come with template updates, on
their own branch: docs/migrations.md. Exits 2, saying why, when the service's branch has several heads.
"""

from __future__ import annotations

import sys
from pathlib import Path

from {{ cookiecutter.package_name }}.db import migrations

PROJECT = Path(__file__).resolve().parents[1]


def main() -> int:
    heads = sorted(migrations.domain_heads(PROJECT / "migrations"))
    if len(heads) != 1:
        print(
            f"the service's migrations have {len(heads)} heads ({', '.join(heads)}): merge them first "
            f"(.venv/bin/alembic merge -m 'merge' {' '.join(heads)})",
            file=sys.stderr,
        )
        return 2
    print(heads[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
