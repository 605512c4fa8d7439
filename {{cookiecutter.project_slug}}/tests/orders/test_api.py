from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime

import httpx
import pytest
from sqlalchemy.engine import URL

from {{ cookiecutter.package_name }}.orders.router import MAX_PAGE_SIZE
from {{ cookiecutter.package_name }}.settings import Settings

from tests.conftest import make_settings


@pytest.fixture
def settings(database_url: URL) -> Settings:
    """These tests create more orders in a second than RATE_LIMIT_DEFAULT (100/second) admits, now
    that creating one takes less than 10 ms: the rate limit is platform/test_ratelimit.py's."""
    return make_settings(database_url, rate_limit_default="100000/second")


async def _create(client: httpx.AsyncClient, sku: str = "SKU-1", quantity: int = 1) -> dict[str, object]:
    response = await client.post("/v1/orders", json={"sku": sku, "quantity": quantity})
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


async def test_create_then_read_an_order(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/orders", json={"sku": "SKU-42", "quantity": 3})
    assert response.status_code == 201
    order = response.json()
    assert order["sku"] == "SKU-42"
    assert order["quantity"] == 3
    assert order["status"] == "created"
    uuid.UUID(order["id"])
    assert datetime.fromisoformat(order["created_at"]).tzinfo is not None
    assert response.headers["location"] == f"/v1/orders/{order['id']}"

    fetched = await client.get(response.headers["location"])
    assert fetched.status_code == 200
    assert fetched.json() == order


async def test_an_unknown_order_is_a_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/v1/orders/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.json()["type"] == "/problems/not-found"


@pytest.mark.parametrize(
    "body",
    [
        {"sku": "", "quantity": 1},
        {"sku": "x" * 65, "quantity": 1},
        {"sku": "ok", "quantity": 0},
        {"sku": "ok", "quantity": "3"},
        {"sku": "ok", "quantity": 1, "price": 10},
        {"sku": "bad sku;drop", "quantity": 1},
        {"quantity": 1},
    ],
)
async def test_invalid_orders_are_refused_with_the_field_named(
    client: httpx.AsyncClient, body: object
) -> None:
    response = await client.post("/v1/orders", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert all(error["loc"][0] == "body" for error in response.json()["errors"])


async def test_pagination_walks_every_order_once_newest_first(client: httpx.AsyncClient) -> None:
    created = [await _create(client, sku=f"SKU-{n}") for n in range(7)]

    seen: list[dict[str, object]] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/orders", params=params)).json()
        seen.extend(page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10, "pagination does not end"

    assert pages == 3
    assert [order["id"] for order in seen] == [order["id"] for order in reversed(created)]
    assert len({order["id"] for order in seen}) == 7
    keys = [(order["created_at"], order["id"]) for order in seen]
    assert keys == sorted(keys, reverse=True)


async def test_the_page_size_is_capped(client: httpx.AsyncClient) -> None:
    for n in range(MAX_PAGE_SIZE + 1):
        created = await client.post("/v1/orders", json={"sku": f"S{n}", "quantity": 1})
        assert created.status_code == 201, created.text
    page = (await client.get("/v1/orders", params={"limit": 10_000})).json()
    assert len(page["items"]) == MAX_PAGE_SIZE
    assert page["next_cursor"] is not None


def _cursor(*parts: str) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        _cursor(),
        _cursor("not a time", str(uuid.uuid4())),
        _cursor("2026-01-01T00:00:00", str(uuid.uuid4())),  # no timezone
        _cursor("9999-12-31T23:59:59-14:00", str(uuid.uuid4())),  # overflows in UTC
        _cursor("2026-01-01T00:00:00+00:00", "not-a-uuid"),
    ],
)
async def test_a_forged_cursor_is_a_400_problem(client: httpx.AsyncClient, cursor: str) -> None:
    response = await client.get("/v1/orders", params={"cursor": cursor})
    assert response.status_code == 400
    assert response.json()["type"] == "/problems/invalid-cursor"


async def test_a_cursor_outside_its_alphabet_is_refused_as_the_schema_says(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/orders", params={"cursor": "not base64!"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["query", "cursor"]
