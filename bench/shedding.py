"""`python bench/shedding.py`: the figures behind #14's load shedding and breaker, in one run.

Needs a baked, installed service (`make bench` bakes one into build/bench; `--project` points
elsewhere). Starts an embedded PostgreSQL and a slow upstream (the tests' `ScriptedUpstream`,
answering after `--upstream-delay-ms`) pinned to the load CPU, and the service (`python -m
orders_service serve`, one worker) pinned to the server CPU, then:

1. capacity: a closed-loop sweep of concurrency over `POST /v1/orders` (a database write, an
   idempotency record and the call to the slow inventory upstream), with shedding off: where
   throughput stops growing and p99 starts climbing is the MAX_CONCURRENT_REQUESTS to pick;
2. overload: 5x the capacity's throughput offered in an open loop (arrivals at a fixed rate,
   latency counted from when each request was due), with MAX_CONCURRENT_REQUESTS at the capacity
   and without shedding (100000): the admitted requests' p99, and the shed answers' latency;
3. the breaker's admission cost: `admit()` + `succeeded()` per call, timed in a loop.

The load generator is a few lines of asyncio on raw sockets (keep-alive HTTP/1.1), so it records
each answer's status and latency: wrk reports one distribution for 2xx and 503 together. It asserts
nothing: it prints a table and writes <out>/shedding.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import run  # bench/run.py: the database, pinning and polling helpers

UPSTREAM = """
import asyncio, sys
from tests.upstream import Reply, ScriptedUpstream
class Forgetful(ScriptedUpstream):
    def __init__(self, default):
        super().__init__(default)
        self.received = type("Sink", (), {"append": lambda self, _: None})()
async def main():
    async with Forgetful(Reply(201, {"reserved": True}, delay_s=float(sys.argv[1]) / 1000)) as server:
        print(server.port, flush=True)
        await asyncio.Event().wait()
asyncio.run(main())
"""

ADMISSION = """
import statistics, time
from opentelemetry import trace
from orders_service.platform.metrics import Metrics
from orders_service.platform.resilience.breaker import Breaker, StateChanges
breaker = Breaker("bench", failure_ratio=0.1, min_throughput=20, sampling_s=30, fail_max=5,
                  reset_timeout_s=5, half_open_probes=1, listeners=[StateChanges(Metrics())])
samples = []
for _ in range(200):
    started = time.perf_counter_ns()
    for _ in range(1000):
        probe = breaker.admit()
        breaker.succeeded(probe, 0.01)
    samples.append((time.perf_counter_ns() - started) / 1000)
samples.sort()
print(statistics.median(samples), samples[int(len(samples) * 0.99) - 1])
"""


async def _client(host: str, port: int, until: float, results: list[tuple[int, float]]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    body = b'{"sku": "BENCH", "quantity": 1}'
    try:
        while time.perf_counter() < until:
            request = (
                f"POST /v1/orders HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                f"idempotency-key: {uuid.uuid4().hex}\r\ncontent-length: {len(body)}\r\n\r\n"
            ).encode() + body
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            length = next(
                int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length")
            )
            await reader.readexactly(length)
            results.append((status, time.perf_counter() - started))
            if any(line.lower() == "connection: close" for line in lines):
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


def load(port: int, connections: int, seconds: float) -> list[tuple[int, float]]:
    """Closed loop: `connections` clients, each sending its next request when the last is answered."""
    results: list[tuple[int, float]] = []

    async def main() -> None:
        until = time.perf_counter() + seconds
        await asyncio.gather(*(_client("127.0.0.1", port, until, results) for _ in range(connections)))

    asyncio.run(main())
    return results


async def _one(
    port: int, idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], due: float
) -> tuple[int, float]:
    reader, writer = idle.pop() if idle else await asyncio.open_connection("127.0.0.1", port)
    body = b'{"sku": "BENCH", "quantity": 1}'
    writer.write(
        (
            f"POST /v1/orders HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
            f"idempotency-key: {uuid.uuid4().hex}\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode()
        + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length"))
    await reader.readexactly(length)
    if any(line.lower() == "connection: close" for line in lines):
        writer.close()
    else:
        idle.append((reader, writer))
    # From when the request was due, not when it was sent: no coordinated omission.
    return int(lines[0].split()[1]), time.perf_counter() - due


def offer(port: int, rate: float, seconds: float) -> list[tuple[int, float]]:
    """Open loop: requests arrive at `rate` a second whatever the answers, as real traffic does
    (a closed loop would slow its own arrivals down as the server slows)."""
    results: list[tuple[int, float]] = []

    async def main() -> None:
        idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        tasks = []
        start = time.perf_counter()
        for n in range(int(rate * seconds)):
            due = start + n / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(_one(port, idle, due)))
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            results.append(outcome if isinstance(outcome, tuple) else (0, 0.0))

    asyncio.run(main())
    return results


def summary(results: list[tuple[int, float]], seconds: float, status: int) -> dict[str, float]:
    latencies = sorted(latency * 1000 for code, latency in results if code == status)
    if not latencies:
        return {"count": 0, "rps": 0.0, "p50_ms": 0.0, "p99_ms": 0.0}
    return {
        "count": len(latencies),
        "rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(latencies[max(0, int(len(latencies) * 0.99) - 1)], 2),
    }


def serve(port: int, database_url: str, inventory_url: str, limit: int) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "DATABASE_URL": database_url,
        "INVENTORY_URL": inventory_url,
        "PORT": str(port),
        "METRICS_PORT": "0",
        "MAX_CONCURRENT_REQUESTS": str(limit),
        "LOG_LEVEL": "INFO",
    }
    command = ["taskset", "-c", run.SERVER_CPU, str(run.PY), "-m", "orders_service", "serve"]
    log = (run.PROJECT / ".data" / "bench-server.log").open("ab")
    process = subprocess.Popen(command, cwd=run.PROJECT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    run.wait_http(f"http://127.0.0.1:{port}/ready")
    return process


def measure(args: argparse.Namespace, database_url: str, inventory_url: str) -> dict[str, object]:
    report: dict[str, object] = {"upstream_delay_ms": args.upstream_delay_ms, "seconds": args.duration}
    port = run.free_port()
    server = serve(port, database_url, inventory_url, limit=100_000)
    try:
        load(port, 8, 1.0)  # warm-up
        sweep = {}
        for connections in args.sweep:
            results = load(port, connections, args.duration)
            sweep[connections] = summary(results, args.duration, 201) | {
                "other": sum(1 for code, _ in results if code != 201)
            }
            print(f"capacity c={connections}: {sweep[connections]}", flush=True)
        report["sweep"] = sweep
    finally:
        server.terminate()
        server.wait(timeout=30)

    capacity = args.capacity or _knee(sweep)
    rate = 5 * max(row["rps"] for row in sweep.values())
    report["capacity"] = capacity
    report["offered_rps"] = rate
    overload = {}
    for label, limit in (("shedding", capacity), ("no_shedding", 100_000)):
        port = run.free_port()
        server = serve(port, database_url, inventory_url, limit=limit)
        try:
            load(port, capacity, 1.0)
            results = offer(port, rate, args.duration)
        finally:
            server.terminate()
            server.wait(timeout=30)
        overload[label] = {
            "admitted": summary(results, args.duration, 201),
            "shed": summary(results, args.duration, 503),
            "other": sum(1 for code, _ in results if code not in (201, 503)),
        }
        print(
            f"overload {label} (limit {limit}, {rate:.0f} requests/s offered): {overload[label]}", flush=True
        )
    report["overload"] = overload

    timed = subprocess.run(
        [str(run.PY), "-c", ADMISSION], cwd=run.PROJECT, capture_output=True, text=True, check=True
    )
    median_us, p99_us = (float(value) / 1000 for value in timed.stdout.split())  # per call, microseconds
    report["breaker_admission_us"] = {"median": round(median_us, 3), "p99": round(p99_us, 3)}
    print(f"breaker admit+record per call: median {median_us:.3f} us, p99 {p99_us:.3f} us")
    return report


def _knee(sweep: dict[int, dict[str, float]]) -> int:
    """The smallest concurrency whose throughput is within 10% of the best: past it, more requests
    at once only add latency."""
    best = max(row["rps"] for row in sweep.values())
    return min(c for c, row in sweep.items() if row["rps"] >= 0.9 * best)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--project", type=Path, default=run.PROJECT, help="a baked, installed service")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    parser.add_argument("--sweep", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128])
    parser.add_argument("--capacity", type=int, default=0, help="skip the knee: use this limit")
    parser.add_argument("--upstream-delay-ms", type=float, default=50.0)
    parser.add_argument("--out", type=Path, default=run.APPS / "results")
    args = parser.parse_args()
    run.PROJECT, run.PY = args.project, args.project / ".venv" / "bin" / "python"

    database, url = run.start_database()
    upstream = subprocess.Popen(
        ["taskset", "-c", run.LOAD_CPU, str(run.PY), "-c", UPSTREAM, str(args.upstream_delay_ms)],
        cwd=run.PROJECT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        run.pin_database()
        run.prepare_database(url)
        assert upstream.stdout is not None
        inventory_url = f"http://127.0.0.1:{upstream.stdout.readline().strip()}"
        report = measure(args, url, inventory_url)
    finally:
        upstream.terminate()
        upstream.wait(timeout=30)
        assert database.stdin is not None
        database.stdin.close()
        database.wait(timeout=60)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shedding.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
