"""Creating an order leaves exactly one audit record, committed with the order."""

from __future__ import annotations

import uuid
from datetime import UTC
from datetime import datetime
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from {{ cookiecutter.package_name }}.main import create_app

from tests.conftest import make_settings
from tests.conftest import serving


async def test_an_order_created_over_http_is_audited_once(committed: URL) -> None:
    trace_id = uuid.uuid4().hex
    request_id = f"audit-{uuid.uuid4().hex}"
    async with serving(create_app(make_settings(committed))) as client:
        response = await client.post(
            "/v1/orders",
            json={"sku": "SKU-AUDIT", "quantity": 2},
            headers={
                "X-Request-ID": request_id,
                "Idempotency-Key": uuid.uuid4().hex,
                "traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01",
            },
        )
    assert response.status_code == 201, response.text
    assert response.headers["x-request-id"] == request_id

    engine = create_async_engine(committed)
    try:
        async with engine.connect() as connection:
            rows = [
                dict(row._mapping)
                for row in await connection.execute(
                    text("SELECT * FROM audit_events WHERE request_id = :r"), {"r": request_id}
                )
            ]
    finally:
        await engine.dispose()
    assert len(rows) == 1
    (row,) = rows
    assert row["actor"] == "developer"  # the development principal: no identity provider here
    assert row["action"] == "order.created"
    assert row["resource_type"] == "order"
    assert row["resource_id"] == response.json()["id"]
    assert row["trace_id"] == trace_id
    assert row["outcome"] == "success"
    assert datetime.now(UTC) - timedelta(minutes=1) < row["occurred_at"] <= datetime.now(UTC)
