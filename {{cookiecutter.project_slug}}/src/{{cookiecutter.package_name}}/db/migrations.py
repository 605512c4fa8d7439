"""Alembic, driven from Python: the `migrate` command, the tests and `/ready` share this.

Migrations are their own deploy step (`python -m {{ cookiecutter.package_name }} migrate`, a Kubernetes
Job), never a side effect of serving: `/ready` reports a schema behind the heads instead.

The chain has two branches off `0002_idempotency_keys`: the platform's revisions (each marked
`platform_revision = True`, each revising the previous platform one, so a template update adds to
its own branch) and the service's own. Both are applied together (`heads`, never `head`);
`domain_heads` says what a new revision of the service revises (`make migration`).

One run at a time: `migrations/env.py` holds `migration_lock` (a session-level PostgreSQL advisory
lock, its key derived from SERVICE_NAME) for the whole run, so two `migrate` runs started together
(a Job retried while the first pod still runs, a developer beside the pipeline) never race: the
second waits, logging `migration_lock_waiting`, then finds the schema at its heads and does nothing.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import text

from {{ cookiecutter.package_name }}.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.ext.asyncio import AsyncEngine

log = structlog.get_logger(__name__)

# How often a run waiting for another's migration lock asks again; a migration takes seconds at least.
LOCK_POLL_S = 0.5


def alembic_config(migrations_dir: Path, url: str | None = None, settings: Settings | None = None) -> Config:
    from alembic.config import Config  # Alembic costs ~0.4 s of start-up: only the commands load it

    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    if url is not None:
        # Passed as an attribute, not an option: options are interpolated and may be logged.
        config.attributes["url"] = url
    if settings is not None:
        config.attributes["settings"] = settings
    return config


def _chain(migrations_dir: Path) -> dict[str, tuple[str, ...]]:
    """Each revision of `versions/` and the revisions it revises, read from the files' top-level
    `revision` and `down_revision` without importing Alembic: `/ready` needs them at start-up,
    and Alembic's import would be most of that start-up. A test holds this to Alembic's reading."""
    return {revision: downs for revision, (downs, _) in _read(migrations_dir).items()}


def _read(migrations_dir: Path) -> dict[str, tuple[tuple[str, ...], bool]]:
    """Each revision: what it revises, and whether it is the platform's (`platform_revision`)."""
    chain = {}
    for path in sorted((migrations_dir / "versions").glob("*.py")):
        values: dict[str, object] = {}
        for node in ast.parse(path.read_text(), str(path)).body:
            target: ast.expr
            if isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            else:
                continue
            if isinstance(target, ast.Name) and target.id in {
                "revision",
                "down_revision",
                "platform_revision",
            }:
                values[target.id] = ast.literal_eval(value)
        revision, down = values.get("revision"), values.get("down_revision")
        if isinstance(revision, str):
            downs = (
                (down,) if isinstance(down, str) else tuple(down) if isinstance(down, tuple | list) else ()
            )
            chain[revision] = (tuple(str(d) for d in downs), values.get("platform_revision") is True)
    return chain


def expected_heads(migrations_dir: Path) -> frozenset[str]:
    """The revision(s) this code's models expect the database to be at."""
    if not (migrations_dir / "env.py").is_file():
        raise FileNotFoundError(f"MIGRATIONS_DIR={migrations_dir} holds no Alembic environment (env.py)")
    chain = _chain(migrations_dir)
    revised = {down for downs in chain.values() for down in downs}
    return frozenset(chain) - revised


def domain_heads(migrations_dir: Path) -> frozenset[str]:
    """What a new revision of the service revises: the heads outside the platform's branch, or the
    platform's head while the service has no revision of its own (`scripts/migration_base.py`)."""
    read = _read(migrations_dir)
    heads = expected_heads(migrations_dir)
    return frozenset(head for head in heads if not read[head][1]) or heads


def known_revisions(migrations_dir: Path) -> frozenset[str]:
    """Every revision this code ships: a database at one it does not know is ahead of it."""
    return frozenset(_chain(migrations_dir))


def upgrade(
    migrations_dir: Path, url: str, revision: str = "heads", settings: Settings | None = None
) -> None:
    from alembic import command

    command.upgrade(alembic_config(migrations_dir, url, settings), revision)


def downgrade(migrations_dir: Path, url: str, revision: str, settings: Settings | None = None) -> None:
    from alembic import command

    command.downgrade(alembic_config(migrations_dir, url, settings), revision)


def lock_key(service_name: str) -> int:
    """The advisory lock's key: fixed for a service (every release, every replica of the Job), and
    not another service's when several share a database. A signed bigint, as PostgreSQL takes it;
    `pg_locks` shows it split in two: `classid` (high 32 bits) and `objid` (low 32 bits)."""
    digest = hashlib.sha256(f"migrate:{service_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@asynccontextmanager
async def migration_lock(engine: AsyncEngine, service_name: str) -> AsyncIterator[None]:
    """Hold the service's migration lock on a session of its own for the whole run.

    Its own session, not a migration attempt's: each attempt is a fresh session with a short
    `lock_timeout` (env.py), and a session-level lock outlives the attempts' transactions.

    Polled with `pg_try_advisory_lock`, never waited for in `pg_advisory_lock`: a session blocked in
    that statement holds a snapshot, and `CREATE INDEX CONCURRENTLY` in the first run's migration
    waits for every older snapshot, so the first run would wait for the second, which waits for the
    first: a deadlock PostgreSQL cannot see (the lock and the index build are on different sessions).
    The wait is unbounded: the other run is bounded by its own timeouts and the Job by its
    `activeDeadlineSeconds`. If a process dies, PostgreSQL ends its session and frees the lock."""
    key = lock_key(service_name)
    async with engine.connect() as connection:
        connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
        try_lock = text("SELECT pg_try_advisory_lock(:key)")
        waited = False
        while not await connection.scalar(try_lock, {"key": key}):
            if not waited:
                log.warning("migration_lock_waiting", key=key, reason="another migrate run holds it")
                waited = True
            await asyncio.sleep(LOCK_POLL_S)
        if waited:
            log.info("migration_lock_acquired", key=key)
        try:
            yield
        finally:
            await connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
