"""The real app plus test-only routes: the platform's guarantees, tested without the example domain.

`create` builds the production app (`create_app`) and adds, under `/_test`, routes that exercise
what every service gets: an idempotent POST that may call an upstream through the resilient client
and may hold until the test releases it, a GET that calls a named upstream and answers its status,
a read that uses the request's session, and every response's `X-Worker-Pid` (which process served
it). In-process tests call `create(settings, ...)` and serve it with `tests.conftest.serving`; a
real server serves it with `tests.service.running(..., app=APP)` (`python -m tests.serve`, the
service's own `serve` command). The production app never has them. A route that several tests
share, or that a real server must serve, goes here, once for both; a route one test needs stays
inline in that test, beside what it checks.

Holding is signalled, not slept on: the route touches `<signals>/<name>.held` once it holds (before
any statement, so it holds no pooled connection) and waits for `<signals>/<name>.release`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi import FastAPI
from fastapi import Request
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from starlette.types import ASGIApp
from starlette.types import Message
from starlette.types import Receive
from starlette.types import Scope
from starlette.types import Send

from {{ cookiecutter.package_name }}.db.session import SessionDep
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.platform import ratelimit
from {{ cookiecutter.package_name }}.platform.idempotency import ClaimDep
from {{ cookiecutter.package_name }}.platform.idempotency import IdempotentRoute
from {{ cookiecutter.package_name }}.platform.resilience import UpstreamUnavailable
from {{ cookiecutter.package_name }}.settings import Settings

APP = "tests.app:create"
UPSTREAM = "test-upstream"  # POST /_test/effects calls it; its breaker and metrics carry this name
HOLD_LIMIT_S = 30.0  # a hold nobody releases ends (500) rather than hanging the test

router = APIRouter(prefix="/_test", route_class=IdempotentRoute)


class Effect(BaseModel):
    upstream: bool = False  # POST <upstream>/calls first, with a key derived from the request's
    hold: str | None = None  # hold under this name until released


@router.post("/effects", status_code=201)
async def make_effect(body: Effect, request: Request, session: SessionDep, claim: ClaimDep) -> dict[str, Any]:
    state = request.app.state
    if body.upstream:
        upstream = state.upstreams.get(UPSTREAM, state.test_upstreams[UPSTREAM])
        answer = await upstream.request(
            "POST", "/calls", json={}, headers={"Idempotency-Key": claim.derive("call")}
        )
        if answer.status_code >= 500:
            raise UpstreamUnavailable(f"the upstream answered {answer.status_code}.")
    if body.hold is not None:
        await Signals(state.test_signals).hold(body.hold)
    # The request's first statement: only now does it take a pooled connection. Its effect is the
    # answer the platform stores in this transaction (idempotency_keys), committed with it.
    await session.execute(text("SELECT 1"))
    return {"pid": os.getpid()}


@router.get("/call/{name}")
async def call(name: str, request: Request) -> dict[str, int]:
    """Calls the upstream `name` (its URL given to `create`) the way a domain's route does."""
    state = request.app.state
    response = await state.upstreams.get(name, state.test_upstreams[name]).request("GET", "/thing")
    return {"status": response.status_code}


@router.get("/read")
async def read(session: SessionDep) -> dict[str, int]:
    return {"one": int(await session.scalar(text("SELECT 1")) or 0)}


# Rate limited as every domain route is (main.py), apart so that the other test routes' bursts
# (50 retries, a rolling restart's load) are never limited.
limited_router = APIRouter(prefix="/_test")


@limited_router.get("/limited")
async def limited() -> dict[str, bool]:
    return {"ok": True}


class WorkerPid:
    """`X-Worker-Pid` on every response, refusals and probes included: which process answered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.pid = str(os.getpid()).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_pid(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-worker-pid", self.pid)]
            await send(message)

        return await self.app(scope, receive, send_with_pid)


def create(
    settings: Settings | None = None,
    *,
    upstreams: Mapping[str, str] | None = None,
    signals: Path | None = None,
) -> FastAPI:
    """The test app; `upstreams` maps a name to its URL (`UPSTREAM`: the one POST /_test/effects
    calls). A real server (uvicorn's factory, no arguments) reads TEST_UPSTREAM_URL (`UPSTREAM`'s)
    and TEST_SIGNALS_DIR from its environment."""
    app = create_app(settings)
    app.state.test_upstreams = {
        UPSTREAM: os.environ.get("TEST_UPSTREAM_URL", "http://127.0.0.1:9"),
        **(upstreams or {}),
    }
    app.state.test_signals = signals or Path(os.environ.get("TEST_SIGNALS_DIR", "."))
    app.include_router(router)
    app.include_router(limited_router, dependencies=[ratelimit.Limited], responses=ratelimit.RESPONSES)
    app.add_middleware(WorkerPid)
    return app


class Signals:
    """The files through which a held request and its test meet, across processes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def hold(self, name: str) -> None:
        (self.directory / f"{name}.held").touch()
        release = self.directory / f"{name}.release"
        limit = time.monotonic() + HOLD_LIMIT_S
        while not release.exists():
            if time.monotonic() > limit:
                raise TimeoutError(f"hold {name!r} was never released")
            await asyncio.sleep(0.01)

    async def held(self, name: str, timeout_s: float = 30.0) -> None:
        """Returns once a request holds under `name`."""
        held = self.directory / f"{name}.held"
        limit = time.monotonic() + timeout_s
        while not held.exists():
            if time.monotonic() > limit:
                raise TimeoutError(f"no request held {name!r} within {timeout_s} s")
            await asyncio.sleep(0.01)

    def release(self, name: str) -> None:
        (self.directory / f"{name}.release").touch()


async def stored_answer(database_url: URL, key: str) -> tuple[int | None, bytes | None] | None:
    """The answer committed for `key` on POST /_test/effects (status, body), None without a record."""
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    text(
                        "SELECT status_code, body FROM idempotency_keys"
                        " WHERE route = '/_test/effects' AND key = :key"
                    ),
                    {"key": key},
                )
            ).one_or_none()
    finally:
        await engine.dispose()
    return None if row is None else (row.status_code, row.body)


async def answered(database_url: URL, prefix: str) -> int:
    """How many keys starting with `prefix` have an answer committed."""
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            count = await connection.scalar(
                text(
                    "SELECT count(*) FROM idempotency_keys WHERE route = '/_test/effects'"
                    " AND key LIKE :prefix AND status_code IS NOT NULL"
                ),
                {"prefix": f"{prefix}%"},
            )
    finally:
        await engine.dispose()
    return int(count or 0)
