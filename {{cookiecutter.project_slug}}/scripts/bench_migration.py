"""Benchmark the worked expand migration (0004_orders_updated_at) on a big orders table under load.

A benchmark, not a test: it prints figures, asserts nothing. It creates a scratch database
`bench_migration` (on DATABASE_URL's server, or the embedded one in .data/postgres-bench), migrates
it to the revision before the example, fills `orders` with --rows rows, then runs the migration as
the deploy step does (`python -m <package> migrate`, a separate process) while --readers and
--writers connections read orders by id and insert them the previous release's way, and reports
the migration's duration and the worst latencies the load saw. Results go to .data/bench_migration.json.

Usage: python scripts/bench_migration.py [--rows 1000000] [--readers 4] [--writers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine

from {{ cookiecutter.package_name }}.db import embedded
from {{ cookiecutter.package_name }}.db import migrations
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.settings import to_async_url

PROJECT = Path(__file__).resolve().parents[1]
BEFORE = "0003_orders"
DATABASE = "bench_migration"


async def prepare(server: URL, rows: int) -> URL:
    admin = create_async_engine(server, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
        await connection.execute(text(f"CREATE DATABASE {DATABASE}"))
    await admin.dispose()
    url = server.set(database=DATABASE)
    await asyncio.to_thread(
        migrations.upgrade, PROJECT / "migrations", url.render_as_string(hide_password=False), BEFORE
    )
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    async with engine.connect() as connection:
        await connection.execute(
            text(
                "INSERT INTO orders (id, sku, quantity, created_at) "
                "SELECT gen_random_uuid(), 'SKU-' || (n % 1000), 1 + n % 5, "
                "now() - make_interval(secs => n) FROM generate_series(1, :rows) AS n"
            ),
            {"rows": rows},
        )
        await connection.execute(text("VACUUM ANALYZE orders"))
    await engine.dispose()
    return url


async def load(engine: AsyncEngine, ids: list[uuid.UUID], kind: str, stop: asyncio.Event) -> list[float]:
    latencies = []
    async with engine.connect() as connection:
        n = 0
        while not stop.is_set():
            began = time.perf_counter()
            if kind == "read":
                # The previous release's read: named columns, as the ORM writes it (a SELECT * would
                # fail its cached plan once a column is added; the service never issues one).
                await connection.execute(
                    text("SELECT id, sku, quantity, status, created_at FROM orders WHERE id = :id"),
                    {"id": ids[n % len(ids)]},
                )
            else:
                await connection.execute(
                    text("INSERT INTO orders (id, sku, quantity) VALUES (:id, 'NEW', 1)"),
                    {"id": uuid.uuid4()},
                )
            latencies.append(time.perf_counter() - began)
            n += 1
            await asyncio.sleep(0.005)
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "count": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--writers", type=int, default=2)
    args = parser.parse_args()

    raw = os.environ.get("DATABASE_URL") or embedded.start(PROJECT / ".data" / "postgres-bench")
    # The platform's migrations grant the runtime role, which must exist (README "Database roles").
    await asyncio.to_thread(embedded.runtime_role, raw, Settings.model_fields["db_runtime_role"].default)
    started = time.perf_counter()
    url = await prepare(to_async_url(raw), args.rows)
    print(f"{args.rows} orders at {BEFORE} in {time.perf_counter() - started:.1f}s", file=sys.stderr)

    engine = create_async_engine(url, isolation_level="AUTOCOMMIT", pool_size=args.readers + args.writers)
    async with engine.connect() as connection:
        ids = list(
            (await connection.scalars(text("SELECT id FROM orders TABLESAMPLE SYSTEM (1) LIMIT 5000"))).all()
        )
    stop = asyncio.Event()
    workers = [asyncio.create_task(load(engine, ids, "read", stop)) for _ in range(args.readers)]
    workers += [asyncio.create_task(load(engine, ids, "write", stop)) for _ in range(args.writers)]
    await asyncio.sleep(1.0)  # the load runs before the migration starts, as in production

    env = os.environ | {"DATABASE_URL": url.render_as_string(hide_password=False), "LOG_LEVEL": "WARNING"}
    began = time.perf_counter()
    migrate = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "{{ cookiecutter.package_name }}", "migrate", cwd=PROJECT, env=env
    )
    returncode = await migrate.wait()
    duration = time.perf_counter() - began
    await asyncio.sleep(1.0)
    stop.set()
    results = await asyncio.gather(*workers)
    await engine.dispose()

    reads = [latency for result in results[: args.readers] for latency in result]
    writes = [latency for result in results[args.readers :] for latency in result]
    report = {
        "rows": args.rows,
        "migration_exit_code": returncode,
        "migration_s": round(duration, 2),
        "reads": summary(reads),
        "writes": summary(writes),
    }
    out = PROJECT / ".data" / "bench_migration.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return returncode


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
