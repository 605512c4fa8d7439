from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.engine import URL

from {{ cookiecutter.package_name }}.db.session import SessionDep
from {{ cookiecutter.package_name }}.main import create_app

from tests.conftest import captured_logs
from tests.conftest import make_settings
from tests.conftest import serving


async def test_an_exhausted_pool_answers_503_instead_of_hanging(database_url: URL) -> None:
    app = create_app(make_settings(database_url, db_pool_size=1, db_max_overflow=0, db_pool_timeout_s=0.2))
    holding, release = asyncio.Event(), asyncio.Event()

    @app.get("/hold")
    async def hold(session: SessionDep) -> dict[str, str]:
        await session.execute(text("SELECT 1"))  # takes the only connection
        holding.set()
        await release.wait()
        return {}

    @app.get("/query")
    async def query(session: SessionDep) -> dict[str, int]:
        return {"one": int(await session.scalar(text("SELECT 1")) or 0)}

    with captured_logs() as lines:
        async with serving(app) as client:
            holder = asyncio.create_task(client.get("/hold"))
            await asyncio.wait_for(holding.wait(), 10)  # the only connection is taken
            response = await asyncio.wait_for(client.get("/query"), timeout=5)
            release.set()
            assert (await holder).status_code == 200
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "/problems/database-busy"
    assert response.headers["retry-after"] == "1"
    assert response.json()["detail"]
    # The operator's side: the RUNBOOK's pool-exhaustion entry starts from this line.
    [warning] = [line for line in lines() if line["event"] == "db_pool_exhausted"]
    assert "QueuePool limit" in warning["error"]
