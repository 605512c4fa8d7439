"""Liveness and readiness.

Standard: Observability / Health & Readiness Checks.

- `GET /health` (liveness): the process is up and its event loop answers. No dependency is checked:
  a database outage must not make Kubernetes restart every replica at once.
- `GET /ready` (readiness): this replica should get traffic. 200 when the database answers within
  `READY_TIMEOUT_S`, its schema is at the Alembic head this code expects, and the process is not
  shutting down; otherwise 503 naming each failing check.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = structlog.get_logger(__name__)

router = APIRouter(tags=["operations"])


class Readiness:
    def __init__(self, engine: AsyncEngine, *, expected_heads: frozenset[str], timeout_s: float) -> None:
        self.engine = engine
        self.expected_heads = expected_heads
        self.timeout_s = timeout_s
        self.shutting_down = False
        self._last_ready: bool | None = None

    async def check(self) -> dict[str, str]:
        """Each check's result: "ok" or why not."""
        checks = {"database": "ok", "schema": "ok", "shutdown": "ok"}
        if self.shutting_down:
            checks["shutdown"] = "draining: the process is shutting down"
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.engine.connect() as connection:
                    current = await _current_heads(connection)
        except TimeoutError:
            checks["database"] = f"no answer within {self.timeout_s:g}s"
            checks["schema"] = "unknown"
        except Exception as exc:  # any driver or network error means "not reachable"
            checks["database"] = f"unreachable ({type(exc).__name__})"
            checks["schema"] = "unknown"
        else:
            if current != self.expected_heads:
                checks["schema"] = (
                    f"at {sorted(current) or 'no revision'}, code expects {sorted(self.expected_heads)}"
                )
        ready = all(value == "ok" for value in checks.values())
        if ready != self._last_ready:
            log.log(20 if ready else 30, "readiness_changed", ready=ready, **checks)
            self._last_ready = ready
        return checks


async def _current_heads(connection: AsyncConnection) -> frozenset[str]:
    if not await connection.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL")):
        return frozenset()
    return frozenset((await connection.scalars(text("SELECT version_num FROM alembic_version"))).all())


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
