from __future__ import annotations

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from {{ cookiecutter.package_name }}.db.session import SessionDep


async def test_a_request_is_one_transaction_rolled_back_when_the_handler_fails(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await _scratch_table(app)

    @app.post("/write-then-fail")
    async def write_then_fail(session: SessionDep) -> None:
        await session.execute(text("INSERT INTO scratch (note) VALUES ('half-done')"))
        raise RuntimeError("fails after the write, before the commit")

    @app.post("/write")
    async def write(session: SessionDep) -> dict[str, str]:
        await session.execute(text("INSERT INTO scratch (note) VALUES ('done')"))
        return {"status": "written"}

    @app.get("/notes")
    async def notes(session: SessionDep) -> list[str]:
        return list((await session.scalars(text("SELECT note FROM scratch ORDER BY note"))).all())

    assert (await client.post("/write-then-fail")).status_code == 500
    assert (await client.post("/write")).status_code == 200
    assert (await client.get("/notes")).json() == ["done"]


async def _scratch_table(app: FastAPI) -> None:
    async with app.state.sessionmaker() as session, session.begin():
        await session.execute(text("CREATE TEMPORARY TABLE scratch (note text NOT NULL)"))


async def test_every_connection_carries_the_database_timeouts(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    engine = app.state.engine
    async with engine.connect() as connection:
        shown = {
            name: await connection.scalar(text(f"SHOW {name}"))
            for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
        }
    assert shown == {
        "statement_timeout": "5s",
        "lock_timeout": "2s",
        "idle_in_transaction_session_timeout": "15s",
    }


async def test_a_failed_commit_is_a_500_and_leaves_nothing(app: FastAPI, owner_url: URL) -> None:
    """The real commit path, outside the rolled-back test transaction: a constraint checked only at
    COMMIT fails it, and the client hears 500 (not the 200 the handler returned)."""
    owner = create_async_engine(owner_url, poolclass=NullPool)  # the table is a schema change
    async with LifespanManager(app) as manager:
        engine = app.state.engine
        async with owner.begin() as connection:
            await connection.execute(text("DROP TABLE IF EXISTS commit_check"))
            await connection.execute(
                text(
                    "CREATE TABLE commit_check (id int, CONSTRAINT one_only UNIQUE (id) "
                    "DEFERRABLE INITIALLY DEFERRED)"
                )
            )

        @app.post("/duplicate")
        async def duplicate(session: SessionDep) -> dict[str, str]:
            await session.execute(text("INSERT INTO commit_check VALUES (1), (1)"))
            return {"status": "written"}

        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.post("/duplicate")
        async with engine.begin() as connection:
            rows = await connection.scalar(text("SELECT count(*) FROM commit_check"))
        async with owner.begin() as connection:
            await connection.execute(text("DROP TABLE commit_check"))
    await owner.dispose()
    assert response.status_code == 500
    assert rows == 0
