"""Liveness and readiness.

Standard: Observability / Health & Readiness Checks.

- `GET /health` (liveness): the process is up and its event loop answers. No dependency is checked:
  a database outage must not make Kubernetes restart every replica at once.
- `GET /ready` (readiness): this replica should get traffic. 200 when the database answers within
  `READY_TIMEOUT_S`, its schema is at the Alembic head this code expects, and the process is not
  shutting down; otherwise 503 naming each failing check. The database's answer is reused for
  `READY_CACHE_S` and computed once at a time however many probes arrive; shutting down shows at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from fastapi import APIRouter
from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from {{ cookiecutter.package_name }}.platform import shutdown
from {{ cookiecutter.package_name }}.platform.metrics import Metrics

log = structlog.get_logger(__name__)

router = APIRouter(tags=["operations"])


class Readiness:
    """The readiness checks, on a connection of their own.

    The probe does not share the request pool: a busy pool means the replica is loaded, not broken,
    and taking every loaded replica out of the load balancer at once turns load into an outage.
    The schema check passes when the database is at this code's head, or ahead of it (a revision
    this code does not know: the migration of the next release has run, and expand/contract keeps
    it compatible); it fails when the database is behind.
    """

    def __init__(
        self,
        probe_engine: AsyncEngine,
        *,
        expected_heads: frozenset[str],
        known_revisions: frozenset[str],
        timeout_s: float,
        cache_s: float,
        metrics: Metrics,
    ) -> None:
        self.engine = probe_engine
        self.metrics = metrics
        self.expected_heads = expected_heads
        self.known_revisions = known_revisions
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self.shutting_down = False
        self._last_ready: bool | None = None
        self._abandoned: set[asyncio.Task[frozenset[str]]] = set()
        self._in_flight: asyncio.Future[dict[str, str]] | None = None
        self._cached: dict[str, str] | None = None
        self._cached_at = 0.0

    async def check(self) -> dict[str, str]:
        """Each check's result: "ok" or why not. Answers within `timeout_s`, whatever the database does."""
        checks = {**await self._database_checks(), "shutdown": "ok"}
        if self.shutting_down or shutdown.is_draining():
            checks["shutdown"] = "draining: the process is shutting down"
        ready = all(value == "ok" for value in checks.values())
        self.metrics.ready.set(1 if ready else 0)
        if ready != self._last_ready:
            log.log(20 if ready else 30, "readiness_changed", ready=ready, **checks)
            self._last_ready = ready
        return checks

    async def _database_checks(self) -> dict[str, str]:
        """The database's checks, at most `cache_s` old; probes arriving while one runs share it.

        `/ready` is reachable by anyone who reaches the port: without this, each call would open a
        database connection (a backend process forked by PostgreSQL)."""
        if self._cached is not None and time.monotonic() - self._cached_at < self.cache_s:
            return self._cached
        if self._in_flight is None:
            self._in_flight = asyncio.ensure_future(self._probe_database())
            self._in_flight.add_done_callback(self._keep)
        # Shielded: a caller that goes away does not cancel the check the others wait on.
        return await asyncio.shield(self._in_flight)

    def _keep(self, task: asyncio.Future[dict[str, str]]) -> None:
        self._in_flight = None
        if not task.cancelled() and task.exception() is None:
            self._cached, self._cached_at = task.result(), time.monotonic()

    async def _probe_database(self) -> dict[str, str]:
        probe = asyncio.ensure_future(self._current_heads())
        done, _ = await asyncio.wait({probe}, timeout=self.timeout_s)
        if not done:
            # Do not wait for the cancelled connection attempt to clean up: that is what hangs.
            probe.cancel()
            self._abandoned.add(probe)
            probe.add_done_callback(self._forget)
            return {"database": f"no answer within {self.timeout_s:g}s", "schema": "unknown"}
        if (error := probe.exception()) is not None:
            return {"database": f"unreachable ({type(error).__name__})", "schema": "unknown"}
        return {"database": "ok", "schema": self._schema(probe.result())}

    def _schema(self, current: frozenset[str]) -> str:
        if current == self.expected_heads or current - self.known_revisions:
            return "ok"
        return f"behind: at {sorted(current) or 'no revision'}, code expects {sorted(self.expected_heads)}"

    async def _current_heads(self) -> frozenset[str]:
        async with self.engine.connect() as connection:
            if not await connection.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL")):
                return frozenset()
            return frozenset(
                (await connection.scalars(text("SELECT version_num FROM alembic_version"))).all()
            )

    def _forget(self, task: asyncio.Task[frozenset[str]]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log "exception was never retrieved"


@router.get("/health", summary="Liveness: the process is up")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Readiness: database reachable, schema at head, not shutting down",
    responses={503: {"description": "Not ready; `checks` names what failed"}},
)
async def ready(request: Request) -> JSONResponse:
    readiness: Readiness = request.app.state.readiness
    checks = await readiness.check()
    ok = all(value == "ok" for value in checks.values())
    body: dict[str, Any] = {"status": "ready" if ok else "unavailable", "checks": checks}
    return JSONResponse(body, status_code=200 if ok else 503)
