"""The audit trail and least privilege on a real PostgreSQL, as the runtime role the service runs as:
no DDL, audit rows append-only, a purge that keeps what the retention keeps."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
from fastapi import FastAPI
from opentelemetry.trace import NonRecordingSpan
from opentelemetry.trace import SpanContext
from opentelemetry.trace import TraceFlags
from opentelemetry.trace import use_span
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from {{ cookiecutter.package_name }}.db import migrations
from {{ cookiecutter.package_name }}.db.session import SessionDep
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.platform import audit
from {{ cookiecutter.package_name }}.settings import Settings

from tests.conftest import MIGRATIONS
from tests.conftest import PROJECT
from tests.conftest import TEST_DATABASE
from tests.conftest import make_settings
from tests.conftest import recreate
from tests.conftest import serving

INSUFFICIENT_PRIVILEGE = "42501"
DAY_S = 24 * 3600


@pytest.fixture
async def runtime(database_url: URL) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url, poolclass=NullPool)
    yield engine
    await engine.dispose()


@pytest.fixture
async def owner(owner_url: URL) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(owner_url, poolclass=NullPool)
    yield engine
    await engine.dispose()


async def _sqlstate(engine: AsyncEngine, statement: str) -> str | None:
    """Run `statement` in a transaction that is rolled back; the SQLSTATE it failed with, if any."""
    async with engine.connect() as connection:
        try:
            await connection.execute(text(statement))
        except DBAPIError as exc:
            return getattr(exc.orig, "sqlstate", None)
        finally:
            await connection.rollback()
    return None


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE intruder (id int)",
        "ALTER TABLE idempotency_keys ADD COLUMN intruder int",
        "DROP TABLE idempotency_keys",
        "TRUNCATE idempotency_keys",
        "UPDATE alembic_version SET version_num = version_num",
    ],
)
async def test_the_runtime_role_cannot_change_the_schema(runtime: AsyncEngine, statement: str) -> None:
    assert await _sqlstate(runtime, statement) == INSUFFICIENT_PRIVILEGE


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET outcome = 'success'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        # The time is the database's: a caller cannot backdate a row past the retention.
        "INSERT INTO audit_events (occurred_at, actor, action, resource_type, outcome) "
        "VALUES (now() - interval '1 year', 'x', 'x', 'x', 'success')",
    ],
)
async def test_the_runtime_role_cannot_rewrite_the_audit_trail(runtime: AsyncEngine, statement: str) -> None:
    async with runtime.begin() as connection:  # there is a row to refuse to touch
        await connection.execute(
            text(
                "INSERT INTO audit_events (actor, action, resource_type, outcome) VALUES ('t', 't', 't', 'success')"
            )
        )
    assert await _sqlstate(runtime, statement) == INSUFFICIENT_PRIVILEGE


async def test_the_runtime_role_appends_and_reads_the_audit_trail(runtime: AsyncEngine) -> None:
    marker = uuid.uuid4().hex
    async with runtime.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO audit_events (actor, action, resource_type, resource_id, outcome) "
                "VALUES ('t', 'test.appended', 'test', :marker, 'success')"
            ),
            {"marker": marker},
        )
        rows = await connection.scalar(
            text("SELECT count(*) FROM audit_events WHERE resource_id = :marker"), {"marker": marker}
        )
    assert rows == 1


async def test_a_later_migrations_table_is_the_runtime_roles_to_use(
    owner: AsyncEngine, runtime: AsyncEngine
) -> None:
    """ALTER DEFAULT PRIVILEGES: a table the migration role creates later needs no GRANT of its own."""
    async with owner.begin() as connection:
        await connection.execute(text("DROP TABLE IF EXISTS later_table"))
        await connection.execute(text("CREATE TABLE later_table (id serial PRIMARY KEY, note text)"))
    try:
        async with runtime.begin() as connection:
            await connection.execute(text("INSERT INTO later_table (note) VALUES ('a')"))
            await connection.execute(text("UPDATE later_table SET note = 'b'"))
            assert await connection.scalar(text("SELECT note FROM later_table")) == "b"
            await connection.execute(text("DELETE FROM later_table"))
    finally:
        async with owner.begin() as connection:
            await connection.execute(text("DROP TABLE later_table"))


def _audited_app(settings: Settings) -> FastAPI:
    app = create_app(settings)

    @app.post("/audited/{outcome}")
    async def audited(outcome: str, session: SessionDep) -> dict[str, str]:
        audit.record(
            session, action="test.audited", resource_type="test", resource_id=outcome, outcome="success"
        )
        await session.flush()  # the row is written; only the transaction's end decides its fate
        if outcome == "fail":
            raise RuntimeError("the handler fails after the audit write")
        return {"status": "done"}

    return app


async def _audit_rows(engine: AsyncEngine, request_id: str) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT * FROM audit_events WHERE request_id = :r"), {"r": request_id}
        )
        return [dict(row._mapping) for row in rows]


async def test_an_audit_record_commits_or_rolls_back_with_its_action(
    database_url: URL, runtime: AsyncEngine
) -> None:
    async with serving(_audited_app(make_settings(database_url))) as client:
        done = await client.post("/audited/ok", headers={"X-Request-ID": f"audit-ok-{uuid.uuid4().hex}"})
        failed = await client.post(
            "/audited/fail", headers={"X-Request-ID": f"audit-fail-{uuid.uuid4().hex}"}
        )
    assert done.status_code == 200
    assert failed.status_code == 500
    assert len(await _audit_rows(runtime, done.headers["x-request-id"])) == 1
    assert await _audit_rows(runtime, failed.headers["x-request-id"]) == []


async def _seed(owner: AsyncEngine, marker: str, ages_days: list[int]) -> None:
    async with owner.begin() as connection:
        for age in ages_days:
            await connection.execute(
                text(
                    "INSERT INTO audit_events (occurred_at, actor, action, resource_type, resource_id, outcome) "
                    "VALUES (now() - make_interval(days => :age), 'seed', 'test.seeded', :marker, :age, 'success')"
                ),
                {"age": age, "marker": marker},
            )


async def _ages(engine: AsyncEngine, marker: str) -> list[int]:
    async with engine.connect() as connection:
        rows = await connection.scalars(
            text("SELECT resource_id::int FROM audit_events WHERE resource_type = :m ORDER BY 1"),
            {"m": marker},
        )
        return list(rows.all())


async def test_the_purge_deletes_only_rows_past_the_retention(
    owner: AsyncEngine, runtime: AsyncEngine
) -> None:
    marker = f"purge-{uuid.uuid4().hex}"
    await _seed(owner, marker, [1, 89, 91, 399, 401, 800])
    await audit.purge_expired(runtime, retention_s=400 * DAY_S, batch=1)  # batches go on until done
    assert await _ages(runtime, marker) == [1, 89, 91, 399]
    # Below the database's floor the floor wins: the runtime role cannot wipe recent history.
    await audit.purge_expired(runtime, retention_s=1.0)
    assert await _ages(runtime, marker) == [1, 89]


def test_the_purge_command_deletes_past_audit_retention(
    owner: AsyncEngine, runtime: AsyncEngine, database_url: URL
) -> None:
    marker = f"purge-command-{uuid.uuid4().hex}"
    asyncio.run(_seed(owner, marker, [100, 200]))
    env = os.environ | {
        "DATABASE_URL": database_url.render_as_string(hide_password=False),
        "MIGRATIONS_DIR": str(MIGRATIONS),
        "AUDIT_RETENTION_S": str(150 * DAY_S),
        "LOG_LEVEL": "WARNING",
    }
    done = subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", "purge-audit-events"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert asyncio.run(_ages(runtime, marker)) == [100]


def test_the_migration_refuses_a_runtime_role_that_does_not_exist(server_url: URL) -> None:
    scratch = f"{TEST_DATABASE}_no_role"
    asyncio.run(recreate(server_url, scratch))
    url = server_url.set(database=scratch).render_as_string(hide_password=False)
    settings = Settings(db_runtime_role="nobody_provisioned_this", migrations_dir=MIGRATIONS)
    with pytest.raises(DBAPIError, match="DB_RUNTIME_ROLE nobody_provisioned_this does not exist"):
        migrations.upgrade(MIGRATIONS, url, settings=settings)


async def test_the_actor_is_the_one_authentication_bound(runtime: AsyncEngine) -> None:
    """The auth layer binds `actor_id` in structlog's contextvars; without it, "anonymous"."""
    async with AsyncSession(runtime) as session, session.begin():
        with structlog.contextvars.bound_contextvars(actor_id="user-7"):
            bound = audit.record(
                session, action="test.actor", resource_type="test", resource_id=None, outcome="denied"
            )
        anonymous = audit.record(
            session, action="test.actor", resource_type="test", resource_id=None, outcome="failure"
        )
        await session.flush()
        assert (bound.actor, anonymous.actor) == ("user-7", "anonymous")
        assert bound.id is not None
        await session.rollback()


async def test_a_record_names_its_resource_its_request_and_its_trace(runtime: AsyncEngine) -> None:
    """What an investigator joins on: the resource, the request id and the trace id (W3C's 32
    lowercase hex digits), as stored; outside a trace, no trace id."""
    in_a_trace = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    async with AsyncSession(runtime) as session, session.begin():
        with (
            structlog.contextvars.bound_contextvars(request_id="req-7"),
            use_span(NonRecordingSpan(in_a_trace)),
        ):
            traced = audit.record(
                session, action="test.ids", resource_type="test", resource_id="r-7", outcome="success"
            )
        untraced = audit.record(
            session, action="test.ids", resource_type="test", resource_id=None, outcome="success"
        )
        await session.flush()
        stored = (
            await session.execute(
                text(
                    "SELECT resource_id, request_id, trace_id FROM audit_events WHERE id IN (:a, :b) ORDER BY id"
                ),
                {"a": traced.id, "b": untraced.id},
            )
        ).all()
        assert [tuple(row) for row in stored] == [
            ("r-7", "req-7", "0af7651916cd43dd8448eb211c80319c"),
            (None, None, None),
        ]
        await session.rollback()
