"""A rolling restart of two real service processes behind `proxy.ReadinessProxy`, under load."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from contextlib import ExitStack

import httpx

from tests.proxy import ReadinessProxy
from tests.proxy import constant_load
from tests.service import running

SHUTDOWN_DELAY_S = "1"


async def rolling_restart(
    database_url: str,
    send: Callable[[httpx.AsyncClient, str], object],
    *,
    app: str | None = None,
    **env: str,
) -> tuple[list[int], list[float]]:
    """Start two instances, put them behind the proxy, load it, then replace each instance in turn
    (SIGTERM, wait for exit, start a new one, wait until it is routed to). Returns every status the
    load saw and each instance's SIGTERM-to-exit time."""
    env = {"SHUTDOWN_DELAY_S": SHUTDOWN_DELAY_S, **env}
    with ExitStack() as instances:
        first = instances.enter_context(running(database_url, app=app, **env))
        second = instances.enter_context(running(database_url, app=app, **env))
        async with ReadinessProxy([first.base, second.base]) as proxy:
            for instance in (first, second):
                await proxy.wait_ready(instance.base)
            stop = asyncio.Event()
            load = asyncio.create_task(constant_load(f"http://127.0.0.1:{proxy.port}", send, stop))
            await asyncio.sleep(1.0)
            exits = []
            for old in (first, second):
                sent = time.monotonic()
                old.process.send_signal(signal.SIGTERM)
                await asyncio.to_thread(old.process.wait, 60)
                exits.append(time.monotonic() - sent)
                # Started off the loop: the proxy and the load run on it, and the new instance's
                # start (seconds on a loaded machine) would stall them into client timeouts.
                new = await asyncio.to_thread(instances.enter_context, running(database_url, app=app, **env))
                proxy.backends = [new.base if b == old.base else b for b in proxy.backends]
                await proxy.wait_ready(new.base)
                await asyncio.sleep(0.5)
            stop.set()
            statuses = await asyncio.wait_for(load, timeout=60)
    return statuses, exits
