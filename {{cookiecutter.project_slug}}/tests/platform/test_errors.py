from __future__ import annotations

from collections.abc import AsyncIterator
from collections.abc import Callable
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import APIRouter
from fastapi import FastAPI
from fastapi import HTTPException
from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from sqlalchemy import text

from {{ cookiecutter.package_name }}.db.session import SessionDep
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.platform.errors import Conflict

from tests.conftest import captured_logs
from tests.conftest import make_settings
from tests.upstream import Reply
from tests.upstream import ScriptedUpstream
from tests.upstream import closed_port

PROBLEM_KEYS = {"type", "title", "status", "detail", "request_id"}


def assert_problem(response: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body.keys() >= PROBLEM_KEYS
    assert body["status"] == status
    assert body["type"] == type_
    assert body["request_id"] == response.headers["x-request-id"]
    # `Problem.detail` is a string in the OpenAPI document: a client may display it as it is.
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body


async def test_unknown_route_is_a_404_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/nowhere"), 404, "/problems/not-found")


async def test_wrong_method_is_a_405_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.delete("/health"), 405, "/problems/method-not-allowed")


async def test_a_405_allows_every_method_the_path_serves(app: FastAPI) -> None:
    """GET and POST on one path are two routes; the 405 must name both, not the first one's."""
    things = APIRouter(prefix="/things")
    things.add_api_route("", lambda: [], methods=["GET"])
    things.add_api_route("", lambda: {}, methods=["POST"], status_code=201)
    app.include_router(things)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.options("/things")
    assert_problem(response, 405, "/problems/method-not-allowed")
    assert response.headers["allow"] == "GET, POST"


async def test_a_service_error_keeps_its_status_type_and_detail(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    @app.get("/conflict")
    async def conflict() -> None:
        raise Conflict("Already there.", slug="already-there")

    body = assert_problem(await client.get("/conflict"), 409, "/problems/already-there")
    assert body["detail"] == "Already there."
    assert body["title"] == "Conflict"


async def test_an_http_exception_with_a_structured_detail_is_still_a_problem(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """FastAPI's HTTPException takes any JSON as its detail; a problem's `detail` is a string."""

    @app.get("/teapot")
    async def teapot() -> None:
        raise HTTPException(400, detail={"internal": "state"})

    body = assert_problem(await client.get("/teapot"), 400, "/problems/bad-request")
    assert body["detail"] == "Bad request syntax or unsupported method"
    assert "internal" not in body["detail"]


async def test_a_bug_is_a_500_without_internals_and_is_logged_with_its_stack(
    app: FastAPI, client: httpx.AsyncClient, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    @app.get("/bug")
    async def bug() -> None:
        raise RuntimeError("password=hunter2 in /srv/secret/path.py")

    response = await client.get("/bug")
    body = assert_problem(response, 500, "/problems/internal-error")
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text
    assert "RuntimeError" not in response.text

    [logged] = [line for line in log_lines() if line["event"] == "unhandled_exception"]
    assert logged["request_id"] == body["request_id"]
    assert "Traceback" in logged["exception"]
    assert "RuntimeError" in logged["exception"]
    [access] = [line for line in log_lines() if line["event"] == "http_request"]
    assert access["status"] == 500


async def test_a_body_over_the_limit_is_refused_from_its_content_length(app: FastAPI) -> None:
    small = make_settings(app.state.settings.database_url.get_secret_value(), max_body_bytes=100)
    limited = create_app(small)
    async with LifespanManager(limited) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.post("/health", content=b"x" * 101)
            assert_problem(response, 413, "/problems/payload-too-large")

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(10):  # no Content-Length: the limit is enforced while reading
                    yield b'{"a": "' + b"y" * 40 + b'"}'

            @limited.post("/echo")
            async def echo(body: dict[str, str]) -> dict[str, str]:
                return body

            streamed = await client.post(
                "/echo", content=chunks(), headers={"content-type": "application/json"}
            )
            body = assert_problem(streamed, 413, "/problems/payload-too-large")
            assert "100 bytes" in body["detail"]  # the client learns the limit it went past
            # The rest of the body is not read: the connection cannot carry another request.
            assert streamed.headers["connection"] == "close"


class Item(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    name: str = Field(min_length=1)
    count: int


def _add_item_route(app: FastAPI) -> None:
    @app.post("/items")
    async def create_item(item: Item) -> Item:
        return item


async def test_malformed_json_is_a_400_problem(app: FastAPI, client: httpx.AsyncClient) -> None:
    _add_item_route(app)
    response = await client.post(
        "/items", content=b'{"name": "a", ', headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, "/problems/malformed-json")


async def test_validation_errors_list_each_field_without_echoing_input(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _add_item_route(app)
    response = await client.post("/items", json={"name": "", "count": "secret-value", "extra": 1})
    body = assert_problem(response, 422, "/problems/validation-error")
    fields = {tuple(error["loc"]) for error in body["errors"]}
    assert {("body", "name"), ("body", "count"), ("body", "extra")} <= fields
    # Each field says what is wrong with it, for a client to show beside the field.
    for error in body["errors"]:
        assert isinstance(error["msg"], str)
        assert error["msg"]
        assert isinstance(error["type"], str)
    assert "secret-value" not in response.text


async def test_a_database_that_is_down_is_a_503_not_a_bug() -> None:
    """Refused, then silent: a 503 for the client, and for the operator a warning naming the cause."""
    async with ScriptedUpstream(default=Reply(hang=True)) as silent:
        for url, cause in (
            (f"postgresql://app@127.0.0.1:{closed_port()}/app", "ConnectionRefusedError"),
            (f"postgresql://app@127.0.0.1:{silent.port}/app", "TimeoutError"),
        ):
            down = create_app(make_settings(url, db_connect_timeout_s=0.3))

            @down.get("/query")
            async def query(session: SessionDep) -> dict[str, int]:
                return {"one": int(await session.scalar(text("SELECT 1")) or 0)}

            with captured_logs() as lines:
                async with LifespanManager(down) as manager:
                    transport = httpx.ASGITransport(app=manager.app)
                    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                        response = await client.get("/query")
            body = assert_problem(response, 503, "/problems/database-unavailable")
            assert response.headers["retry-after"] == "1"
            assert "127.0.0.1" not in body["detail"]
            [warning] = [line for line in lines() if line["event"] == "database_unavailable"]
            assert warning["error"] == cause
