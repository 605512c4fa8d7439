"""The lifespan: what start-up opens, shutdown closes, each resource whatever the others do."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import typing
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import params
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.platform import auth
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


def _dependencies(value: Any) -> Iterator[Any]:
    """The callables a `Depends` (or an `Annotated[..., Depends(...)]` alias) names, and theirs."""
    metadata = getattr(value, "__metadata__", None)
    markers = metadata if metadata is not None else (value,)
    for marker in markers:
        if isinstance(marker, params.Depends) and marker.dependency is not None:
            call = marker.dependency
            yield call
            function = call if inspect.isfunction(call) else type(call).__call__
            for hint in typing.get_type_hints(function, include_extras=True).values():
                yield from _dependencies(hint)


def test_no_dependency_of_the_service_runs_in_a_worker_thread() -> None:
    """FastAPI runs a plain `def` dependency in a worker thread: a thread hand-off on every request
    (measured: about a tenth of an idempotent POST's time). Every dependency the service declares,
    and every one those depend on, is `async`; a library's own (FastAPI's security schemes) are not
    ours to change."""
    package = importlib.import_module(create_app.__module__.split(".")[0])
    declared: list[Any] = [auth.require("any:scope")]
    for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        if module.name.endswith("__main__"):
            continue
        declared.extend(vars(importlib.import_module(module.name)).values())
    seen: set[str] = set()
    for value in declared:
        for call in _dependencies(value):
            function = call if inspect.isfunction(call) else type(call).__call__
            if not function.__module__.startswith(package.__name__):
                continue
            seen.add(function.__qualname__)
            async_call = inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)
            assert async_call, f"{function.__module__}.{function.__qualname__} is a plain def"
    # The walk reached the platform's dependencies: the session, the principal, the key's claim.
    assert {"_request_session", "authenticate", "current_principal"} <= seen, seen
