"""Fixtures on a real PostgreSQL: the embedded server unless `TEST_DATABASE_URL` names one.

Each session creates a fresh database and migrates it to its heads; each test runs in a transaction
that is rolled back, so tests never see each other's rows.

Two roles, as in production: `owner_url` is the migration role (the server's superuser, which owns
the schema) for what runs DDL, creates databases or roles, or empties tables; `database_url` is the
runtime role (`DB_RUNTIME_ROLE`, holding only what the migrations grant), which `settings`, `app`
and `client` serve as: every test of the service runs with least privilege.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import asynccontextmanager
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine

from {{ cookiecutter.package_name }}.db import embedded
from {{ cookiecutter.package_name }}.db import migrations
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.platform import logs
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.settings import to_async_url

PROJECT = Path(__file__).resolve().parents[1]
MIGRATIONS = PROJECT / "migrations"
TEST_DATABASE = "{{ cookiecutter.package_name }}_test"
RUNTIME_ROLE: str = Settings.model_fields["db_runtime_role"].default


async def recreate(server: URL, *names: str) -> None:
    engine = create_async_engine(server, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            for name in names:
                await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                await connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def server_url() -> URL:
    """The server, as a role that may create databases and roles: the migration role."""
    raw = os.environ.get("TEST_DATABASE_URL") or embedded.start(PROJECT / ".data" / "postgres-test")
    # Every database the tests migrate grants the runtime role: it exists before any of them.
    embedded.runtime_role(raw, RUNTIME_ROLE)
    return to_async_url(raw)


@pytest.fixture(scope="session")
def runtime_server_url(server_url: URL) -> URL:
    """The server, as the runtime role (no privilege but what the migrations grant)."""
    return server_url.set(username=RUNTIME_ROLE, password=embedded.DEV_RUNTIME_PASSWORD)


@pytest.fixture(scope="session")
def owner_url(server_url: URL, runtime_server_url: URL) -> URL:
    """A fresh database at the Alembic heads, as the migration role that owns its schema."""
    asyncio.run(recreate(server_url, TEST_DATABASE, f"{TEST_DATABASE}_empty"))
    url = server_url.set(database=TEST_DATABASE)
    migrations.upgrade(MIGRATIONS, url.render_as_string(hide_password=False))
    return url


@pytest.fixture(scope="session")
def database_url(owner_url: URL, runtime_server_url: URL) -> URL:
    """The same database as the runtime role: what the service connects as."""
    return runtime_server_url.set(database=owner_url.database)


@pytest.fixture(scope="session")
def empty_database_url(database_url: URL) -> URL:
    """A database no migration has touched: the schema is behind."""
    return database_url.set(database=f"{TEST_DATABASE}_empty")


def migrations_with(tmp_path: Path, name: str, revision: str) -> Path:
    """A copy of the migrations with one more revision of the service's: `revision` is its source,
    with `{head}` standing for the head of the service's branch it revises (`make migration`'s)."""
    copy = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, copy)
    (head,) = migrations.domain_heads(MIGRATIONS)
    (copy / "versions" / name).write_text(revision.format(head=head))
    return copy


def make_settings(url: URL | str, **overrides: Any) -> Settings:
    raw = url.render_as_string(hide_password=False) if isinstance(url, URL) else url
    # Metrics on any free port: many apps run at once in a test session.
    overrides.setdefault("metrics_port", 0)
    # Tests fire bursts of concurrent requests (duplicate storms) that MAX_CONCURRENT_REQUESTS would
    # shed; shedding is tested with its own small limit (tests/platform/test_shedding.py).
    overrides.setdefault("max_concurrent_requests", 1000)
    return Settings(database_url=raw, migrations_dir=MIGRATIONS, **overrides)  # type: ignore[arg-type]


async def scrape(app: FastAPI) -> str:
    """What Prometheus reads from the app's metrics port (its lifespan must be running)."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{app.state.metrics_port}/metrics", timeout=5)
    response.raise_for_status()
    return response.text


def sample(exposition: str, name: str, **labels: str) -> float | None:
    """One sample's value in a scrape (`scrape`'s text), parsed as Prometheus does; None when absent."""
    for family in text_string_to_metric_families(exposition):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client on `app` with its lifespan running, on the app's real engine (commits are real)."""
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@pytest.fixture
def settings(database_url: URL) -> Settings:
    return make_settings(database_url)


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client on the app with its lifespan running, every request inside one rolled-back transaction."""
    async with LifespanManager(app) as manager:
        engine = app.state.engine
        async with engine.connect() as connection:
            outer = await connection.begin()
            # Each request's `session.begin()` becomes a SAVEPOINT inside `outer`.
            app.state.sessionmaker = async_sessionmaker(
                bind=connection,
                class_=AsyncSession,
                expire_on_commit=False,
                join_transaction_mode="create_savepoint",
            )
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                yield client
            await outer.rollback()


class CapturedLogs:
    """The log lines written to a buffer: called, parsed (each must be valid JSON); `text()`, as
    written."""

    def __init__(self) -> None:
        self.sink = io.BytesIO()

    def __call__(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.sink.getvalue().splitlines()]

    def text(self) -> str:
        return self.sink.getvalue().decode()


@contextmanager
def captured_logs() -> Iterator[CapturedLogs]:
    """The log lines written inside the block; logging is put back after it. Enter it after
    `create_app`, which configures logging itself."""
    captured = CapturedLogs()
    logs.configure("INFO", stream=captured.sink)
    try:
        yield captured
    finally:
        logs.configure("INFO")


@pytest.fixture
def log_lines(app: FastAPI) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The JSON log lines written since the fixture started, parsed (each must be valid JSON)."""
    with captured_logs() as lines:
        yield lines
