"""`make run` on the default bake: a real process, a real port, the embedded PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import TEMPLATE, free_port_pair, make


def _children(pid: int) -> list[int]:
    ps = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False)
    return [int(child) for child in ps.stdout.split()]


def _processes_using(data_dir: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True)
    return [line for line in ps.stdout.splitlines() if data_dir in line and "postgres" in line]


def test_make_run_serves_health_and_ready_on_a_real_port(baked: dict[str, Path]) -> None:
    project = baked["default"]
    assert make(project, "install").returncode == 0
    # The worker `make run` starts beside the server takes PORT + 1 and METRICS_PORT + 1.
    port = free_port_pair()
    metrics_port = free_port_pair(taken=frozenset({port, port + 1}))
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"} | {
        "PORT": str(port),
        "METRICS_PORT": str(metrics_port),
    }
    server = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so the test can stop make and its children
    )
    try:
        ready = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and server.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        assert ready is not None, "the service never answered"
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "schema": "ok", "shutdown": "ok"}

        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
        created = httpx.post(
            f"http://127.0.0.1:{port}/v1/orders",
            json={"sku": "demo", "quantity": 1},
            headers={"Idempotency-Key": "test-run-1"},
            timeout=5,
        )
        assert created.status_code == 201, created.text

        # The scorecard, from outside over HTTP, as a platform team runs it: every standard passes.
        # /metrics is not on the API's port: the scorecard is told where Prometheus would scrape.
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).status_code == 404
        scorecard = subprocess.run(
            [
                sys.executable,
                TEMPLATE / "tools" / "conformance.py",
                f"http://127.0.0.1:{port}",
                f"--metrics-url=http://127.0.0.1:{metrics_port}/metrics",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        standards = json.loads(scorecard.stdout)["standards"] if scorecard.stdout.startswith("{") else []
        failed = [standard for standard in standards if not standard["passed"]]
        assert scorecard.returncode == 0, json.dumps(failed, indent=2) if failed else scorecard.stderr
        traced = next(standard for standard in standards if standard["name"] == "traceparent")
        sent_trace_id = re.search(r"traceparent 00-([0-9a-f]{32})-", "\n".join(traced["evidence"]))
        assert sent_trace_id is not None, traced
    finally:
        # SIGTERM to the service alone, as Kubernetes sends it to the container's process.
        for pid in _children(server.pid):
            os.kill(pid, signal.SIGTERM)
        try:
            output, _ = server.communicate(timeout=60)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)

    # The embedded PostgreSQL stopped with the service: nothing is left running on its data.
    data_dir = str(project / ".data" / "postgres")
    deadline = time.monotonic() + 15
    while _processes_using(data_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_using(data_dir) == []
    assert server.returncode == 0  # make, whose service exited 0 on SIGTERM

    # Every line is the service's JSON but make's own echo of the recipe it runs (what `make -n`
    # prints is make's, not the service's): a plain-text line from the service fails here.
    dry_run = subprocess.run(
        ["make", "--no-print-directory", "-n", "run"], cwd=project, capture_output=True, text=True, check=True
    )
    echoed = set(dry_run.stdout.splitlines())
    lines = [line for line in output.splitlines() if line not in echoed]
    plain = [line for line in lines if not line.startswith("{")]
    assert plain == [], f"lines that are not JSON: {plain[:5]}"
    events = [json.loads(line)["event"] for line in lines]  # and every line parses
    assert "service_listening" in events
    assert "http_request" in events
    # `make run` starts a worker beside the server, and stops it with the server.
    assert "worker_started" in events
    assert "worker_stopped" in events
    # The scorecard's trace continued into the service's own log lines, which HTTP cannot show.
    trace_ids = {json.loads(line).get("trace_id") for line in lines}
    assert sent_trace_id.group(1) in trace_ids
