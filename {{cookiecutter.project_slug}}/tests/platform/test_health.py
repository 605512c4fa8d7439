from __future__ import annotations

import asyncio
import time

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from {{ cookiecutter.package_name }}.db.session import SessionDep
from {{ cookiecutter.package_name }}.main import create_app

from tests.conftest import TEST_DATABASE
from tests.conftest import captured_logs
from tests.conftest import make_settings
from tests.conftest import recreate
from tests.conftest import serving
from tests.upstream import Reply
from tests.upstream import ScriptedUpstream

AHEAD = f"{TEST_DATABASE}_ahead"


async def _get(settings_url: URL | str, path: str) -> httpx.Response:
    async with serving(create_app(make_settings(settings_url, ready_timeout_s=2.0))) as client:
        return await client.get(path)


async def test_health_is_ok_without_checking_dependencies() -> None:
    # Nothing listens on port 1: liveness must not care.
    response = await _get("postgresql://nobody@127.0.0.1:1/nothing", "/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_when_database_answers_and_schema_is_at_head(client: httpx.AsyncClient) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "schema": "ok", "shutdown": "ok"},
    }


async def test_not_ready_when_database_is_unreachable() -> None:
    response = await _get("postgresql://nobody@127.0.0.1:1/nothing", "/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"] == {
        "database": "unreachable (ConnectionRefusedError)",  # what failed, for the operator
        "schema": "unknown",
        "shutdown": "ok",
    }


async def test_not_ready_when_schema_is_behind_head(empty_database_url: URL) -> None:
    response = await _get(empty_database_url, "/ready")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"] == "ok"
    assert checks["schema"].startswith("behind: at no revision, code expects")


async def test_ready_when_the_database_is_ahead_of_this_code(server_url: URL) -> None:
    """The next release's migration has run (expand/contract): this replica still serves."""
    await recreate(server_url, AHEAD)
    url = server_url.set(database=AHEAD)
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)"))
        await connection.execute(text("INSERT INTO alembic_version VALUES ('9999_from_the_future')"))
    await engine.dispose()
    response = await _get(url, "/ready")
    assert response.status_code == 200, response.text


async def test_ready_answers_within_its_timeout_when_the_database_hangs() -> None:
    # A server that accepts connections and never answers: the worst kind of database outage.
    async with ScriptedUpstream(default=Reply(hang=True)) as silent:
        app = create_app(make_settings(f"postgresql://app@127.0.0.1:{silent.port}/app", ready_timeout_s=0.5))
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                started = time.monotonic()
                response = await client.get("/ready")
                elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["checks"] == {
        "database": "no answer within 0.5s",
        "schema": "unknown",
        "shutdown": "ok",
    }
    assert elapsed < 0.5 + 1.5  # about 0.5 s; loose, a loaded machine only adds to it


async def test_ready_does_not_queue_behind_a_busy_pool(database_url: URL) -> None:
    # READY_TIMEOUT_S well above the pool's timeout: a probe queued behind the pool fails after 1 s,
    # while a probe of its own has time to spare on a loaded machine.
    settings = make_settings(
        database_url, db_pool_size=1, db_max_overflow=0, db_pool_timeout_s=1.0, ready_timeout_s=10.0
    )
    app = create_app(settings)
    holding, release = asyncio.Event(), asyncio.Event()

    @app.get("/hold")
    async def hold(session: SessionDep) -> dict[str, str]:
        await session.execute(text("SELECT 1"))  # takes the pool's only connection
        holding.set()
        await release.wait()
        return {}

    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            holder = asyncio.create_task(client.get("/hold"))
            await asyncio.wait_for(holding.wait(), 10)  # the pool's only connection is taken
            response = await client.get("/ready")
            release.set()
            await holder
    assert response.status_code == 200, response.text


async def test_a_change_of_readiness_is_logged_once_with_its_checks(database_url: URL) -> None:
    """An operator sees when a replica left or rejoined the load balancer, and why: one line per
    change (a warning when it turns unready, info when ready again), none for a probe that changes
    nothing."""
    for url, level, ready, database in (
        ("postgresql://nobody@127.0.0.1:1/nothing", "warning", False, "unreachable (ConnectionRefusedError)"),
        (database_url, "info", True, "ok"),
    ):
        app = create_app(make_settings(url, ready_timeout_s=2.0, ready_cache_s=0.0))
        with captured_logs() as lines:
            async with serving(app) as client:
                for _ in range(3):
                    await client.get("/ready")
        [changed] = [line for line in lines() if line["event"] == "readiness_changed"]
        assert (changed["level"], changed["ready"], changed["database"]) == (level, ready, database)
