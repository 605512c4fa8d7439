"""The platform's periodic jobs: the purges that used to run as tasks of every serving process.

Each runs once per interval across all worker replicas (`schedule`), and each is also a command
(`purge-idempotency-keys`, `purge-audit-events`). The rate limit windows are purged only where
they are kept in PostgreSQL (`RATE_LIMIT_STORAGE=database`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from {{ cookiecutter.package_name }}.platform import audit
from {{ cookiecutter.package_name }}.platform import idempotency
from {{ cookiecutter.package_name }}.platform import ratelimit
from {{ cookiecutter.package_name }}.platform.jobs.schedule import Schedule
from {{ cookiecutter.package_name }}.platform.jobs.worker import Handler
from {{ cookiecutter.package_name }}.platform.jobs.worker import JobContext
from {{ cookiecutter.package_name }}.settings import Settings

log = structlog.get_logger(__name__)

PURGE_IDEMPOTENCY_KEYS = "platform.purge_idempotency_keys"
PURGE_AUDIT_EVENTS = "platform.purge_audit_events"
PURGE_RATE_LIMITS = "platform.purge_rate_limits"


async def purge_idempotency_keys(context: JobContext, _payload: Mapping[str, Any]) -> None:
    deleted = await idempotency.purge_expired(context.engine)
    log.info("idempotency_keys_purged", deleted=deleted)


async def purge_audit_events(context: JobContext, _payload: Mapping[str, Any]) -> None:
    deleted = await audit.purge_expired(context.engine, retention_s=context.settings.audit_retention_s)
    log.info("audit_events_purged", deleted=deleted)


async def purge_rate_limits(context: JobContext, _payload: Mapping[str, Any]) -> None:
    deleted = await ratelimit.purge_expired(context.engine)
    log.debug("rate_limit_windows_purged", deleted=deleted)


def platform_jobs(settings: Settings) -> tuple[dict[str, Handler], list[Schedule]]:
    """The platform's handlers and their schedules, for this configuration."""
    handlers: dict[str, Handler] = {
        PURGE_IDEMPOTENCY_KEYS: purge_idempotency_keys,
        PURGE_AUDIT_EVENTS: purge_audit_events,
        PURGE_RATE_LIMITS: purge_rate_limits,
    }
    schedules = [
        Schedule(PURGE_IDEMPOTENCY_KEYS, settings.idempotency_purge_interval_s),
        Schedule(PURGE_AUDIT_EVENTS, settings.audit_purge_interval_s),
    ]
    if settings.rate_limit_enabled and settings.rate_limit_storage == "database":
        schedules.append(Schedule(PURGE_RATE_LIMITS, settings.rate_limit_purge_interval_s))
    return handlers, schedules
