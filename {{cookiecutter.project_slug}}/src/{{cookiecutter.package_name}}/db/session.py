"""The engine and the request's unit of work.

Standards: Reliability / Timeouts (connect, pool checkout and statement timeouts on every
connection) and Data / Transactions (one request is one transaction). Tuned by `DB_POOL_SIZE`,
`DB_MAX_OVERFLOW`, `DB_POOL_TIMEOUT_S`, `DB_CONNECT_TIMEOUT_S`, `DB_STATEMENT_TIMEOUT_S`,
`DB_LOCK_TIMEOUT_S`, `DB_IDLE_IN_TRANSACTION_TIMEOUT_S`. An exhausted pool answers 503
(`platform/errors.py`) after `DB_POOL_TIMEOUT_S`, which settings keep below the request deadline.

`SessionDep` opens the transaction before the handler runs and commits after it returns, before
the response is sent (FastAPI's `scope="function"`): a client never sees 201 for a write that then
failed to commit. Services `flush()`, never `commit()`; an exception rolls everything back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated
from typing import Any

from fastapi import Depends
from fastapi import Request
from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from {{ cookiecutter.package_name }}.settings import Settings


class DatabaseUnreachable(Exception):
    """The server refused the connection, cannot be reached, or did not answer in time.
    `platform/errors.py` answers it 503 `database-unavailable`."""


def create_engine(settings: Settings, url: URL) -> AsyncEngine:
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_s,
        # Connections older than this are replaced, so a failover or a PgBouncer restart heals itself.
        pool_recycle=1800,
        connect_args=_connect_args(settings),
    )
    event.listen(engine.sync_engine, "do_connect", _connect_or_unavailable)
    return engine


def _connect_or_unavailable(dialect: Dialect, _record: object, cargs: Any, cparams: Any) -> Any:
    """Open a connection; a refused, unreachable or silent server becomes `DatabaseUnreachable`.
    The driver raises those as OSError and TimeoutError, which SQLAlchemy does not wrap."""
    try:
        return dialect.loaded_dbapi.connect(*cargs, **cparams)
    except (OSError, TimeoutError) as exc:
        raise DatabaseUnreachable from exc


def create_probe_engine(settings: Settings, url: URL) -> AsyncEngine:
    """For `/ready`: no pool, so a probe never waits behind requests for a connection."""
    return create_async_engine(url, poolclass=NullPool, connect_args=_connect_args(settings))


def _connect_args(settings: Settings) -> dict[str, object]:
    return {
        "timeout": settings.db_connect_timeout_s,
        # Client-side backstop, a little above the server's own limit below.
        "command_timeout": settings.db_statement_timeout_s + 1,
        "server_settings": {
            "application_name": settings.service_name,
            "statement_timeout": f"{int(settings.db_statement_timeout_s * 1000)}ms",
            "lock_timeout": f"{int(settings.db_lock_timeout_s * 1000)}ms",
            "idle_in_transaction_session_timeout": f"{int(settings.db_idle_in_transaction_timeout_s * 1000)}ms",
        },
    }


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: the response is built from objects after the commit.
    return async_sessionmaker(engine, expire_on_commit=False)


async def _request_session(request: Request) -> AsyncIterator[AsyncSession]:
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with sessionmaker() as session, session.begin():
        yield session


SessionDep = Annotated[AsyncSession, Depends(_request_session, scope="function")]
