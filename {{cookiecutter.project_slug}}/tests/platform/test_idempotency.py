"""Idempotency keys on a real PostgreSQL, through a small idempotent route of the test's own.

The route writes one row per execution into `idempotency_effects`, so a test counts how often the
effect really ran. These tests commit for real (concurrency needs it) and clean up after themselves.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from typing import Any
from uuid import uuid4

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter
from fastapi import FastAPI
from fastapi import Request
from fastapi import Response
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from {{ cookiecutter.package_name }}.db.session import SessionDep
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.platform import idempotency
from {{ cookiecutter.package_name }}.platform.idempotency import IdempotentRoute
from {{ cookiecutter.package_name }}.platform.idempotency import RequireIdempotencyKey

from tests.conftest import make_settings

router = APIRouter(route_class=IdempotentRoute)


class Crash(Exception):
    pass


# Crashes left to inject: the effect's handler raises after its write while this is above zero.
CRASHES = {"left": 0}
# Seconds the next handler waits before its first statement (read when the handler starts).
PAUSE_BEFORE_WRITE = {"s": 0.0}


@router.post("/effects", status_code=201, dependencies=[RequireIdempotencyKey])
async def make_effect(request: Request, session: SessionDep, response: Response) -> dict[str, Any]:
    body = await request.json()
    pause, PAUSE_BEFORE_WRITE["s"] = PAUSE_BEFORE_WRITE["s"], 0.0
    await asyncio.sleep(pause)
    effect_id = str(uuid4())
    await session.execute(
        text("INSERT INTO idempotency_effects (id, note) VALUES (:id, :note)"),
        {"id": effect_id, "note": json.dumps(body)},
    )
    await asyncio.sleep(float(body.get("linger_s", 0)) if isinstance(body, dict) else 0)
    if CRASHES["left"] > 0:
        CRASHES["left"] -= 1
        await session.flush()
        raise Crash("after the write, before the commit")
    response.headers["Location"] = f"/effects/{effect_id}"
    return {"id": effect_id, "body": body}


@pytest.fixture
async def app(database_url: URL) -> AsyncIterator[FastAPI]:
    app = create_app(make_settings(database_url))
    app.include_router(router)
    async with LifespanManager(app):
        engine: AsyncEngine = app.state.engine
        async with engine.begin() as connection:
            await connection.execute(
                text("CREATE TABLE IF NOT EXISTS idempotency_effects (id uuid, note text)")
            )
            await connection.execute(text("TRUNCATE idempotency_effects, idempotency_keys"))
        yield app
        async with engine.begin() as connection:
            await connection.execute(text("DROP TABLE idempotency_effects"))
            await connection.execute(text("TRUNCATE idempotency_keys"))


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def effects(app: FastAPI) -> int:
    async with app.state.engine.connect() as connection:
        return int(await connection.scalar(text("SELECT count(*) FROM idempotency_effects")) or 0)


async def records(app: FastAPI) -> int:
    async with app.state.engine.connect() as connection:
        return int(await connection.scalar(text("SELECT count(*) FROM idempotency_keys")) or 0)


def post(client: httpx.AsyncClient, body: object, key: str | None) -> Any:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post(
        "/effects", content=json.dumps(body), headers=headers | {"content-type": "application/json"}
    )


async def test_a_retry_replays_the_first_response_byte_for_byte(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    first = await post(client, {"n": 1}, "key-1")
    again = await post(client, {"n": 1}, "key-1")
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await effects(app) == 1


async def test_the_same_key_with_another_request_is_a_422(app: FastAPI, client: httpx.AsyncClient) -> None:
    await post(client, {"n": 1}, "key-1")
    response = await post(client, {"n": 2}, "key-1")
    assert response.status_code == 422
    assert response.json()["type"] == "/problems/idempotency-key-reused"
    assert await effects(app) == 1


async def test_key_order_and_whitespace_do_not_make_a_retry_different(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "key-1", "content-type": "application/json"}
    first = await client.post("/effects", content=b'{"a": 1, "b": 2}', headers=headers)
    again = await client.post("/effects", content=b'{ "b":2,"a":1 }', headers=headers)
    assert again.content == first.content


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (None, "/problems/idempotency-key-missing"),
        ("k" * 256, "/problems/idempotency-key-invalid"),
        ("", "/problems/idempotency-key-invalid"),
        ("has space", "/problems/idempotency-key-invalid"),
        ("semi;colon", "/problems/idempotency-key-invalid"),
    ],
)
async def test_a_missing_or_malformed_key_is_a_400(
    app: FastAPI, client: httpx.AsyncClient, key: str | None, problem: str
) -> None:
    response = await post(client, {"n": 1}, key)
    assert response.status_code == 400
    assert response.json()["type"] == problem
    assert await effects(app) == 0


async def test_a_255_character_key_and_the_quoted_form_are_accepted(client: httpx.AsyncClient) -> None:
    assert (await post(client, {"n": 1}, "k" * 255)).status_code == 201
    first = await post(client, {"n": 2}, '"quoted-key"')
    again = await post(client, {"n": 2}, "quoted-key")  # the same key, bare
    assert first.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"


async def test_fifty_concurrent_retries_take_effect_once(app: FastAPI, client: httpx.AsyncClient) -> None:
    body = {"n": 1, "linger_s": 0.2}  # the first holds the key a while
    responses = await asyncio.gather(*(post(client, body, "key-storm") for _ in range(50)))
    statuses = [response.status_code for response in responses]
    assert await effects(app) == 1
    assert statuses.count(201) >= 1
    assert set(statuses) <= {201, 409}
    replays = [r for r in responses if r.status_code == 201 and "idempotent-replayed" in r.headers]
    originals = [r for r in responses if r.status_code == 201 and "idempotent-replayed" not in r.headers]
    assert len(originals) == 1
    assert all(replay.content == originals[0].content for replay in replays)
    for conflict in (r for r in responses if r.status_code == 409):
        assert conflict.json()["type"] == "/problems/idempotency-key-in-use"
        assert conflict.headers["retry-after"] == "1"


async def test_a_crash_before_the_commit_leaves_nothing_and_the_retry_takes_effect_once(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    CRASHES["left"] = 1
    crashed = await post(client, {"n": 1}, "key-crash")
    assert crashed.status_code == 500
    assert await effects(app) == 0
    assert await records(app) == 0

    # The client retries the same request with the same key; this time the handler does not crash.
    first = await post(client, {"n": 1}, "key-crash")
    again = await post(client, {"n": 1}, "key-crash")
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert await effects(app) == 1
    assert await records(app) == 1


async def test_a_retry_that_missed_the_stored_answer_still_takes_no_second_effect(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """The race the lock-free lookup leaves open: B looks the key up while A is in flight, and
    takes the lock after A committed. B's store then finds A's row: B's write rolls back and B
    gets A's answer."""
    body = {"n": 1, "linger_s": 0.3}
    first = asyncio.create_task(post(client, body, "key-race"))
    await asyncio.sleep(0.1)  # A holds the key
    PAUSE_BEFORE_WRITE["s"] = 0.5  # B: looks up now (miss), writes after A has committed
    second = await post(client, body, "key-race")
    original = await first
    assert original.status_code == 201
    assert second.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == original.content
    assert await effects(app) == 1


async def test_keys_are_scoped_by_principal(app: FastAPI, client: httpx.AsyncClient) -> None:
    def tenant_from_header(request: Request) -> str:
        return request.headers.get("x-tenant", "-")

    app.dependency_overrides[idempotency.current_principal] = tenant_from_header
    headers = {"Idempotency-Key": "shared", "content-type": "application/json"}
    first = await client.post("/effects", content=b'{"n": 1}', headers=headers | {"x-tenant": "a"})
    other = await client.post("/effects", content=b'{"n": 1}', headers=headers | {"x-tenant": "b"})
    again = await client.post("/effects", content=b'{"n": 1}', headers=headers | {"x-tenant": "a"})
    assert first.status_code == other.status_code == 201
    assert other.content != first.content  # tenant b's key is its own
    assert again.content == first.content
    assert await effects(app) == 2


async def test_an_expired_key_counts_as_new_and_the_purge_deletes_only_expired_records(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    for n in range(5):
        assert (await post(client, {"n": n}, f"key-{n}")).status_code == 201
    async with app.state.engine.begin() as connection:
        past = datetime.now(UTC) - timedelta(seconds=1)
        await connection.execute(
            text("UPDATE idempotency_keys SET expires_at = :past WHERE key IN ('key-0', 'key-1', 'key-2')"),
            {"past": past},
        )
    again = await post(client, {"n": 0}, "key-0")
    assert again.status_code == 201
    assert "idempotent-replayed" not in again.headers  # it ran again
    assert await effects(app) == 6

    deleted = await idempotency.purge_expired(app.state.engine, batch=1)
    assert deleted == 2  # key-1 and key-2; key-0 was renewed by the new request
    assert await records(app) == 3


async def test_outcomes_are_counted_and_logged(app: FastAPI, client: httpx.AsyncClient) -> None:
    await post(client, {"n": 1}, "key-1")
    await post(client, {"n": 1}, "key-1")
    await post(client, {"n": 2}, "key-1")
    metrics = (await client.get("/metrics")).text
    assert 'idempotency_outcomes_total{outcome="stored"} 1.0' in metrics
    assert 'idempotency_outcomes_total{outcome="replay"} 1.0' in metrics
    assert 'idempotency_outcomes_total{outcome="mismatch"} 1.0' in metrics


async def test_the_openapi_document_shows_the_header(client: httpx.AsyncClient) -> None:
    operation = (await client.get("/openapi.json")).json()["paths"]["/effects"]["post"]
    [header] = [p for p in operation["parameters"] if p["in"] == "header"]
    assert header["name"] == "Idempotency-Key"
    assert "24 hours" in header["description"]


json_values = strategies.recursive(
    strategies.none() | strategies.booleans() | strategies.integers() | strategies.text(max_size=20),
    lambda children: (
        strategies.lists(children, max_size=4)
        | strategies.dictionaries(strategies.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
keys = strategies.text(alphabet="ABCxyz0189._:~+/=-", min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values, other=json_values, key=keys)
async def test_replays_equal_the_first_answer_and_other_requests_are_refused(
    client: httpx.AsyncClient, body: object, other: object, key: str
) -> None:
    unique = f"{uuid4().hex}{key}"[:255]
    first = await post(client, {"payload": body}, unique)
    again = await post(client, {"payload": body}, unique)
    assert first.status_code == 201
    assert again.content == first.content
    different = await post(client, {"payload": other}, unique)
    if json.dumps(other, sort_keys=True) == json.dumps(body, sort_keys=True):
        assert different.content == first.content
    else:
        assert different.status_code == 422
