from __future__ import annotations

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy.engine import URL

from {{ cookiecutter.package_name }}.main import create_app

from tests.conftest import make_settings


async def _get(settings_url: URL | str, path: str) -> httpx.Response:
    app = create_app(make_settings(settings_url, ready_timeout_s=2.0))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
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
    assert body["checks"]["database"].startswith("unreachable")


async def test_not_ready_when_schema_is_behind_head(empty_database_url: URL) -> None:
    response = await _get(empty_database_url, "/ready")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"] == "ok"
    assert checks["schema"].startswith("at no revision, code expects")
