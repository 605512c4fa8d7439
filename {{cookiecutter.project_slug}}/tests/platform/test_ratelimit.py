"""Rate limits: per caller and route, 429 problem+json over the limit, RateLimit headers on every
answer of a limited route, probes never limited, a count shared by replicas through PostgreSQL, and
a shared store that fails admitting rather than refusing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter
from fastapi import FastAPI
from fastapi import Request
from limits import parse
from limits.aio.strategies import FixedWindowRateLimiter
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from {{ cookiecutter.package_name }}.db import migrations
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.platform import ratelimit
from {{ cookiecutter.package_name }}.platform.errors import NotFound
from {{ cookiecutter.package_name }}.platform.ratelimit.limiter import caller

from tests.app import APP
from tests.conftest import MIGRATIONS
from tests.conftest import PROJECT
from tests.conftest import TEST_DATABASE
from tests.conftest import captured_logs
from tests.conftest import make_settings
from tests.conftest import recreate
from tests.conftest import scrape
from tests.conftest import serving
from tests.jwks import AUDIENCE
from tests.jwks import ISSUER
from tests.jwks import JwksServer
from tests.service import running
from tests.upstream import closed_port

router = APIRouter(prefix="/limited")


@router.get("/things")
async def things() -> dict[str, str]:
    return {"ok": "yes"}


@router.post("/things")
async def create_thing() -> dict[str, str]:
    return {"ok": "yes"}


@router.get("/missing")
async def missing() -> dict[str, str]:
    raise NotFound("Nothing here.")


@router.get("/own", dependencies=[ratelimit.limit("2/minute", name="own")])
async def own() -> dict[str, str]:
    return {"ok": "yes"}


@router.get("/unnamed", dependencies=[ratelimit.limit("4/minute")])
async def unnamed() -> dict[str, str]:
    return {"ok": "yes"}


@dataclass(frozen=True)
class Principal:
    """What the authentication module puts on `request.state`, as far as the limiter reads it."""

    subject: str
    tenant: str | None = None
    scopes: frozenset[str] = frozenset()


async def principal_from_headers(request: Request) -> Principal | None:
    """Test-only authentication: the caller says who it is."""
    subject = request.headers.get("x-test-subject")
    return None if subject is None else Principal(subject, request.headers.get("x-test-tenant"))


def limited_app(database_url: URL, **settings: Any) -> FastAPI:
    app = create_app(make_settings(database_url, **settings))
    app.include_router(router, dependencies=[ratelimit.Limited])
    app.dependency_overrides[ratelimit.current_principal_or_none] = principal_from_headers
    return app


def sample(metrics_text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(metrics_text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return found.value
    return 0.0


@pytest.mark.parametrize("storage", ["memory", "database"])
async def test_over_the_limit_answers_429_with_retry_after_and_ratelimit_headers(
    database_url: URL, storage: str
) -> None:
    app = limited_app(database_url, rate_limit_default="3/minute", rate_limit_storage=storage)
    caller = {"x-test-subject": uuid4().hex}  # the database's windows outlive the test
    async with serving(app) as client:
        answers = [await client.get("/limited/things", headers=caller) for _ in range(4)]
        metrics = await scrape(app)
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    assert [answer.headers["ratelimit"].split(";")[1] for answer in answers] == ["r=2", "r=1", "r=0", "r=0"]
    refused = answers[-1]
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == "/problems/rate-limited"
    assert refused.json()["status"] == 429
    assert isinstance(refused.json()["detail"], str)
    assert refused.json()["detail"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["ratelimit-policy"] == '"default";q=3;w=60'
    assert refused.headers["ratelimit"] == f'"default";r=0;t={refused.headers["retry-after"]}'
    assert sample(metrics, "rate_limited_requests_total", route="/limited/things") == 1


async def test_a_per_second_limit_says_retry_in_one_second(database_url: URL) -> None:
    """The reset is whole seconds rounded up, never 0: within a 1 s window, 1."""
    async with serving(limited_app(database_url, rate_limit_default="2/second")) as client:
        for _ in range(50):  # a slow machine may see a window end between two requests
            refused = await client.get("/limited/things")
            if refused.status_code == 429:
                break
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["ratelimit"] == '"default";r=0;t=1'


async def test_each_method_of_a_route_is_counted_apart(database_url: URL) -> None:
    async with serving(limited_app(database_url, rate_limit_default="1/minute")) as client:
        assert (await client.get("/limited/things")).status_code == 200
        assert (await client.get("/limited/things")).status_code == 429
        assert (await client.post("/limited/things")).status_code == 200  # reads do not spend writes
        assert (await client.post("/limited/things")).status_code == 429


async def test_the_memory_store_limits_without_the_database(database_url: URL) -> None:
    """RATE_LIMIT_STORAGE=memory counts in the process: a database that is down changes nothing."""
    unreachable = database_url.set(host="127.0.0.1", port=closed_port())
    app = limited_app(unreachable, rate_limit_default="2/minute", rate_limit_storage="memory")
    async with serving(app) as client:
        answers = [await client.get("/limited/things") for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 429]


async def test_every_answer_of_a_limited_route_counts_down(database_url: URL) -> None:
    async with serving(limited_app(database_url, rate_limit_default="5/minute")) as client:
        answers = [await client.get("/limited/things") for _ in range(2)]
        answers += [await client.get("/limited/missing") for _ in range(2)]
    remaining = [answer.headers["ratelimit"].split(";")[1] for answer in answers]
    assert remaining == ["r=4", "r=3", "r=4", "r=3"]  # one count per route
    assert answers[-1].status_code == 404  # errors carry the headers too
    assert all(answer.headers["ratelimit-policy"] == '"default";q=5;w=60' for answer in answers)


async def test_principals_and_addresses_are_counted_apart(database_url: URL) -> None:
    alice = {"x-test-subject": "alice"}
    async with serving(limited_app(database_url, rate_limit_default="2/minute")) as client:
        for _ in range(2):
            assert (await client.get("/limited/things", headers=alice)).status_code == 200
        assert (await client.get("/limited/things", headers=alice)).status_code == 429
        # Another principal, the same subject in another tenant, and anonymous traffic from the same
        # address each have a count of their own.
        assert (await client.get("/limited/things", headers={"x-test-subject": "bob"})).status_code == 200
        acme, globex = alice | {"x-test-tenant": "acme"}, alice | {"x-test-tenant": "globex"}
        assert (await client.get("/limited/things", headers=acme)).status_code == 200
        assert (await client.get("/limited/things", headers=acme)).status_code == 200
        assert (await client.get("/limited/things", headers=acme)).status_code == 429
        assert (await client.get("/limited/things", headers=globex)).status_code == 200
        assert (await client.get("/limited/things")).status_code == 200
        assert (await client.get("/limited/things")).status_code == 200
        assert (await client.get("/limited/things")).status_code == 429


async def test_the_caller_is_the_verified_principal_or_else_the_address(database_url: URL) -> None:
    """With the service's own authentication (no test override): each verified subject has its own
    count; no token and a bad token are the client address's, so a flood of bad tokens is limited."""
    with JwksServer() as idp:
        settings = {"auth_jwks_url": idp.url, "auth_issuer": ISSUER, "auth_audience": AUDIENCE}
        app = create_app(make_settings(database_url, rate_limit_default="1/minute", **settings))
        app.include_router(router, dependencies=[ratelimit.Limited])
        async with serving(app) as client:

            async def status(token: str | None) -> int:
                headers = {} if token is None else {"authorization": f"Bearer {token}"}
                return (await client.get("/limited/things", headers=headers)).status_code

            alice, bob = idp.token(subject="alice"), idp.token(subject="bob")
            assert [await status(alice), await status(alice), await status(bob)] == [200, 429, 200]
            assert [await status(None), await status("not.a.token"), await status(alice)] == [200, 429, 429]


def test_a_caller_without_an_address_is_counted_as_one() -> None:
    """A server on a Unix socket gives no client address: such callers share one count."""
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": [], "client": None})
    assert caller(request, None) == "a:-"


async def test_a_fixed_principal_is_counted_per_address(database_url: URL) -> None:
    """Development (no AUTH_JWKS_URL) serves everyone as one fixed principal: the limit counts per
    client address, or one noisy caller would spend everyone's."""
    app = create_app(make_settings(database_url, rate_limit_default="1/minute"))
    app.include_router(router, dependencies=[ratelimit.Limited])
    async with LifespanManager(app) as manager:
        statuses = []
        for address in ("10.0.0.1", "10.0.0.2", "10.0.0.1"):
            transport = httpx.ASGITransport(app=manager.app, client=(address, 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                statuses.append((await client.get("/limited/things")).status_code)
    assert statuses == [200, 200, 429]


async def test_a_route_of_its_own_limit_replaces_the_default(database_url: URL) -> None:
    async with serving(limited_app(database_url, rate_limit_default="1/minute")) as client:
        answers = [await client.get("/limited/own") for _ in range(3)]
        other = await client.get("/limited/things")  # the same app: its other routes keep the default
        unnamed = await client.get("/limited/unnamed")
    assert [answer.status_code for answer in answers] == [200, 200, 429]  # not the default's 1
    assert answers[0].headers["ratelimit-policy"] == '"own";q=2;w=60'
    assert answers[0].headers["ratelimit"].startswith('"own";r=1;')
    assert other.headers["ratelimit-policy"] == '"default";q=1;w=60'
    assert unnamed.headers["ratelimit-policy"] == '"route";q=4;w=60'  # a limit given no name


async def test_probes_metrics_and_documents_are_never_limited(database_url: URL) -> None:
    app = limited_app(database_url, rate_limit_default="1/minute")
    async with serving(app) as client:
        for _ in range(5):  # /metrics has a port of its own, outside the app's routes
            assert "rate_limited" in await scrape(app)
        for path in ("/health", "/ready", "/openapi.json", "/docs"):
            for _ in range(5):
                answer = await client.get(path)
                assert answer.status_code == 200, path
                assert "ratelimit" not in answer.headers, path
        assert (await client.get("/limited/things")).status_code == 200
        assert (await client.get("/limited/things")).status_code == 429


async def test_no_limit_when_disabled(database_url: URL) -> None:
    app = limited_app(database_url, rate_limit_default="1/minute", rate_limit_enabled=False)
    async with serving(app) as client:
        answers = [await client.get("/limited/things") for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert "ratelimit" not in answers[-1].headers


@pytest.mark.parametrize("value", ["lots", "0/second", "1/second;10/minute"])
def test_a_bad_default_stops_startup_naming_the_variable(value: str) -> None:
    env = {key: val for key, val in os.environ.items() if key != "DATABASE_URL"}
    env["RATE_LIMIT_DEFAULT"] = value
    result = subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", "serve"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("configuration error: RATE_LIMIT_DEFAULT: "), result.stderr
    assert "Traceback" not in result.stderr


async def test_the_database_window_counts_then_starts_again(database_url: URL) -> None:
    engine = create_async_engine(database_url)
    try:
        storage = ratelimit.DatabaseStorage(engine)
        key = f"test/{uuid4()}"
        assert [(await storage.hit(key, 1.0))[0] for _ in range(3)] == [1, 2, 3]
        hits, reset_s = await storage.hit(key, 1.0)
        assert (hits, 0 < reset_s <= 1.0) == (4, True)
        await asyncio.sleep(reset_s + 0.05)
        assert await storage.get(key) == 0
        assert (await storage.hit(key, 1.0))[0] == 1  # a new window
        # limits' own strategy runs on the storage too.
        strategy = FixedWindowRateLimiter(storage)
        item = parse("2/second")
        subject = str(uuid4())
        assert [await strategy.hit(item, subject) for _ in range(3)] == [True, True, False]
        assert (await strategy.get_window_stats(item, subject)).remaining == 0
        # Ended windows are purged; live ones stay.
        await asyncio.sleep(1.1)
        live = f"test/{uuid4()}"
        await storage.hit(live, 60.0)
        assert await ratelimit.purge_expired(engine) >= 2
        async with engine.connect() as connection:
            keys = set((await connection.execute(text("SELECT key FROM rate_limits"))).scalars())
        assert live in keys
        assert key not in keys
    finally:
        await engine.dispose()


async def test_limits_own_strategy_counts_costs_and_clears_on_the_database(database_url: URL) -> None:
    """The storage is a `limits` storage: what limits' own API does on it must hold (a weighted hit,
    the window's reset time, clearing one caller, the health check, the reset of every window)."""
    engine = create_async_engine(database_url)
    down = create_async_engine(database_url.set(host="127.0.0.1", port=closed_port()))
    try:
        storage = ratelimit.DatabaseStorage(engine)
        strategy = FixedWindowRateLimiter(storage)
        item, subject = parse("3/minute"), str(uuid4())
        assert await strategy.hit(item, subject, cost=2)
        stats = await strategy.get_window_stats(item, subject)
        assert stats.remaining == 1
        assert time.time() + 50 < stats.reset_time <= time.time() + 60
        fresh = await strategy.get_window_stats(item, str(uuid4()))  # a caller with no window yet
        assert fresh.remaining == 3
        assert fresh.reset_time <= time.time()  # as limits' own storages: nothing to wait for
        assert not await strategy.hit(item, subject, cost=2)
        await strategy.clear(item, subject)  # an operator lifts one caller's limit
        assert await strategy.hit(item, subject, cost=3)
        assert await storage.check()
        assert not await ratelimit.DatabaseStorage(down).check()
        assert await storage.reset() >= 1  # this test's window, and any other test's
        assert await storage.reset() == 0
    finally:
        await down.dispose()
        await engine.dispose()


async def test_a_shared_store_that_is_down_admits_and_is_counted(database_url: URL) -> None:
    unreachable = database_url.set(host="127.0.0.1", port=closed_port())
    app = limited_app(unreachable, rate_limit_default="1/minute", rate_limit_storage="database")
    with captured_logs() as lines:
        async with serving(app) as client:
            answers = [await client.get("/limited/things") for _ in range(3)]
            metrics = await scrape(app)
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert "ratelimit" not in answers[0].headers  # nothing known to tell
    assert sample(metrics, "rate_limit_store_errors_total") == 3
    [logged] = [line for line in lines() if line["event"] == "rate_limit_store_unavailable"]  # once
    assert (logged["level"], logged["error"], logged["admitted"]) == ("warning", "DatabaseUnreachable", True)


SCRATCH = f"{TEST_DATABASE}_ratelimit"
LIMIT = 5


@pytest.mark.parametrize(("storage", "admitted"), [("database", LIMIT), ("memory", 2 * LIMIT)])
def test_two_replicas_share_the_database_limit(server_url: URL, storage: str, admitted: int) -> None:
    """Two real server processes on one database, requests alternating between them: the shared
    store admits exactly the limit in total; each process's memory admits it once per process."""
    asyncio.run(recreate(server_url, SCRATCH))
    url = server_url.set(database=SCRATCH).render_as_string(hide_password=False)
    migrations.upgrade(MIGRATIONS, url)
    settings = {"RATE_LIMIT_DEFAULT": f"{LIMIT}/minute", "RATE_LIMIT_STORAGE": storage}
    with running(url, app=APP, **settings) as first, running(url, app=APP, **settings) as second:
        statuses = [
            httpx.get(f"{replica.base}/_test/limited", timeout=10).status_code
            for _ in range(3 * LIMIT)
            for replica in (first, second)
        ]
    assert statuses.count(200) == admitted, statuses
    assert statuses.count(429) == len(statuses) - admitted
