"""rate_limits: the fixed windows of the shared rate limit (RATE_LIMIT_STORAGE=database)

Revision ID: 0006_rate_limits
Revises: 0005_audit_and_roles
Created: 2026-12-02

A platform revision (docs/migrations.md): it revises the previous platform one, never a domain
revision. The runtime role gets its DML through 0005's default privileges.

UNLOGGED: a counter rewritten on every request needs no WAL; a crash empties it (every caller
starts a fresh window) and standbys do not carry it, neither of which matters for a limit.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_rate_limits"
down_revision: str | Sequence[str] | None = "0005_audit_and_roles"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
platform_revision: bool = True


def upgrade() -> None:
    op.create_table(
        "rate_limits",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("hits", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_rate_limits")),
        prefixes=["UNLOGGED"],
    )


def downgrade() -> None:
    op.drop_table("rate_limits")
