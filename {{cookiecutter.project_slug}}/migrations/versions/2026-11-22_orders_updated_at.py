"""orders.updated_at: a worked expand migration on a live table

Revision ID: 0004_orders_updated_at
Revises: 0003_orders
Created: 2026-11-22

Expand, with the helpers of db/zero_downtime.py, in steps that never hold a lock for long:
1. add the column, nullable and without a default: instant at any size;
2. give it a default for new rows: instant, no rewrite (old rows keep NULL);
3. backfill old rows from created_at in batches, each its own short transaction;
4. NOT NULL through a NOT VALID check constraint and VALIDATE: no scan under ACCESS EXCLUSIVE;
5. an index for "recently changed orders by status", built CONCURRENTLY.
The code of the previous release never writes updated_at; step 2 fills it for its inserts, so both
releases run against this schema (the test suite checks it).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from {{ cookiecutter.package_name }}.db import zero_downtime

revision: str = "0004_orders_updated_at"
down_revision: str | Sequence[str] | None = "0003_orders"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    zero_downtime.add_column("orders", sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    zero_downtime.set_default("orders", "updated_at", "clock_timestamp()")
    zero_downtime.backfill("orders", set_="updated_at = created_at", where="updated_at IS NULL")
    zero_downtime.set_not_null("orders", "updated_at")
    zero_downtime.create_index_concurrently("ix_orders_status_updated_at", "orders", ["status", "updated_at"])


def downgrade() -> None:
    zero_downtime.drop_index_concurrently("ix_orders_status_updated_at")
    op.drop_column("orders", "updated_at")
