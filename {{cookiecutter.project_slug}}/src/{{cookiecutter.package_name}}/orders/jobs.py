"""The orders domain's background jobs (platform/jobs/): `orders.notify`.

A created order enqueues `orders.notify` in its own transaction (`service.create`): the job exists
if and only if the order does. The worker POSTs the order to `NOTIFY_URL` through the resilient
client, with the order id as `Idempotency-Key`: a job runs at least once (a worker killed mid-call
runs it again), so the receiver de-duplicates on the key. With `NOTIFY_URL` unset the service
enqueues nothing, which its start-up log says once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from {{ cookiecutter.package_name }}.platform.jobs import Handler
from {{ cookiecutter.package_name }}.platform.jobs import JobContext

NOTIFY = "orders.notify"


class NotifyRefused(Exception):
    """The receiver answered 4xx: retried like any failure, then dead, for someone to look at."""


async def notify(context: JobContext, payload: Mapping[str, Any]) -> None:
    url = context.settings.notify_url
    if url is None:
        # Enqueued by a service that has NOTIFY_URL, run by a worker that has not: a deploy error.
        raise RuntimeError("NOTIFY_URL is not set in this worker")
    order = payload["order"]
    upstream = context.upstreams.get("notify", str(url))
    response = await upstream.request("POST", "", json=order, headers={"Idempotency-Key": order["id"]})
    if response.status_code >= 400:
        raise NotifyRefused(f"notify answered {response.status_code}")


handlers: dict[str, Handler] = {NOTIFY: notify}
