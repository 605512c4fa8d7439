"""A database's transient states answer 503, each state produced for real on a real PostgreSQL.

Each test makes the server raise one SQLSTATE under a route of the test's own, then checks what a
client and an operator see: 503 problem+json with the state's `type` and `Retry-After`, the
`database_transient_errors_total{sqlstate}` sample, and one warning log line with the SQLSTATE and
no stack trace. These tests commit for real (they need two sessions); each creates what it needs
(a table, a role, a server) and removes it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import psutil
import pytest
from fastapi import APIRouter
from fastapi import FastAPI
from fastapi import Request
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from {{ cookiecutter.package_name }}.db import embedded
from {{ cookiecutter.package_name }}.db.session import SessionDep
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.settings import to_async_url

from tests.conftest import PROJECT
from tests.conftest import make_settings
from tests.conftest import scrape
from tests.conftest import serving

# Upper bound of every wait on the other request or on the server; never reached when all is well.
WAIT_S = 20.0

LogLines = Callable[[], list[dict[str, Any]]]

router = APIRouter()


class Signals:
    """What the routes tell the test (their backend's pid) and each other (a step reached)."""

    def __init__(self) -> None:
        self.backend_pids: asyncio.Queue[int] = asyncio.Queue()
        self.steps: dict[str, asyncio.Event] = {}

    def step(self, name: str) -> asyncio.Event:
        return self.steps.setdefault(name, asyncio.Event())


def _signals(request: Request) -> Signals:
    signals: Signals = request.app.state.signals
    return signals


@router.get("/rows")
async def count_rows(session: SessionDep) -> dict[str, int]:
    return {"rows": int(await session.scalar(text("SELECT count(*) FROM database_errors_rows")) or 0)}


@router.get("/sleep")
async def sleep(request: Request, session: SessionDep, seconds: float) -> dict[str, bool]:
    pid = int(await session.scalar(text("SELECT pg_backend_pid()")) or 0)
    _signals(request).backend_pids.put_nowait(pid)
    await session.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
    return {"slept": True}


@router.post("/lock/{first}/then/{second}")
async def lock_two_rows(request: Request, session: SessionDep, first: int, second: int) -> dict[str, bool]:
    """Lock row `first`, wait until the other request holds row `second`, then lock `second` too."""
    lock = text("SELECT id FROM database_errors_rows WHERE id = :id FOR UPDATE")
    await session.execute(lock, {"id": first})
    signals = _signals(request)
    signals.step(f"holds {first}").set()
    await asyncio.wait_for(signals.step(f"holds {second}").wait(), WAIT_S)
    await session.execute(lock, {"id": second})
    return {"locked": True}


@router.post("/skew/{reads}/{writes}")
async def write_skew(request: Request, session: SessionDep, reads: str, writes: str) -> dict[str, int]:
    """Count the rows of kind `reads`, wait until the other request has counted kind `writes`, then
    add a row of kind `writes`: each write changes what the other read (a write skew)."""
    await session.execute(text("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"))
    count = text("SELECT count(*) FROM database_errors_rows WHERE kind = :kind")
    seen = int(await session.scalar(count, {"kind": reads}) or 0)
    signals = _signals(request)
    signals.step(f"read {reads}").set()
    await asyncio.wait_for(signals.step(f"read {writes}").wait(), WAIT_S)
    await session.execute(text("INSERT INTO database_errors_rows (kind) VALUES (:kind)"), {"kind": writes})
    return {"seen": seen}


@pytest.fixture
def overrides() -> dict[str, Any]:
    """Settings of the app under test; a test parametrizes this to change them."""
    return {}


@pytest.fixture
def target(database_url: URL) -> URL:
    """The server and role the app connects to; a test class overrides this for another."""
    return database_url


@pytest.fixture
def app(target: URL, overrides: dict[str, Any]) -> FastAPI:
    # Built before `log_lines` starts capturing: `create_app` configures logging itself.
    app = create_app(make_settings(target, **overrides))
    app.include_router(router)
    app.state.signals = Signals()
    return app


@pytest.fixture
async def admin(owner_url: URL) -> AsyncIterator[AsyncEngine]:
    """The test's own connections to the test database, beside the app's, as the schema's owner
    (the table it creates is the runtime role's to use by the default privileges of migration 0005)."""
    engine = create_async_engine(owner_url, poolclass=NullPool)
    async with engine.begin() as connection:
        await connection.execute(text("DROP TABLE IF EXISTS database_errors_rows"))
        await connection.execute(
            text("CREATE TABLE database_errors_rows (id serial PRIMARY KEY, kind text NOT NULL UNIQUE)")
        )
        await connection.execute(
            text("INSERT INTO database_errors_rows (kind) VALUES ('seed 1'), ('seed 2')")
        )
    yield engine
    async with engine.begin() as connection:
        await connection.execute(text("DROP TABLE IF EXISTS database_errors_rows"))
    await engine.dispose()


async def transient_errors(app: FastAPI, sqlstate: str) -> float:
    """The `database_transient_errors_total` sample for `sqlstate`, 0 before its first error."""
    metrics = text_string_to_metric_families(await scrape(app))
    [family] = [family for family in metrics if family.name == "database_transient_errors"]
    samples = [
        s.value for s in family.samples if s.name.endswith("_total") and s.labels == {"sqlstate": sqlstate}
    ]
    return samples[0] if samples else 0.0


def assert_transient(response: httpx.Response, log_lines: LogLines, *, sqlstate: str, slug: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == f"/problems/{slug}"
    assert body["status"] == 503
    assert int(response.headers["retry-after"]) >= 1
    assert "SELECT" not in body["detail"]  # nothing internal leaks

    lines = log_lines()
    [logged] = [line for line in lines if line["event"] == "database_transient_error"]
    assert logged["level"] == "warning"
    assert logged["sqlstate"] == sqlstate
    assert logged["problem"] == slug  # the line names the answer the client got
    assert logged["request_id"] == response.headers["x-request-id"]
    assert "exception" not in logged  # no stack trace: this is not a bug
    assert not [line for line in lines if line["event"] in {"database_error", "unhandled_exception"}]


@pytest.mark.parametrize("overrides", [{"db_lock_timeout_s": 0.2}], ids=["DB_LOCK_TIMEOUT_S=0.2"])
async def test_a_lock_held_past_the_lock_timeout_is_a_503(
    app: FastAPI, admin: AsyncEngine, log_lines: LogLines
) -> None:
    async with serving(app) as client, admin.connect() as holder:
        before = await transient_errors(app, "55P03")
        async with holder.begin():
            await holder.execute(text("LOCK TABLE database_errors_rows IN ACCESS EXCLUSIVE MODE"))
            response = await client.get("/rows")
        assert_transient(response, log_lines, sqlstate="55P03", slug="database-lock-timeout")
        assert await transient_errors(app, "55P03") == before + 1
        assert (await client.get("/rows")).status_code == 200  # the lock released, the retry succeeds


@pytest.mark.parametrize("overrides", [{"db_statement_timeout_s": 0.2}], ids=["DB_STATEMENT_TIMEOUT_S=0.2"])
async def test_a_statement_past_the_statement_timeout_is_a_503(app: FastAPI, log_lines: LogLines) -> None:
    async with serving(app) as client:
        before = await transient_errors(app, "57014")
        # Shorter than the driver's own backstop (statement timeout + 1 s): the server cancels it.
        response = await client.get("/sleep", params={"seconds": 1.0})
        assert_transient(response, log_lines, sqlstate="57014", slug="database-statement-timeout")
        assert await transient_errors(app, "57014") == before + 1


async def the_one_that_fails(*requests: Awaitable[httpx.Response]) -> httpx.Response:
    """Two requests that conflict, run at once: one succeeds, the other is returned."""
    responses = await asyncio.wait_for(asyncio.gather(*requests), WAIT_S)
    [failed] = [response for response in responses if response.status_code != 200]
    assert [response.status_code for response in responses].count(200) == 1
    return failed


# Lock waits outlast PostgreSQL's deadlock_timeout (1 s), so the deadlock detector is what ends them.
@pytest.mark.parametrize(
    "overrides",
    [{"db_lock_timeout_s": 10.0, "db_statement_timeout_s": 10.0}],
    ids=["DB_LOCK_TIMEOUT_S=10"],
)
async def test_a_deadlock_is_a_503_for_the_transaction_rolled_back(
    app: FastAPI, admin: AsyncEngine, log_lines: LogLines
) -> None:
    async with serving(app) as client:
        before = await transient_errors(app, "40P01")
        victim = await the_one_that_fails(client.post("/lock/1/then/2"), client.post("/lock/2/then/1"))
        assert_transient(victim, log_lines, sqlstate="40P01", slug="database-deadlock")
        assert await transient_errors(app, "40P01") == before + 1


async def test_a_serialization_failure_is_a_503_for_the_transaction_that_lost(
    app: FastAPI, admin: AsyncEngine, log_lines: LogLines
) -> None:
    async with serving(app) as client:
        before = await transient_errors(app, "40001")
        loser = await the_one_that_fails(client.post("/skew/a/b"), client.post("/skew/b/a"))
        assert_transient(loser, log_lines, sqlstate="40001", slug="database-serialization-failure")
        assert await transient_errors(app, "40001") == before + 1
    async with admin.connect() as connection:  # the loser's write was rolled back
        kinds = (
            await connection.scalars(
                text("SELECT kind FROM database_errors_rows WHERE kind NOT LIKE 'seed%'")
            )
        ).all()
    assert len(kinds) == 1


async def test_a_session_terminated_by_the_server_is_a_503(
    app: FastAPI, admin: AsyncEngine, log_lines: LogLines
) -> None:
    async with serving(app) as client:
        before = await transient_errors(app, "57P01")
        request = asyncio.create_task(client.get("/sleep", params={"seconds": 3.0}))
        pid = await asyncio.wait_for(app.state.signals.backend_pids.get(), WAIT_S)
        async with admin.begin() as connection:
            assert await connection.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        response = await asyncio.wait_for(request, WAIT_S)
        # The server sends 57P01 and closes the connection; asyncpg raises "connection closed"
        # (08003) with the server's error as its cause, which is what `errors.py` reads.
        assert_transient(response, log_lines, sqlstate="57P01", slug="database-connection-terminated")
        assert await transient_errors(app, "57P01") == before + 1


async def test_pooled_connections_killed_between_requests_cost_at_most_one_503(
    app: FastAPI, admin: AsyncEngine, log_lines: LogLines
) -> None:
    """A failover, a PgBouncer restart, an administrator's pg_terminate_backend: every connection
    the pool holds dies while idle. The next request may find a dead one and answer 503 with
    Retry-After (a client retry then succeeds); that failure discards the pool's other old
    connections, so every request after it is served on fresh ones. Never a 500, never a run of 503s."""
    async with serving(app) as client:
        # Three requests at once: the pool holds three connections when they are done.
        warm = await asyncio.gather(*(client.get("/sleep", params={"seconds": 0.2}) for _ in range(3)))
        assert [response.status_code for response in warm] == [200] * 3
        pids = {app.state.signals.backend_pids.get_nowait() for _ in range(3)}
        async with admin.begin() as connection:
            terminate = (
                "SELECT count(*) FROM unnest(CAST(:pids AS int[])) AS pid WHERE pg_terminate_backend(pid)"
            )
            killed = await connection.scalar(text(terminate), {"pids": list(pids)})
        assert killed == len(pids) == 3

        answers = [await client.get("/rows") for _ in range(6)]
    failed = [answer for answer in answers if answer.status_code != 200]
    assert len(failed) <= 1, [answer.text for answer in failed]
    for answer in failed:
        assert answer.status_code == 503, answer.text
        assert answer.json()["type"].startswith("/problems/database-")
        assert int(answer.headers["retry-after"]) >= 1
    assert not [line for line in log_lines() if line["event"] in {"database_error", "unhandled_exception"}]


class TestARoleOverItsConnectionLimit:
    @pytest.fixture
    async def target(self, owner_url: URL) -> AsyncIterator[URL]:
        """A role that may not open any connection (superusers ignore connection limits)."""
        role = f"limited_{uuid4().hex[:12]}"
        engine = create_async_engine(owner_url, poolclass=NullPool)
        async with engine.begin() as connection:
            await connection.execute(text(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0"))
        yield owner_url.set(username=role, password=None)
        async with engine.begin() as connection:
            await connection.execute(text(f"DROP ROLE IF EXISTS {role}"))
        await engine.dispose()

    async def test_is_a_503_too_many_connections(self, app: FastAPI, log_lines: LogLines) -> None:
        async with serving(app) as client:
            before = await transient_errors(app, "53300")
            response = await client.get("/rows")
            assert_transient(response, log_lines, sqlstate="53300", slug="database-too-many-connections")
            assert await transient_errors(app, "53300") == before + 1


def _postmaster(data_dir: Path) -> psutil.Process:
    return psutil.Process(int((data_dir / "postmaster.pid").read_text().split()[0]))


async def _refuses_connections(url: URL) -> bool:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect():
            return False
    except DBAPIError as exc:
        return getattr(exc.orig, "sqlstate", None) == "57P03"
    finally:
        await engine.dispose()


class TestAServerShuttingDown:
    @pytest.fixture
    async def target(self) -> AsyncIterator[URL]:
        """A throwaway server in a smart shutdown (SIGTERM to the postmaster): it refuses new
        connections with 57P03 while the session it still has keeps it from stopping. Its data
        lives in the project's .data/ like the suite's own server: pytest makes its temporary
        directories private again whenever a session starts, which the server's user cannot cross."""
        data_dir = PROJECT / ".data" / f"postgres-shutdown-{uuid4().hex[:8]}"
        url = to_async_url(embedded.start(data_dir))
        postmaster = _postmaster(data_dir)
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.connect() as session:
                await session.execute(text("SELECT 1"))
                os.kill(postmaster.pid, signal.SIGTERM)
                for _ in range(int(WAIT_S / 0.05)):  # the postmaster handles its signal soon
                    if await _refuses_connections(url):
                        break
                    await asyncio.sleep(0.05)
                yield url
        finally:
            await engine.dispose()
            # With its last session gone the shutdown completes; a server that will not stop is killed.
            try:
                await asyncio.to_thread(postmaster.wait, WAIT_S)
            except psutil.TimeoutExpired:
                os.kill(postmaster.pid, signal.SIGQUIT)
                raise
            finally:
                shutil.rmtree(data_dir, ignore_errors=True)

    async def test_is_a_503_not_accepting_connections(self, app: FastAPI, log_lines: LogLines) -> None:
        async with serving(app) as client:
            before = await transient_errors(app, "57P03")
            response = await client.get("/rows")
            assert_transient(response, log_lines, sqlstate="57P03", slug="database-not-accepting-connections")
            assert await transient_errors(app, "57P03") == before + 1


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT no_such_column FROM database_errors_rows",
        "INSERT INTO database_errors_rows (kind) VALUES ('seed 1')",  # a unique violation
    ],
    ids=["bad SQL", "unexpected constraint"],
)
async def test_a_database_error_that_is_not_transient_is_still_a_bug(
    app: FastAPI, admin: AsyncEngine, log_lines: LogLines, statement: str
) -> None:
    @app.get("/bug")
    async def bug(session: SessionDep) -> None:
        await session.execute(text(statement))

    async with serving(app) as client:
        response = await client.get("/bug")
        assert response.status_code == 500
        assert response.json()["type"] == "/problems/internal-error"
        [logged] = [line for line in log_lines() if line["event"] == "database_error"]
        assert logged["level"] == "error"
        assert "Traceback" in logged["exception"]
        assert "database_transient_errors_total{" not in await scrape(app)


class Cable:
    """A TCP hop between the app and PostgreSQL that the test can cut: `cut()` drops every
    connection through it at once, as a network partition or a dead load balancer does, so the
    driver sees its socket close with no error from the server (no SQLSTATE)."""

    def __init__(self, server: URL) -> None:
        self.server = server
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Cable:
        self._server = await asyncio.start_server(self._carry, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        socket_dir = self.server.query.get("host")
        if isinstance(socket_dir, str):  # the embedded server listens on a Unix socket
            return await asyncio.open_unix_connection(f"{socket_dir}/.s.PGSQL.{self.server.port or 5432}")
        return await asyncio.open_connection(self.server.host, self.server.port or 5432)

    async def _carry(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await self._open()
        self._writers += [client_writer, server_writer]

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with suppress(OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    def url(self) -> URL:
        query = {key: value for key, value in self.server.query.items() if key != "host"}
        return self.server.set(host="127.0.0.1", port=self.port, query=query)


class TestANetworkCut:
    @pytest.fixture
    async def cable(self, database_url: URL) -> AsyncIterator[Cable]:
        async with Cable(database_url) as cable:
            yield cable

    @pytest.fixture
    def target(self, cable: Cable) -> URL:
        return cable.url()

    async def test_mid_query_is_a_503_database_unavailable(
        self, app: FastAPI, admin: AsyncEngine, cable: Cable, log_lines: LogLines
    ) -> None:
        """No SQLSTATE at all: the network between the service and its database fails while a
        query runs. The client gets 503 `database-unavailable` with Retry-After (not a 500: nothing
        is wrong with the code), the operator a warning naming what the driver raised, and the next
        request is served on a new connection."""
        async with serving(app) as client:
            request = asyncio.create_task(client.get("/sleep", params={"seconds": 5.0}))
            await asyncio.wait_for(app.state.signals.backend_pids.get(), WAIT_S)
            cable.cut()
            response = await asyncio.wait_for(request, WAIT_S)
            assert response.status_code == 503, response.text
            assert response.json()["type"] == "/problems/database-unavailable"
            assert int(response.headers["retry-after"]) >= 1
            lines = log_lines()
            [logged] = [line for line in lines if line["event"] == "database_unavailable"]
            assert logged["level"] == "warning"
            assert logged["error"] == "ConnectionDoesNotExistError"
            assert logged["request_id"] == response.headers["x-request-id"]
            assert not [line for line in lines if line["event"] in {"database_error", "unhandled_exception"}]
            assert (await client.get("/rows")).status_code == 200
