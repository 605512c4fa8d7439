"""Idempotency keys on a real PostgreSQL, through a small idempotent route of the test's own.

The route writes one row per execution into `idempotency_effects` and, when asked, calls a real
upstream on 127.0.0.1 first, so a test counts how often the effect and the outside call really ran.
What the handler does is chosen by the request body. These tests commit for real (concurrency
needs it) and clean up after themselves.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter
from fastapi import FastAPI
from fastapi import HTTPException
from fastapi import Request
from fastapi import Response
from fastapi.responses import JSONResponse
from fastapi.responses import StreamingResponse
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from {{ cookiecutter.package_name }}.db.session import SessionDep
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.platform import idempotency
from {{ cookiecutter.package_name }}.platform.errors import Conflict
from {{ cookiecutter.package_name }}.platform.errors import ServiceUnavailable
from {{ cookiecutter.package_name }}.platform.idempotency import ClaimDep
from {{ cookiecutter.package_name }}.platform.idempotency import IdempotentRoute

from tests.conftest import make_settings
from tests.conftest import scrape
from tests.upstream import Reply
from tests.upstream import ScriptedUpstream

router = APIRouter(route_class=IdempotentRoute)


class Crash(Exception):
    pass


# The first handler that waits on `HOLD` announces it on `HELD`, so a test acts while a key is held.
HOLD: dict[str, asyncio.Event] = {}
HELD: dict[str, asyncio.Event] = {}


@router.post("/effects", status_code=201)
async def make_effect(request: Request, session: SessionDep, claim: ClaimDep, response: Response) -> Any:
    body = await request.json()
    order = body if isinstance(body, dict) else {}
    if "upstream" in order:
        upstream = request.app.state.upstreams.get(order["upstream"], order["upstream"])
        await upstream.request(
            "POST", "/charges", json=body, headers={"Idempotency-Key": claim.derive("charge")}
        )
    effect_id = str(uuid4())
    await session.execute(
        text("INSERT INTO idempotency_effects (id, note) VALUES (:id, :note)"),
        {"id": effect_id, "note": json.dumps(body)},
    )
    await session.flush()
    if order.get("hold") in HOLD:  # the first handler with this body holds; retries do not
        HELD[order["hold"]].set()
        await HOLD.pop(order["hold"]).wait()
    outcome = order.get("then")
    if outcome == "crash":
        raise Crash("after the write, before the commit")
    if outcome == "refuse":
        raise Conflict("Refused by the domain.", slug="refused")
    if outcome == "refuse-http":  # FastAPI's own exception, which handlers also raise
        raise HTTPException(404, "No such thing.")
    if outcome == "raise-503":
        raise ServiceUnavailable("A dependency is down.")
    if outcome == "return-503":
        return JSONResponse({"detail": "returned"}, status_code=503)
    if outcome == "return-500":  # 500 is the first status that is not stored
        return JSONResponse({"detail": "returned"}, status_code=500)
    if outcome == "raise-http-500":
        raise HTTPException(500, "Broken.")
    response.headers["Location"] = f"/effects/{effect_id}"
    return {"id": effect_id, "body": body}


@router.get("/effects")
async def count_effects(session: SessionDep) -> int:
    return int(await session.scalar(text("SELECT count(*) FROM idempotency_effects")) or 0)


@pytest.fixture
async def app(database_url: URL, owner_url: URL) -> AsyncIterator[FastAPI]:
    app = create_app(make_settings(database_url, http_retry_max_wait_s=0.05))
    app.include_router(router)
    # The table is the test's schema change: made by the owner, used by the app's runtime role.
    owner = create_async_engine(owner_url, poolclass=NullPool)
    async with LifespanManager(app):
        async with owner.begin() as connection:
            await connection.execute(
                text("CREATE TABLE IF NOT EXISTS idempotency_effects (id uuid, note text)")
            )
            await connection.execute(text("TRUNCATE idempotency_effects, idempotency_keys"))
        yield app
        async with owner.begin() as connection:
            await connection.execute(text("DROP TABLE idempotency_effects"))
            await connection.execute(text("TRUNCATE idempotency_keys"))
    await owner.dispose()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def scalar(app: FastAPI, sql: str) -> Any:
    async with app.state.engine.connect() as connection:
        return await connection.scalar(text(sql))


async def effects(app: FastAPI) -> int:
    return int(await scalar(app, "SELECT count(*) FROM idempotency_effects"))


async def records(app: FastAPI) -> int:
    return int(await scalar(app, "SELECT count(*) FROM idempotency_keys"))


def post(client: httpx.AsyncClient, body: object, key: str | None) -> Any:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post(
        "/effects", content=json.dumps(body), headers=headers | {"content-type": "application/json"}
    )


def hold(name: str) -> tuple[asyncio.Event, asyncio.Event]:
    HELD[name], HOLD[name] = asyncio.Event(), asyncio.Event()
    return HELD[name], HOLD[name]


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


@pytest.mark.parametrize("copies", [20, 50])
async def test_concurrent_duplicates_are_refused_before_the_handler_calls_out(
    app: FastAPI, client: httpx.AsyncClient, copies: int
) -> None:
    async with ScriptedUpstream(default=Reply(201, {"charged": True}, delay_s=0.5)) as charges:
        body = {"n": 1, "upstream": charges.url}
        responses = await asyncio.gather(*(post(client, body, "key-storm") for _ in range(copies)))
        assert len(charges.received) == 1
        [call] = charges.received
    assert await effects(app) == 1
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {201, 409}
    originals = [r for r in responses if r.status_code == 201 and "idempotent-replayed" not in r.headers]
    assert len(originals) == 1
    assert all(r.content == originals[0].content for r in responses if r.status_code == 201)
    for conflict in (r for r in responses if r.status_code == 409):
        assert conflict.json()["type"] == "/problems/idempotency-key-in-use"
        assert conflict.headers["retry-after"] == "1"
    # The upstream got a key of its own, derived from the client's: never the client's itself,
    # and another for another client key.
    assert len(call.headers["idempotency-key"]) == 64
    async with ScriptedUpstream(default=Reply(201, {"charged": True})) as charges:
        await post(client, {"n": 2, "upstream": charges.url}, "key-storm-2")
        [other] = charges.received
    assert other.headers["idempotency-key"] not in {call.headers["idempotency-key"], "key-storm-2"}


@pytest.mark.parametrize(
    ("outcome", "status", "type_"),
    [("refuse", 409, "/problems/refused"), ("refuse-http", 404, "/problems/not-found")],
)
async def test_a_refusal_the_handler_raises_is_stored_without_its_writes(
    app: FastAPI, client: httpx.AsyncClient, outcome: str, status: int, type_: str
) -> None:
    refused = await post(client, {"n": 1, "then": outcome}, "key-refused")
    again = await post(client, {"n": 1, "then": outcome}, "key-refused")
    assert refused.status_code == status
    assert refused.json()["type"] == type_
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == refused.content
    assert await effects(app) == 0  # the write before the refusal rolled back


@pytest.mark.parametrize("outcome", ["crash", "raise-503", "return-503", "return-500", "raise-http-500"])
async def test_a_request_without_an_answer_writes_nothing_and_frees_its_key(
    app: FastAPI, client: httpx.AsyncClient, outcome: str, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    failed = await post(client, {"n": 1, "then": outcome}, f"key-{outcome}")
    assert failed.status_code in (500, 503)
    assert await effects(app) == 0  # a returned 5xx rolls back like a raised one
    assert await records(app) == 0  # and its claim is gone at once
    [released] = [line for line in log_lines() if line["event"] == "idempotency_released"]
    # Named by what ended the request (`_Answer`: the handler returned a 5xx).
    errors = {"crash": "Crash", "raise-503": "ServiceUnavailable", "raise-http-500": "HTTPException"}
    assert released["error"] == errors.get(outcome, "_Answer")

    # The client retries the same request with the same key; this time it goes through, once.
    first = await post(client, {"n": 1}, f"key-{outcome}")
    again = await post(client, {"n": 1}, f"key-{outcome}")
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert await effects(app) == 1
    assert await records(app) == 1


async def test_a_cancelled_request_releases_its_claim(app: FastAPI, client: httpx.AsyncClient) -> None:
    held, release = hold("cancel")
    body = {"n": 1, "hold": "cancel"}
    request = asyncio.create_task(post(client, body, "key-cancel"))
    await asyncio.wait_for(held.wait(), 10)
    assert (await post(client, body, "key-cancel")).status_code == 409  # in flight
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    for _ in range(100):  # the release runs on although its request was cancelled
        if await records(app) == 0:
            break
        await asyncio.sleep(0.02)
    release.set()
    retried = await post(client, body, "key-cancel")
    assert retried.status_code == 201
    assert await effects(app) == 1
    assert 'idempotency_outcomes_total{outcome="conflict"} 1.0' in await scrape(app)


async def test_an_expired_lease_is_taken_over_once_and_its_holder_loses(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """A holder that outlives its lease (as if its process had stalled): the key goes to one
    request of many, and the late holder's effect rolls back instead of committing twice."""
    held, release = hold("late")
    body = {"n": 1, "hold": "late"}  # the same request: its retries take over, and do not hold
    late = asyncio.create_task(post(client, body, "key-lease"))
    await asyncio.wait_for(held.wait(), 10)
    async with app.state.engine.begin() as connection:
        # The lease runs IDEMPOTENCY_LEASE_S from the claim (the clock has moved on a little since).
        lease = (
            "SELECT extract(epoch FROM leased_until - now()) FROM idempotency_keys WHERE key = 'key-lease'"
        )
        left_s = float(await connection.scalar(text(lease)))
        assert app.state.settings.idempotency_lease_s - 5 < left_s <= app.state.settings.idempotency_lease_s
        await connection.execute(text("UPDATE idempotency_keys SET leased_until = now() - interval '1 s'"))
    try:
        takeovers = await asyncio.gather(*(post(client, body, "key-lease") for _ in range(10)))
    finally:
        release.set()  # even when the requests failed: the held transaction must end
    lost = await late
    assert {r.status_code for r in takeovers} <= {201, 409}
    assert sum(r.status_code == 201 and "idempotent-replayed" not in r.headers for r in takeovers) == 1
    assert lost.status_code == 409
    assert lost.json()["type"] == "/problems/idempotency-key-in-use"
    assert await effects(app) == 1
    assert 'idempotency_outcomes_total{outcome="lost"} 1.0' in await scrape(app)


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
        await connection.execute(
            text(
                "UPDATE idempotency_keys SET expires_at = now() - interval '1 s'"
                " WHERE key IN ('key-0', 'key-1', 'key-2')"
            )
        )
    again = await post(client, {"n": 0}, "key-0")
    assert again.status_code == 201
    assert "idempotent-replayed" not in again.headers  # it ran again
    assert await effects(app) == 6

    deleted = await idempotency.purge_expired(app.state.engine, batch=1)
    assert deleted == 2  # key-1 and key-2; key-0 was renewed by the new request
    assert await records(app) == 3


async def test_outcomes_are_counted(app: FastAPI, client: httpx.AsyncClient) -> None:
    await post(client, {"n": 1}, "key-1")
    await post(client, {"n": 1}, "key-1")
    await post(client, {"n": 2}, "key-1")
    await post(client, {"n": 1, "then": "crash"}, "key-2")
    metrics = await scrape(app)
    for outcome in ("stored", "replay", "mismatch", "released"):
        assert 'idempotency_outcomes_total{outcome="' + outcome + '"} 1.0' in metrics


async def test_a_safe_route_of_an_idempotent_router_needs_no_key_and_is_not_stored(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    assert (await post(client, {"n": 1}, "key-1")).status_code == 201
    for headers in ({}, {"Idempotency-Key": "key-2"}, {"Idempotency-Key": "key-2"}):
        read = await client.get("/effects", headers=headers)
        assert read.status_code == 200
        assert read.json() == 1
        assert "idempotent-replayed" not in read.headers
    assert await records(app) == 1


async def test_the_openapi_document_shows_the_header(client: httpx.AsyncClient) -> None:
    operation = (await client.get("/openapi.json")).json()["paths"]["/effects"]["post"]
    [header] = [p for p in operation["parameters"] if p["in"] == "header"]
    assert header["name"] == "Idempotency-Key"
    assert header["required"] is True  # declared as the service enforces it (with a 400)
    assert "24 hours" in header["description"]
    for status in ("400", "409", "413", "422"):  # what the platform answers, as problem+json
        assert "application/problem+json" in operation["responses"][status]["content"]


def test_a_route_that_cannot_be_replayed_stops_start_up_naming_it() -> None:
    wrong = APIRouter(route_class=IdempotentRoute)

    async def download() -> StreamingResponse:
        return StreamingResponse(iter([b"x"]))

    with pytest.raises(TypeError, match="POST /exports: a streaming or file response"):
        wrong.add_api_route("/exports", download, methods=["POST"])
    with pytest.raises(TypeError, match="/mixed: an idempotent route cannot also serve safe methods"):
        wrong.add_api_route("/mixed", download, methods=["GET", "POST"], response_class=JSONResponse)
    wrong.add_api_route("/reads", download, methods=["GET"])  # safe routes are left alone


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
