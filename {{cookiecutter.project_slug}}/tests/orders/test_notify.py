"""A created order notifies NOTIFY_URL through a real worker process (orders/jobs.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine

from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.orders import service
from {{ cookiecutter.package_name }}.orders.inventory import Inventory
from {{ cookiecutter.package_name }}.orders.schemas import OrderCreate
from {{ cookiecutter.package_name }}.platform import jobs

from tests.conftest import MIGRATIONS
from tests.conftest import PROJECT
from tests.conftest import make_settings
from tests.conftest import serving
from tests.orders.conftest import count_and_clean
from tests.upstream import Reply
from tests.upstream import ScriptedUpstream
from tests.worker import empty_queue
from tests.worker import eventually
from tests.worker import query
from tests.worker import worker


class Abort(Exception):
    pass


@pytest.fixture
async def queue(database_url: URL) -> AsyncIterator[URL]:
    await empty_queue(database_url)
    yield database_url
    await empty_queue(database_url)
    await count_and_clean(database_url)


async def test_an_order_that_rolls_back_leaves_no_notification(queue: URL) -> None:
    engine = create_async_engine(queue)
    sessions = async_sessionmaker(engine)

    async def create_then_fail() -> None:
        async with sessions() as session, session.begin():
            await service.create(
                session=session,
                inventory=Inventory(None),
                data=OrderCreate(sku="ABC-1", quantity=1),
                idempotency_key="k",
                notify=True,
            )
            raise Abort  # anything after the order, before the commit

    try:
        with pytest.raises(Abort):
            await create_then_fail()
    finally:
        await engine.dispose()
    assert await query(queue, "SELECT count(*) FROM jobs") == [(0,)]


async def test_a_created_order_is_notified_once_in_its_trace(queue: URL, tmp_path: Path) -> None:
    async with ScriptedUpstream(default=Reply(202)) as receiver:
        app = create_app(make_settings(queue, notify_url=receiver.url))
        async with serving(app) as client:
            response = await client.post(
                "/v1/orders", json={"sku": "ABC-1", "quantity": 2}, headers={"Idempotency-Key": "n1"}
            )
        assert response.status_code == 201
        order = response.json()
        trace_id = response.headers["traceresponse"].split("-")[1]
        async with worker(queue, tmp_path / "worker.log", NOTIFY_URL=receiver.url) as running:

            async def delivered() -> bool:
                return bool(running.events("job_succeeded"))

            await eventually(delivered)
            await asyncio.sleep(0.5)  # a second run, if any, would have started by now
        assert len(receiver.received) == 1
        (call,) = receiver.received
        assert call.method == "POST"
        assert call.headers["idempotency-key"] == order["id"]
        assert call.json == order
        (succeeded,) = running.events("job_succeeded")
        assert succeeded["trace_id"] == trace_id  # the worker's span continues the request's trace
        assert succeeded["kind"] == "orders.notify"
    assert await query(queue, "SELECT count(*) FROM jobs") == [(0,)]


async def enqueue_notify(database_url: URL) -> str:
    engine = create_async_engine(database_url)
    order_id = str(uuid.uuid4())
    try:
        async with async_sessionmaker(engine)() as session, session.begin():
            jobs.enqueue(session, "orders.notify", {"order": {"id": order_id, "sku": "ABC-1", "quantity": 1}})
    finally:
        await engine.dispose()
    return order_id


async def test_a_job_whose_worker_is_killed_runs_again(queue: URL, tmp_path: Path) -> None:
    order_id = await enqueue_notify(queue)
    lease = {"JOB_TIMEOUT_S": "3", "JOB_LEASE_S": "4"}
    async with ScriptedUpstream(default=Reply(202)) as receiver:
        receiver.then(Reply(202, delay_s=30))  # the first call hangs: its worker dies meanwhile
        async with worker(queue, tmp_path / "first.log", NOTIFY_URL=receiver.url, **lease) as first:

            async def called() -> bool:
                return len(receiver.received) == 1

            await eventually(called)
            first.process.send_signal(signal.SIGKILL)
            await first.process.wait()
        async with worker(queue, tmp_path / "second.log", NOTIFY_URL=receiver.url, **lease) as second:

            async def delivered() -> bool:
                return bool(second.events("job_succeeded"))

            await eventually(delivered, timeout_s=20)  # once the dead worker's lease has run out
        assert [call.headers["idempotency-key"] for call in receiver.received] == [order_id, order_id]
        assert second.events("job_succeeded")[0]["attempt"] == 2
    assert await query(queue, "SELECT count(*) FROM jobs") == [(0,)]


async def test_a_failing_receiver_is_retried_then_dead_and_rerun_by_command(
    queue: URL, tmp_path: Path
) -> None:
    order_id = await enqueue_notify(queue)
    async with ScriptedUpstream(default=Reply(503)) as receiver:
        async with worker(
            queue, tmp_path / "worker.log", NOTIFY_URL=receiver.url, JOB_MAX_ATTEMPTS="3"
        ) as running:

            async def dead() -> bool:
                return bool(await query(queue, "SELECT 1 FROM jobs WHERE status = 'dead'"))

            await eventually(dead)
            assert len(receiver.received) == 3
            ((job_id, error),) = await query(queue, "SELECT id, last_error FROM jobs")
            assert "notify answered 503" in error
            assert [line["attempt"] for line in running.events("job_failed")] == [1, 2]

            receiver.default = Reply(202)  # the receiver recovers
            rerun = await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "{{ cookiecutter.package_name }}",
                    "jobs",
                    "retry",
                    str(job_id),
                ],
                cwd=PROJECT,
                env=os.environ
                | {
                    "DATABASE_URL": queue.render_as_string(hide_password=False),
                    "MIGRATIONS_DIR": str(MIGRATIONS),
                },
                capture_output=True,
                timeout=60,
                check=False,
            )
            assert rerun.returncode == 0, rerun.stderr

            async def delivered() -> bool:
                return bool(running.events("job_succeeded"))

            await eventually(delivered)
        assert len(receiver.received) == 4
        assert {call.headers["idempotency-key"] for call in receiver.received} == {order_id}
    assert await query(queue, "SELECT count(*) FROM jobs") == [(0,)]
