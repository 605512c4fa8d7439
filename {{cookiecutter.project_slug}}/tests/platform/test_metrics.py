from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import httpx
from fastapi import BackgroundTasks
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import text
from sqlalchemy.engine import URL

from {{ cookiecutter.package_name }}.db.session import SessionDep
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.platform import looplag

from tests.conftest import MIGRATIONS
from tests.conftest import PROJECT
from tests.conftest import captured_logs
from tests.conftest import make_settings
from tests.conftest import scrape
from tests.conftest import serving
from tests.upstream import closed_port


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
    neither does the latency the SLO is measured on. A streamed body's latency runs to its last
    chunk, not its first."""

    async def slow_cleanup() -> None:
        await asyncio.sleep(1.5)

    async def answer_then_clean_up(background: BackgroundTasks) -> dict[str, bool]:
        background.add_task(slow_cleanup)
        return {"ok": True}

    async def chunks() -> AsyncIterator[bytes]:
        yield b"first"
        await asyncio.sleep(0.5)
        yield b"last"

    async def stream() -> StreamingResponse:
        return StreamingResponse(chunks())

    app.add_api_route("/with-background", answer_then_clean_up)
    app.add_api_route("/streamed", stream)
    async with serving(app) as client:
        assert (await client.get("/with-background")).status_code == 200
        assert (await client.get("/streamed")).content == b"firstlast"
        metrics = await scrape(app)

    def total(route: str) -> float:
        return _sample(metrics, 'http_server_request_duration_seconds_sum{method="GET",route="' + route + '"')

    assert total("/with-background") < 1.0  # the answer alone; with the task it would be over 1.5 s
    assert total("/streamed") >= 0.5


def _sample(text: str, prefix: str) -> float:
    """The value of the one sample line starting with `prefix` (its exemplar, if any, left out)."""
    [value] = [
        float(line.split(" # ")[0].rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    ]
    return value


async def test_process_metrics_are_on_the_apps_registry_without_created_series(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await client.get("/health")
    text = await scrape(app)
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        'python_gc_collections_total{generation="0"}',
    ):
        assert _sample(text, name + " " if "{" not in name else name) >= 0, name
    assert _sample(text, "process_resident_memory_bytes ") > 10_000_000  # a Python process, not a zero
    # A counter or histogram is one series less each: `_created` would double them for nothing.
    assert "_created" not in text
    settings = app.state.settings
    assert _sample(text, "db_pool_max_connections ") == settings.db_pool_size + settings.db_max_overflow


async def test_latency_exemplars_link_a_recorded_trace_in_the_openmetrics_format_only(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    async def scrape_openmetrics() -> list[str]:
        async with httpx.AsyncClient() as scraper:
            url = f"http://127.0.0.1:{app.state.metrics_port}/metrics"
            answer = await scraper.get(url, headers={"accept": "application/openmetrics-text"}, timeout=5)
        assert answer.headers["content-type"].startswith("application/openmetrics-text")
        return answer.text.splitlines()

    def linked(lines: list[str]) -> list[str]:
        return [
            line
            for line in lines
            if line.startswith("http_server_request_duration_seconds_bucket") and 'route="unmatched"' in line
        ]

    # No exporter: no span is recorded, so no exemplar may point at a trace that holds none of this
    # service's spans, even when the caller's trace is sampled (its flag is passed on downstream).
    caller = "00-" + "4bf92f3577b34da6a3ce929d0e0e4736" + "-00f067aa0ba902b7-01"
    unrecorded = (await client.get("/health/none", headers={"traceparent": caller})).headers["traceresponse"]
    assert unrecorded.split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert unrecorded.endswith("-01")
    unrecorded = unrecorded.split("-")[1]
    assert not any("trace_id" in line for line in linked(await scrape_openmetrics()))

    app.state.tracer_provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))  # spans kept
    response = await client.get("/health/none")  # traced (the probes are not), answered 404
    trace_id = response.headers["traceresponse"].split("-")[1]
    await client.get("/health")  # a probe: untraced, so no exemplar that links nowhere
    lines = await scrape_openmetrics()
    exemplars = [line for line in linked(lines) if ' # {trace_id="' + trace_id + '"} ' in line]
    assert len(exemplars) == 1, linked(lines)
    assert not any(unrecorded in line for line in lines)
    probes = [line for line in lines if 'route="/health"' in line]
    assert probes
    assert not any("trace_id" in line for line in probes)
    # Scrapers that do not ask for OpenMetrics read the classic format, which has no exemplars.
    async with httpx.AsyncClient() as scraper:
        classic = await scraper.get(f"http://127.0.0.1:{app.state.metrics_port}/metrics", timeout=5)
    assert classic.headers["content-type"].startswith("text/plain")
    assert 'http_server_requests_total{method="GET",route="unmatched",status="404"} 2.0' in classic.text
    assert "trace_id" not in classic.text


async def test_pool_checkout_waits_and_timeouts_are_measured(database_url: URL) -> None:
    app = create_app(make_settings(database_url, db_pool_size=1, db_max_overflow=0, db_pool_timeout_s=0.3))
    release = asyncio.Event()

    @app.get("/hold")
    async def hold(session: SessionDep) -> dict[str, str]:
        await session.execute(text("SELECT 1"))  # takes the only connection
        await release.wait()
        return {}

    @app.get("/query")
    async def query(session: SessionDep) -> dict[str, int]:
        return {"one": int(await session.scalar(text("SELECT 1")) or 0)}

    async with serving(app) as client:
        holder = asyncio.create_task(client.get("/hold"))
        await asyncio.sleep(0.2)
        assert (await client.get("/query")).status_code == 503  # gave up after DB_POOL_TIMEOUT_S
        release.set()
        assert (await holder).status_code == 200
        metrics = await scrape(app)
    assert _sample(metrics, "db_pool_timeouts_total ") == 1
    assert _sample(metrics, "db_pool_max_connections ") == 1
    checkouts = _sample(metrics, "db_pool_checkout_wait_seconds_count ")
    assert checkouts >= 2
    # The one that gave up waited the whole DB_POOL_TIMEOUT_S; the others did not wait that long.
    assert _sample(metrics, 'db_pool_checkout_wait_seconds_bucket{le="0.25"} ') == checkouts - 1
    assert _sample(metrics, "db_pool_checkout_wait_seconds_sum ") >= 0.3


async def test_a_blocked_event_loop_is_measured_and_logged_with_the_line_that_blocked(
    database_url: URL,
) -> None:
    app = create_app(make_settings(database_url, loop_lag_warn_s=0.2))

    @app.get("/block")
    async def block_the_loop() -> dict[str, str]:
        time.sleep(0.6)  # noqa: ASYNC251  # the bug the probe is there to show
        return {}

    async with serving(app) as client:
        with captured_logs() as lines:
            assert (await client.get("/block")).status_code == 200
            await asyncio.sleep(0.3)  # the probe wakes, late, and reports
        metrics = await scrape(app)
    stalls = [line for line in lines() if line["event"] == "event_loop_stalled"]
    # Only this one blocked in that function (a loaded machine may add a stall of its own).
    blocked = [s for s in stalls if s["running"] and s["running"][-1].endswith("in block_the_loop")]
    assert len(blocked) == 1, stalls
    stall = blocked[0]
    assert stall["level"] == "warning"
    # Seconds, to the millisecond.
    assert isinstance(stall["lag_s"], float)
    assert 0.4 <= stall["lag_s"] < 5
    assert round(stall["lag_s"], 3) == stall["lag_s"]
    assert stall["threshold_s"] == 0.2
    # The innermost frames (the stack under a request is deeper), the blocking line last.
    assert len(stall["running"]) == looplag.STACK_DEPTH, stall["running"]
    assert stall["running"][-1].endswith("in block_the_loop"), stall["running"]
    assert stall["running"][-1].startswith("platform/test_metrics.py:")
    # The stall is in the histogram too: at least one tick came more than 0.25 s late.
    ticks = _sample(metrics, "event_loop_lag_seconds_count ")
    assert ticks >= 2
    assert _sample(metrics, 'event_loop_lag_seconds_bucket{le="0.25"} ') < ticks


def test_the_watchdog_does_not_keep_a_process_alive() -> None:
    # A process whose loop ends without the lifespan's shutdown (start-up failed after the probe
    # started, or a crash) must still exit: the watchdog thread must not hold it. Both are named
    # for whoever reads a thread or task dump.
    program = (
        "import asyncio, threading\n"
        "from prometheus_client import CollectorRegistry, Histogram\n"
        "from {{ cookiecutter.package_name }}.platform.looplag import LoopLagProbe\n"
        "async def main():\n"
        "    probe = LoopLagProbe(Histogram('lag', 'lag', registry=CollectorRegistry()), warn_s=2.0)\n"
        "    probe.start()\n"
        "    await asyncio.sleep(0.2)\n"
        "    assert 'event-loop-watchdog' in [thread.name for thread in threading.enumerate()]\n"
        "    assert 'event-loop-lag-probe' in [task.get_name() for task in asyncio.all_tasks()]\n"
        "asyncio.run(main())\n"
    )
    # A kept-alive process would wait for the thread for ever: TimeoutExpired.
    finished = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=15)
    assert finished.returncode == 0, finished.stderr


async def test_a_busy_but_responsive_loop_logs_no_stall(database_url: URL) -> None:
    # A threshold no busy test machine reaches by scheduling alone; what is checked is that the
    # probe's own reading of a loop serving requests is small.
    app = create_app(make_settings(database_url, loop_lag_warn_s=1.0))
    async with serving(app) as client:
        with captured_logs() as captured:
            for _ in range(5):
                await asyncio.gather(*(client.get("/health") for _ in range(20)))
                await asyncio.sleep(0.1)
        metrics = await scrape(app)
    assert "event_loop_stalled" not in captured.text()
    ticks = _sample(metrics, "event_loop_lag_seconds_count ")
    assert ticks >= 3
    assert _sample(metrics, 'event_loop_lag_seconds_bucket{le="0.1"} ') >= ticks / 2


def test_alembic_says_nothing_below_warning_once_the_app_is_built(app: FastAPI) -> None:
    create_app(app.state.settings)  # what each serving process does
    with captured_logs() as lines:
        logging.getLogger("alembic.runtime.plugins").info("setup plugin %s", "alembic.autogenerate.schemas")
        logging.getLogger("alembic.runtime.migration").warning("a warning still shows")
    events = [line["event"] for line in lines()]
    assert "setup plugin alembic.autogenerate.schemas" not in events
    assert "a warning still shows" in events


def test_serve_migrate_starts_without_alembic_info_lines(owner_url: URL) -> None:
    """`make run` (serve --migrate): the service's own lines, not seven "setup plugin" ones."""
    port, metrics_port = closed_port(), closed_port()
    env = os.environ | {
        "DATABASE_URL": owner_url.render_as_string(hide_password=False),
        "PORT": str(port),
        "METRICS_PORT": str(metrics_port),
        "MIGRATIONS_DIR": str(MIGRATIONS),
        "LOG_LEVEL": "INFO",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", "serve", "--migrate"],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert "migrations_applied" in [line["event"] for line in events], output
    assert "service_started" in [line["event"] for line in events], output
    alembic = [line["event"] for line in events if line.get("logger", "").startswith("alembic")]
    assert alembic == []
