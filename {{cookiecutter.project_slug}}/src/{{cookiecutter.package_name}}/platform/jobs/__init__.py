"""Background jobs: a transactional queue in PostgreSQL, run by `python -m <package> worker`.

Standard: Architecture / Asynchronous workflows (queues, workers) and Reliability (retries with
backoff and jitter, dead letters). Tuned by `JOB_MAX_ATTEMPTS`, `JOB_BACKOFF_S`, `JOB_BACKOFF_MAX_S`,
`JOB_TIMEOUT_S`, `JOB_LEASE_S`, `WORKER_CONCURRENCY`, `WORKER_POLL_INTERVAL_S` and
`GRACEFUL_TIMEOUT_S` (the drain on SIGTERM).

- Enqueue: `jobs.enqueue(session, "orders.notify", {...})` adds a row to the request's own
  transaction: the job exists if and only if the write that caused it commits. No second system, no
  outbox relay. It carries the request's `traceparent`; the worker's CONSUMER span continues it, so
  the job's log lines carry the request's `trace_id`.
- Run: a worker claims due jobs with `FOR UPDATE SKIP LOCKED` and a lease, runs the handler
  registered for the kind (a domain's `jobs.py` exposes `handlers = {"kind": handler}`), and deletes
  the job when it succeeds. At least once: a worker killed mid-job leaves it to be run again after
  its lease, so handlers must be idempotent.
- Fail: retried after a full-jitter exponential backoff, up to `JOB_MAX_ATTEMPTS` runs; then kept
  as `dead` with its last error: `python -m <package> jobs list --dead`, `jobs retry <id>`.
- Periodic: `Schedule(kind, interval_s)`, once per interval across every replica (`schedule`).
- Metrics: `job_runs_total{kind,outcome}`, `job_queue_depth{state}`, `job_oldest_ready_age_seconds`.

Built on SQLAlchemy rather than a library. procrastinate's connectors are psycopg (or psycopg2)
connections: it cannot write into the request's asyncpg transaction. pgqueuer speaks asyncpg and
advertises transactional enqueue, but through its own driver object around a raw asyncpg
connection: enqueueing in the request's transaction means reaching under the AsyncSession for its
driver connection, with two libraries issuing statements on one connection. Both install and
upgrade their schema themselves, outside Alembic, where the platform's revisions and the runtime
role's least privilege live. What the service needs (claim with a lease, retries, dead letters,
schedules) is a few hundred lines on the engine it already has.
"""

from {{ cookiecutter.package_name }}.platform.jobs.models import Job
from {{ cookiecutter.package_name }}.platform.jobs.models import JobSchedule
from {{ cookiecutter.package_name }}.platform.jobs.queue import enqueue
from {{ cookiecutter.package_name }}.platform.jobs.queue import list_jobs
from {{ cookiecutter.package_name }}.platform.jobs.queue import retry
from {{ cookiecutter.package_name }}.platform.jobs.schedule import Schedule
from {{ cookiecutter.package_name }}.platform.jobs.worker import Handler
from {{ cookiecutter.package_name }}.platform.jobs.worker import JobContext
from {{ cookiecutter.package_name }}.platform.jobs.worker import serve

__all__ = [
    "Handler",
    "Job",
    "JobContext",
    "JobSchedule",
    "Schedule",
    "enqueue",
    "list_jobs",
    "retry",
    "serve",
]
