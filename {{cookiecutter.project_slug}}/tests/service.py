"""The service as a real process (`python -m <package> serve`) on a free port, for fault tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextlib import suppress
from pathlib import Path

import httpx

from tests.conftest import MIGRATIONS
from tests.conftest import PROJECT
from tests.upstream import closed_port


class Service:
    def __init__(self, process: subprocess.Popen[str], base: str, metrics: str) -> None:
        self.process = process
        self.base = base
        self.metrics = metrics  # the /metrics URL, on the metrics port


@contextmanager
def running(
    database_url: str, *, app: str | None = None, log: Path | None = None, **env: str
) -> Iterator[Service]:
    """`app`: another factory to serve (`tests.app.APP`: the app with test-only routes), through
    the same `serve` command; by default the service's own app. `log`: a file for its log lines
    (with `LOG_LEVEL=INFO` to see more than warnings)."""
    port, metrics_port = closed_port(), closed_port()
    variables = os.environ | {
        "DATABASE_URL": database_url,
        "PORT": str(port),
        "METRICS_PORT": str(metrics_port),
        "MIGRATIONS_DIR": str(MIGRATIONS),
        "LOG_LEVEL": "WARNING",
        # Bursts (50 concurrent retries, rolling restarts) are served, not shed: see test_shedding.py.
        "MAX_CONCURRENT_REQUESTS": "1000",
    }
    with log.open("wb") if log is not None else open(os.devnull, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.serve", app]
            if app is not None
            else [sys.executable, "-m", "{{ cookiecutter.package_name }}", "serve"],
            cwd=PROJECT,
            env=variables | env,
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
            # Its own process group: with WORKERS > 1 uvicorn's worker processes are killed with it
            # (killing the parent alone left them running, holding memory and the embedded database).
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise RuntimeError(
                f"the service did not become ready: {process.stderr.read() if process.stderr else ''}"
            )
        yield Service(process, base, f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        with suppress(ProcessLookupError):  # nothing left of the group: it exited on its own
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
