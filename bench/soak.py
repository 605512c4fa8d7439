"""`make soak`: resident memory under a few minutes of load, and what exemplars and the event-loop
lag probe cost on the trivial route, in one run.

Bakes the default service (or takes `--project`, an existing bake), starts an embedded PostgreSQL
and two servers as `make bench` does (uvicorn, one worker, CPU 0; wrk and PostgreSQL on CPU 1):
`apps.service` (the service as it ships) and `apps.unobserved` (the same without exemplars and the
lag probe).

1. Cost: interleaved rounds of wrk on `GET /ping` against each; the ratio is the median of the
   rounds' observed / unobserved requests per second.
2. Soak: wrk for `--soak` seconds against the shipped service, cycling through the trivial route,
   a database read, `/ready` and a 404; the server's resident memory (/proc/PID/status VmRSS) is
   sampled every `--every` seconds. Reported: RSS at start (ready, before any load), after the
   warm-up (`--warmup` seconds into the load), at the end, the largest after the warm-up, and the
   requests served.

Writes <out>/soak.json and prints a summary. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import run
from run import (
    APPS,
    LOAD_CPU,
    ensure_wrk,
    free_port,
    pin_database,
    prepare_database,
    start_database,
    start_server,
    wait_http,
    wrk,
)


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1)) * 1024  # type: ignore[union-attr]


def soak(wrk_path: str, base: str, paths: list[str], seconds: float, connections: int) -> tuple[int, str]:
    command = ["taskset", "-c", LOAD_CPU, wrk_path, "-t1", f"-c{connections}", f"-d{round(seconds)}s"]
    command += ["-s", str(Path(__file__).with_name("soak.lua")), base]
    out = subprocess.run(
        command, capture_output=True, text=True, check=True, env=os.environ | {"PATHS": ",".join(paths)}
    ).stdout
    served = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return served, out


# Run by the bake's Python: each cost alone, in-process, where a loaded machine blurs it least.
MICRO = """
import asyncio, json, time, timeit
from orders_service.platform.looplag import LoopLagProbe
from orders_service.platform.metrics import Metrics

metrics = Metrics()
trace_id = "0af7651916cd43dd8448eb211c80319c"
calls = 200_000
plain = min(timeit.repeat(lambda: metrics.observe("GET", "/ping", 200, 0.004), number=calls, repeat=5))
linked = min(timeit.repeat(lambda: metrics.observe("GET", "/ping", 200, 0.004, trace_id), number=calls, repeat=5))

async def idle(seconds, probed):
    probe = LoopLagProbe(metrics.loop_lag, warn_s=0.25)
    if probed:
        probe.start()
    began = time.process_time()
    await asyncio.sleep(seconds)
    used = time.process_time() - began
    await probe.stop()
    return used

seconds = SECONDS
without = asyncio.run(idle(seconds, False))
with_probe = asyncio.run(idle(seconds, True))
print(json.dumps({
    "observe_us": round(plain / calls * 1e6, 3),
    "observe_with_exemplar_us": round(linked / calls * 1e6, 3),
    "probe_cpu_ms_per_s": round((with_probe - without) / seconds * 1e3, 3),
}))
"""


def micro_costs(seconds: float) -> dict[str, float]:
    code = MICRO.replace("SECONDS", repr(seconds))
    out = subprocess.run(
        [str(run.PY), "-c", code], cwd=run.PROJECT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--project", type=Path, help="an existing bake of the default service (else: bake one)"
    )
    parser.add_argument("--soak", type=float, default=180.0, help="seconds of load for the memory soak")
    parser.add_argument(
        "--warmup", type=float, default=30.0, help="seconds into the soak RSS is taken as warm"
    )
    parser.add_argument("--every", type=float, default=5.0, help="seconds between two RSS samples")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run of the cost rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--idle", type=float, default=10.0, help="seconds of idle loop for the probe's CPU cost"
    )
    parser.add_argument("--out", type=Path, default=APPS / "results")
    args = parser.parse_args()

    if args.project is not None:
        run.PROJECT = args.project.resolve()
        run.PY = run.PROJECT / ".venv" / "bin" / "python"
    else:
        run.bake()
    wrk_path = ensure_wrk()
    database, database_url, runtime_url = start_database()
    pin_database()
    servers: dict[str, subprocess.Popen[str]] = {}
    try:
        order_id = prepare_database(database_url)
        ports = {"observed": free_port(), "unobserved": free_port()}
        servers["observed"] = start_server("apps.service:create_app", ports["observed"], runtime_url)
        servers["unobserved"] = start_server("apps.unobserved:create_app", ports["unobserved"], runtime_url)
        bases = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        for base in bases.values():
            wait_http(f"{base}/ready")
        start_rss = rss_bytes(servers["observed"].pid)

        # 1. The cost, on the trivial route: warm both, then interleaved rounds.
        for base in bases.values():
            wrk(wrk_path, f"{base}/ping", min(2.0, args.duration), args.connections)
        rounds: dict[str, list[dict[str, float]]] = {"observed": [], "unobserved": []}
        for round_ in range(args.rounds):
            order = ["unobserved", "observed"] if round_ % 2 == 0 else ["observed", "unobserved"]
            for name in order:
                rounds[name].append(wrk(wrk_path, f"{bases[name]}/ping", args.duration, args.connections))
        servers.pop("unobserved").send_signal(signal.SIGTERM)

        # 2. The soak: RSS sampled beside the load.
        samples: list[tuple[float, int]] = []
        stop = threading.Event()
        pid = servers["observed"].pid

        def sample() -> None:
            began = time.monotonic()
            while not stop.is_set():
                samples.append((round(time.monotonic() - began, 1), rss_bytes(pid)))
                stop.wait(args.every)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        paths = ["/ping", f"/v1/orders/{order_id}", "/ready", "/nowhere"]
        served, _ = soak(wrk_path, bases["observed"], paths, args.soak, args.connections)
        stop.set()
        sampler.join(timeout=10)
        end_rss = rss_bytes(pid)
    finally:
        for server in servers.values():
            server.send_signal(signal.SIGTERM)
        for server in servers.values():
            server.wait(timeout=30)
        if database.stdin:
            database.stdin.close()
        database.wait(timeout=60)

    micro = micro_costs(args.idle)
    warm = [rss for at, rss in samples if at >= args.warmup]
    mib = 1024 * 1024
    paired = [o["rps"] / u["rps"] for o, u in zip(rounds["observed"], rounds["unobserved"], strict=True)]
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "method": f"uvicorn 1 worker on CPU 0, wrk -t1 -c{args.connections} on CPU {LOAD_CPU}",
        "cost": {
            name: {
                key: round(statistics.median(r[key] for r in runs), 2) for key in ("rps", "p50_ms", "p99_ms")
            }
            for name, runs in rounds.items()
        }
        | {"ratio": round(statistics.median(paired), 3), "rounds": args.rounds, "duration_s": args.duration}
        | micro,
        "soak": {
            "seconds": args.soak,
            "paths": paths,
            "requests": served,
            "rss_start_mib": round(start_rss / mib, 1),
            "rss_warm_mib": round(warm[0] / mib, 1) if warm else None,
            "rss_end_mib": round(end_rss / mib, 1),
            "rss_max_after_warmup_mib": round(max(warm) / mib, 1) if warm else None,
            "samples": [(at, round(rss / mib, 1)) for at, rss in samples],
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    cost, memory = report["cost"], report["soak"]
    print(
        f"trivial route: {cost['observed']['rps']} req/s with exemplars and the lag probe, "
        f"{cost['unobserved']['rps']} without (ratio {cost['ratio']}); in-process: observe() "
        f"{micro['observe_us']} us, with an exemplar {micro['observe_with_exemplar_us']} us; the lag probe "
        f"{micro['probe_cpu_ms_per_s']} ms of CPU a second\n"
        f"soak {args.soak:g}s, {served} requests: RSS {memory['rss_start_mib']} MiB at start, "
        f"{memory['rss_warm_mib']} after {args.warmup:g}s, {memory['rss_end_mib']} at the end "
        f"(max after warm-up {memory['rss_max_after_warmup_mib']})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
