"""orders: the example domain's table

Revision ID: 0003_orders
Revises: 0002_idempotency_keys
Created: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_orders"
down_revision: str | Sequence[str] | None = "0002_idempotency_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("sku", sa.Text(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.Text(), server_default="created", nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.clock_timestamp(), nullable=False
        ),
        sa.CheckConstraint("quantity >= 1", name=op.f("ck_orders_quantity_positive")),
        sa.CheckConstraint("char_length(sku) BETWEEN 1 AND 64", name=op.f("ck_orders_sku_length")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
    )
    # A new, empty table: a plain CREATE INDEX takes no lock anyone is waiting for.
    op.create_index("ix_orders_created_at_id", "orders", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_orders_created_at_id", table_name="orders")
    op.drop_table("orders")
