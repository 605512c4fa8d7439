"""Fixtures on a real PostgreSQL: the embedded server unless `TEST_DATABASE_URL` names one.

Each session creates a fresh database and migrates it to head; each test runs in a transaction that
is rolled back, so tests never see each other's rows.
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
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
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
    raw = os.environ.get("TEST_DATABASE_URL") or embedded.start(PROJECT / ".data" / "postgres-test")
    return to_async_url(raw)


@pytest.fixture(scope="session")
def database_url(server_url: URL) -> URL:
    """A fresh database at the Alembic head."""
    asyncio.run(recreate(server_url, TEST_DATABASE, f"{TEST_DATABASE}_empty"))
    url = server_url.set(database=TEST_DATABASE)
    migrations.upgrade(MIGRATIONS, url.render_as_string(hide_password=False))
    return url


@pytest.fixture(scope="session")
def empty_database_url(database_url: URL) -> URL:
    """A database no migration has touched: the schema is behind."""
    return database_url.set(database=f"{TEST_DATABASE}_empty")


def migrations_with(tmp_path: Path, name: str, revision: str) -> Path:
    """A copy of the migrations with one more revision on top: `revision` is its source, with
    `{head}` standing for the current head it revises."""
    copy = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, copy)
    head = max(migrations.expected_heads(MIGRATIONS))  # the chain has a single head (tested)
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


@pytest.fixture
def log_lines(app: FastAPI) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The JSON log lines written since the fixture started, parsed (each must be valid JSON)."""
    sink = io.BytesIO()
    logs.configure("INFO", stream=sink)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in sink.getvalue().splitlines()]

    yield lines
    logs.configure("INFO")
