from __future__ import annotations

import asyncio

import httpx
from fastapi import BackgroundTasks
from fastapi import FastAPI

from tests.conftest import scrape
from tests.conftest import serving


async def test_requests_are_counted_by_route_template_and_pool_is_exported(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    for _ in range(3):
        await client.get("/ready")
    await client.get("/nowhere/12345")

    # Not on the API's port: the Service exposes that one publicly.
    assert (await client.get("/metrics")).status_code == 404
    async with httpx.AsyncClient() as scraper:
        response = await scraper.get(f"http://127.0.0.1:{app.state.metrics_port}/metrics", timeout=5)
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


async def test_latency_ends_at_the_last_byte_not_after_background_tasks(app: FastAPI) -> None:
    """A background task runs after the response is sent: the client does not wait for it, and
    neither does the latency the SLO is measured on."""

    async def slow_cleanup() -> None:
        await asyncio.sleep(1.5)

    async def answer_then_clean_up(background: BackgroundTasks) -> dict[str, bool]:
        background.add_task(slow_cleanup)
        return {"ok": True}

    app.add_api_route("/with-background", answer_then_clean_up)
    async with serving(app) as client:
        assert (await client.get("/with-background")).status_code == 200
        metrics = await scrape(app)
    [total] = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('http_server_request_duration_seconds_sum{method="GET",route="/with-background"')
    ]
    assert total < 1.0  # the answer alone; with the task it would be over 1.5 s
