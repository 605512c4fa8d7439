"""`make run` on the default bake: a real process, a real port, the embedded PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import make


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _children(pid: int) -> list[int]:
    ps = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False)
    return [int(child) for child in ps.stdout.split()]


def _processes_using(data_dir: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True)
    return [line for line in ps.stdout.splitlines() if data_dir in line and "postgres" in line]


def test_make_run_serves_health_and_ready_on_a_real_port(baked: dict[str, Path]) -> None:
    project = baked["default"]
    assert make(project, "install").returncode == 0
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"} | {"PORT": str(port)}
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

    lines = [line for line in output.splitlines() if line.startswith("{")]
    events = [json.loads(line)["event"] for line in lines]  # every JSON-looking line parses
    assert "service_listening" in events
    assert "http_request" in events
