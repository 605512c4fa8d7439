"""audit_and_roles: the append-only audit trail, and the runtime role's grants (least privilege)

Revision ID: 0005_audit_and_roles
Revises: 0002_idempotency_keys
Created: 2026-12-02

A platform revision: platform revisions form their own branch off 0002_idempotency_keys, each
revising the previous platform one, so a template update never forks a service's own chain
(docs/migrations.md). `platform_revision` marks it for `scripts/migration_base.py`.

The migration role (the one running this, the schema's owner) grants the runtime role
(`DB_RUNTIME_ROLE`, created beforehand by whoever provisions the database: README.md) only DML:
- every table of the schema, now and later (ALTER DEFAULT PRIVILEGES: a later revision's new table
  is usable without that revision remembering): SELECT, INSERT, UPDATE, DELETE; no TRUNCATE, no DDL;
- alembic_version: SELECT only (`/ready` reads it);
- audit_events: SELECT, and INSERT of the columns a caller may set (the time and the id are the
  database's): never UPDATE nor DELETE. Rows past the retention go through purge_audit_events(),
  SECURITY DEFINER, which refuses to delete anything younger than 90 days whoever calls it.
Nothing cluster-wide is created here: a managed database's migration user often cannot CREATE ROLE.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context
from alembic import op

revision: str = "0005_audit_and_roles"
down_revision: str | Sequence[str] | None = "0002_idempotency_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
platform_revision: bool = True

SCHEMA = "public"
# What the runtime role may write into audit_events: everything but `id` and `occurred_at`.
AUDIT_INSERT_COLUMNS = "actor, action, resource_type, resource_id, outcome, request_id, trace_id"
# The floor below which no caller, the runtime role included, can purge the trail. Frozen here:
# AUDIT_RETENTION_S is validated against the same figure at start-up.
PURGE_FLOOR = "90 days"


def _runtime_role() -> str:
    """DB_RUNTIME_ROLE from the settings env.py read; validated there as a plain identifier."""
    role: str = context.config.attributes["settings"].db_runtime_role
    return role


def upgrade() -> None:
    role = _runtime_role()
    grantee = f'"{role}"'
    op.execute(
        f"""DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{role}') THEN
    RAISE EXCEPTION 'DB_RUNTIME_ROLE % does not exist: create it first (README.md, "Database roles")', '{role}';
  END IF;
  IF '{role}' = current_user THEN
    RAISE EXCEPTION 'DB_RUNTIME_ROLE % is the role running the migration: the service must run as another', '{role}';
  END IF;
END $$"""
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column(
            "occurred_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.clock_timestamp(),
            nullable=False,
        ),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("resource_type", sa.Text(), nullable=False),
        sa.Column("resource_id", sa.Text(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("trace_id", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('success', 'failure', 'denied')", name=op.f("ck_audit_events_outcome")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    # A new, empty table: plain CREATE INDEX takes no lock anyone is waiting for.
    op.create_index("ix_audit_events_occurred_at", "audit_events", ["occurred_at"])
    op.create_index("ix_audit_events_resource", "audit_events", ["resource_type", "resource_id"])

    # PostgreSQL before 15 lets every role create tables in public; the owner closes that (a no-op
    # with a warning when the migration role does not own the schema: the provisioning did it).
    op.execute(f"REVOKE CREATE ON SCHEMA {SCHEMA} FROM PUBLIC")
    op.execute(f"GRANT USAGE ON SCHEMA {SCHEMA} TO {grantee}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {SCHEMA} TO {grantee}")
    op.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {SCHEMA} TO {grantee}")
    op.execute(
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {SCHEMA} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {grantee}"
    )
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {SCHEMA} GRANT USAGE, SELECT ON SEQUENCES TO {grantee}")
    # The two exceptions, after the blanket grants.
    op.execute(f"REVOKE ALL ON alembic_version, audit_events FROM {grantee}")
    op.execute(f"GRANT SELECT ON alembic_version, audit_events TO {grantee}")
    op.execute(f"GRANT INSERT ({AUDIT_INSERT_COLUMNS}) ON audit_events TO {grantee}")

    op.execute(
        f"""CREATE FUNCTION purge_audit_events(retention interval, batch integer) RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
  WITH doomed AS (
    SELECT id FROM {SCHEMA}.audit_events
    WHERE occurred_at < now() - greatest(retention, interval '{PURGE_FLOOR}')
    ORDER BY occurred_at LIMIT least(batch, 10000) FOR UPDATE SKIP LOCKED
  ), deleted AS (
    DELETE FROM {SCHEMA}.audit_events WHERE id IN (SELECT id FROM doomed) RETURNING 1
  )
  SELECT count(*)::integer FROM deleted
$$"""
    )
    op.execute("REVOKE ALL ON FUNCTION purge_audit_events(interval, integer) FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION purge_audit_events(interval, integer) TO {grantee}")


def downgrade() -> None:
    grantee = f'"{_runtime_role()}"'
    op.execute("DROP FUNCTION purge_audit_events(interval, integer)")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {SCHEMA} REVOKE ALL ON SEQUENCES FROM {grantee}")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {SCHEMA} REVOKE ALL ON TABLES FROM {grantee}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {SCHEMA} FROM {grantee}")
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {SCHEMA} FROM {grantee}")
    op.execute(f"REVOKE USAGE ON SCHEMA {SCHEMA} FROM {grantee}")
    op.drop_index("ix_audit_events_resource", table_name="audit_events")
    op.drop_index("ix_audit_events_occurred_at", table_name="audit_events")
    op.drop_table("audit_events")
