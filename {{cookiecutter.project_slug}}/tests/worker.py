"""The worker as a real process (`python -m <package> worker`), its JSON log in a file, for job tests.

Async, so that a test's ScriptedUpstream (on the test's event loop) keeps answering while the test
waits. Short polls and backoffs: a test waits tenths of a second, not the production defaults.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import MIGRATIONS
from tests.conftest import PROJECT
from tests.upstream import closed_port

FAST = {
    "WORKER_POLL_INTERVAL_S": "0.1",
    "JOB_BACKOFF_S": "0.05",
    "JOB_BACKOFF_MAX_S": "0.2",
    "HTTP_RETRY_ATTEMPTS": "1",  # one POST per run: the upstream counts runs
    "LOG_LEVEL": "INFO",
}


class WorkerProcess:
    def __init__(self, process: asyncio.subprocess.Process, health: str, log: Path) -> None:
        self.process = process
        self.health = health
        self.log = log

    def lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text().splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a traceback's lines, if any
        return found

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == name]


@asynccontextmanager
async def worker(
    database_url: URL, log: Path, *, test_kinds: bool = False, **env: str
) -> AsyncIterator[WorkerProcess]:
    """`python -m <package> worker`; with `test_kinds`, `tests.job_worker` (the same command, and the
    test's own job kinds)."""
    port, metrics_port = closed_port(), closed_port()
    variables = (
        os.environ
        | {
            "DATABASE_URL": database_url.render_as_string(hide_password=False),
            "PORT": str(port),
            "METRICS_PORT": str(metrics_port),
            "MIGRATIONS_DIR": str(MIGRATIONS),
        }
        | FAST
        | env
    )
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            *(["tests.job_worker"] if test_kinds else ["{{ cookiecutter.package_name }}", "worker"]),
            cwd=PROJECT,
            env=variables,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    health = f"http://127.0.0.1:{port}/health"
    try:
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and process.returncode is None:
                try:
                    if (await client.get(health, timeout=1)).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"the worker did not start: {await asyncio.to_thread(log.read_text)}")
        yield WorkerProcess(process, health, log)
    finally:
        if process.returncode is None:
            process.kill()
        await asyncio.wait_for(process.wait(), timeout=30)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 15.0) -> None:
    """Wait until `check()` holds, polling; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s")
        await asyncio.sleep(0.05)


async def query(database_url: URL, statement: str, **params: Any) -> list[Any]:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as connection:
            result = await connection.execute(text(statement), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()


async def empty_queue(database_url: URL) -> None:
    """Committed jobs outlive a test: each job test starts and ends with an empty queue."""
    await query(database_url, "DELETE FROM jobs")
    await query(database_url, "DELETE FROM job_schedules")
