"""`python -m {{ cookiecutter.package_name }} [serve [--migrate] [--worker] | worker | jobs | migrate | purge-*]`.

`serve` (the default) runs uvicorn on `HOST`:`PORT` as `DATABASE_URL`'s role (the runtime role);
`migrate` upgrades the schema to its heads as `MIGRATION_DATABASE_URL`'s role (the schema's owner;
`DATABASE_URL`'s when unset, a development convenience) and exits (the deploy step; `make migrate`).
Without `DATABASE_URL` both start the embedded PostgreSQL first, for development, with both roles;
`serve --migrate` (what `make run` uses) also migrates, as the owner, before serving as the runtime role.
`worker` runs background jobs (platform/jobs/) as the runtime role, with `/health` on `PORT`;
`serve --worker` (`make run`) starts one beside the server, as a child process on `PORT`+1 (metrics
on `METRICS_PORT`+1), stopped with it. `jobs list [--dead]` and `jobs retry ID` look after the queue.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from collections.abc import Mapping
from contextlib import contextmanager
from contextlib import nullcontext

import structlog
import uvicorn
from pydantic import SecretStr
from uvicorn.supervisors import Multiprocess

from {{ cookiecutter.package_name }} import domains
from {{ cookiecutter.package_name }}.db import embedded
from {{ cookiecutter.package_name }}.db import migrations
from {{ cookiecutter.package_name }}.db.session import create_engine
from {{ cookiecutter.package_name }}.platform import audit
from {{ cookiecutter.package_name }}.platform import idempotency
from {{ cookiecutter.package_name }}.platform import jobs
from {{ cookiecutter.package_name }}.platform import logs
from {{ cookiecutter.package_name }}.platform import shutdown
from {{ cookiecutter.package_name }}.platform.jobs.periodic import platform_jobs
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.settings import load_settings

log = structlog.get_logger("{{ cookiecutter.package_name }}")


# What `serve` runs. The tests serve the same app with test-only routes added (tests/serve.py).
APP_FACTORY = "{{ cookiecutter.package_name }}.main:create_app"


def main(
    argv: list[str] | None = None,
    *,
    app_factory: str = APP_FACTORY,
    job_handlers: Mapping[str, jobs.Handler] | None = None,
) -> int:
    """`app_factory` serves another app, `job_handlers` gives the worker more job kinds (tests)."""
    parser = argparse.ArgumentParser(
        prog="python -m {{ cookiecutter.package_name }}",
        description=__doc__,
    )
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="serve HTTP (the default)")
    serve.add_argument("--migrate", action="store_true", help="upgrade the schema first (development)")
    serve.add_argument("--worker", action="store_true", help="run a worker beside the server (development)")
    commands.add_parser("worker", help="run background jobs until SIGTERM")
    jobs_command = commands.add_parser("jobs", help="list or re-run background jobs")
    jobs_actions = jobs_command.add_subparsers(dest="action", required=True)
    jobs_list = jobs_actions.add_parser("list", help="list jobs (the first 100), oldest first")
    jobs_list.add_argument("--dead", action="store_true", help="only the dead ones (failed every attempt)")
    jobs_retry = jobs_actions.add_parser("retry", help="put a dead job back in the queue, attempts reset")
    jobs_retry.add_argument("id", type=int)
    migrate = commands.add_parser(
        "migrate",
        help="upgrade the schema to its heads and exit, as MIGRATION_DATABASE_URL (DATABASE_URL when unset)",
    )
    migrate.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION instead (a rollback)")
    commands.add_parser("purge-idempotency-keys", help="delete expired idempotency records and exit")
    commands.add_parser(
        "purge-audit-events", help="delete audit events older than AUDIT_RETENTION_S and exit"
    )
    args = parser.parse_args(argv)

    settings = load_settings()
    logs.configure(settings.log_level)
    if args.command != "migrate":
        # Alembic's INFO lines (seven "setup plugin", "Running upgrade") on every start are noise
        # beside the service's own `migrations_applied`; the deploy step (`migrate`) keeps them.
        logs.quiet("alembic")
    try:
        settings = _with_database(settings)
    except embedded.EmbeddedUnavailable as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2

    url = settings.migration_async_url()
    assert url is not None
    if args.command == "migrate" and args.downgrade:
        migrations.downgrade(
            settings.migrations_dir,
            url.render_as_string(hide_password=False),
            args.downgrade,
            settings=settings,
        )
        log.info("migrations_downgraded", revision=args.downgrade)
    elif args.command == "migrate" or getattr(args, "migrate", False):
        migrations.upgrade(
            settings.migrations_dir, url.render_as_string(hide_password=False), settings=settings
        )
        log.info("migrations_applied", revision="heads")
    if args.command == "migrate":
        return 0
    if args.command == "purge-idempotency-keys":
        deleted = asyncio.run(_purge(settings))
        log.info("idempotency_keys_purged", deleted=deleted)
        return 0
    if args.command == "purge-audit-events":
        deleted = asyncio.run(_purge_audit(settings))
        log.info("audit_events_purged", deleted=deleted)
        return 0
    if args.command == "worker":
        handlers, schedules = _jobs(settings)
        handlers.update(job_handlers or {})
        asyncio.run(jobs.serve(settings, handlers=handlers, schedules=schedules))
        return 0
    if args.command == "jobs":
        return asyncio.run(_jobs_command(settings, args))

    # uvicorn drains on SIGTERM, then re-raises it; exiting through SystemExit (status 0) instead of
    # the default handler lets atexit hooks run, such as stopping the embedded database.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    base = f"http://{settings.host}:{settings.port}"
    log.info(
        "service_listening",
        url=base,
        docs=f"{base}/docs" if settings.serves_docs else None,
        ready=f"{base}/ready",
        metrics=f"http://{settings.host}:{settings.metrics_port}/metrics",
    )
    config = uvicorn.Config(
        app_factory,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=None,  # our handlers (platform/logs.py) render uvicorn's records as JSON
        access_log=False,  # replaced by the middleware's `http_request` line
        proxy_headers=True,
        server_header=False,
        timeout_graceful_shutdown=settings.graceful_timeout_s,
    )
    with _worker_beside(settings) if getattr(args, "worker", False) else nullcontext():
        if settings.workers > 1:
            sock = config.bind_socket()
            Multiprocess(config, sockets=[sock]).run()
        else:
            shutdown.DrainingServer(config, delay_s=settings.shutdown_delay_s).run()
    return 0


def _jobs(settings: Settings) -> tuple[dict[str, jobs.Handler], list[jobs.Schedule]]:
    """The platform's jobs, and each domain's: `<domain>/jobs.py` with `handlers` (and `schedules`)."""
    handlers, schedules = platform_jobs(settings)
    for module in domains.modules("jobs"):
        handlers.update(getattr(module, "handlers", {}))
        schedules.extend(getattr(module, "schedules", []))
    return handlers, schedules


async def _jobs_command(settings: Settings, args: argparse.Namespace) -> int:
    url = settings.database_async_url()
    assert url is not None
    engine = create_engine(settings, url)
    try:
        if args.action == "retry":
            if not await jobs.retry(engine, args.id):
                print(f"no dead job has id {args.id}", file=sys.stderr)
                return 1
            log.info("job_retried", job_id=args.id)
            return 0
        for job in await jobs.list_jobs(engine, status="dead" if args.dead else None):
            print(
                f"{job.id}\t{job.kind}\t{job.status}\tattempts={job.attempts}\t"
                f"created={job.created_at.isoformat()}\t{job.last_error or ''}"
            )
        return 0
    finally:
        await engine.dispose()


@contextmanager
def _worker_beside(settings: Settings) -> Iterator[None]:
    """A worker process for as long as the server runs (development: one command for both)."""
    environment = os.environ | {
        "PORT": str(settings.port + 1),
        "METRICS_PORT": str(settings.metrics_port + 1),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", "worker"],
        env=environment,
    )
    try:
        yield
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=settings.graceful_timeout_s + 5)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


async def _purge(settings: Settings) -> int:
    url = settings.database_async_url()
    assert url is not None
    engine = create_engine(settings, url)
    try:
        return await idempotency.purge_expired(engine)
    finally:
        await engine.dispose()


async def _purge_audit(settings: Settings) -> int:
    url = settings.database_async_url()
    assert url is not None
    engine = create_engine(settings, url)
    try:
        return await audit.purge_expired(engine, retention_s=settings.audit_retention_s)
    finally:
        await engine.dispose()


def _exit_cleanly(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _with_database(settings: Settings) -> Settings:
    """Settings with a database: the configured one, or the embedded server started now, migrated as
    its superuser (the owner) and served as DB_RUNTIME_ROLE, created here. The URLs are exported so
    that the uvicorn workers, which read their settings afresh, find the same server."""
    if settings.database_url is not None or settings.migration_database_url is not None:
        return settings  # the migrate Job has MIGRATION_DATABASE_URL only
    owner = embedded.start(settings.embedded_db_dir)
    runtime = embedded.runtime_role(owner, settings.db_runtime_role)
    log.info("embedded_database_started", data_dir=str(settings.embedded_db_dir))
    os.environ["DATABASE_URL"] = runtime
    os.environ["MIGRATION_DATABASE_URL"] = owner
    return settings.model_copy(
        update={"database_url": SecretStr(runtime), "migration_database_url": SecretStr(owner)}
    )


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down cleanly; no traceback for that
        sys.exit(130)
