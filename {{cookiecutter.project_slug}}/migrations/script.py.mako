"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Created: ${create_date}

Zero-downtime checklist (docs/migrations.md): expand first, with the helpers of
db/zero_downtime.py (nullable columns, defaults set afterwards, batched backfills, NOT NULL and
foreign keys through NOT VALID + VALIDATE, indexes CONCURRENTLY); contract in a later release,
once no running version reads what is dropped. `make lint` runs squawk on this revision's SQL.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
