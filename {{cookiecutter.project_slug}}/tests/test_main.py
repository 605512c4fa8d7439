"""The lifespan: what start-up opens, shutdown closes, each resource whatever the others do."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.platform import http

from tests.conftest import make_settings
from tests.conftest import serving


class Broken(Exception):
    pass


async def test_a_failure_closing_one_resource_does_not_leak_the_others(
    database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(database_url, service_name="lifespan-test")

    def client_that_fails_to_close(settings: object) -> httpx.AsyncClient:
        client = httpx.AsyncClient()

        async def aclose() -> None:
            raise Broken("the client would not close")

        client.aclose = aclose  # type: ignore[method-assign]
        return client

    monkeypatch.setattr(http, "create_client", client_that_fails_to_close)
    app = create_app(settings)
    serve = serving(app)
    client = await serve.__aenter__()
    assert (await client.get("/ready")).status_code == 200
    async with app.state.engine.connect() as connection:  # the pool now keeps one connection open
        await connection.execute(text("SELECT 1"))
    with pytest.raises(Broken):
        await serve.__aexit__(None, None, None)

    observer = create_async_engine(database_url)
    try:
        async with observer.connect() as connection:
            open_connections = await connection.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'lifespan-test'")
            )
    finally:
        await observer.dispose()
    assert open_connections == 0  # the engine and the probe engine were disposed all the same
