from __future__ import annotations

import httpx


async def test_requests_are_counted_by_route_template_and_pool_is_exported(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        await client.get("/ready")
    await client.get("/nowhere/12345")

    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'http_server_requests_total{method="GET",route="/ready",status="200"} 3.0' in text
    assert 'http_server_request_duration_seconds_count{method="GET",route="/ready",status="200"} 3.0' in text
    # An unknown path is one series, not one per path.
    assert 'route="unmatched",status="404"' in text
    assert "/nowhere/12345" not in text
    for gauge in ("db_pool_size", "db_pool_checked_out", "db_pool_checked_in", "db_pool_overflow"):
        assert f"\n{gauge} " in text
