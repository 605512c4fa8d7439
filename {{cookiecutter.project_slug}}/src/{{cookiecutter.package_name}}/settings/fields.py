"""The `Settings` fields: one per environment variable, each with its unit, default and bounds.

A field's comment says which standard it tunes (the platform module that reads it) and why its
default is what it is. Each field is checked here on its own (range, format, a URL's scheme);
checks between fields are in checks.py, run once these pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from typing import Literal

import limits
from pydantic import Field
from pydantic import HttpUrl
from pydantic import SecretStr
from pydantic import field_validator
from pydantic import model_validator
from pydantic_settings import BaseSettings
from pydantic_settings import NoDecode
from pydantic_settings import SettingsConfigDict
from sqlalchemy.engine import URL

from {{ cookiecutter.package_name }}.settings import checks
from {{ cookiecutter.package_name }}.settings.database_url import to_async_url

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
PositiveSeconds = Annotated[float, Field(gt=0, le=30 * 24 * 3600)]

# Signature algorithms a bearer token may use: asymmetric only. A JWKS publishes public keys, so
# an HMAC algorithm would take a public key as its shared secret (the classic confusion attack).
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class Settings(BaseSettings):
    # hide_input_in_errors: a rejected DATABASE_URL must not reach a log inside an error message.
    model_config = SettingsConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    service_name: str = "{{ cookiecutter.project_slug }}"
    environment: str = "development"

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    log_level: LogLevel = "INFO"
    # /metrics is served on its own port, on HOST, never on the API's (0: any free port, for tests).
    metrics_port: int = Field(default=9090, ge=0, le=65535)
    # /docs and /openapi.json: served unless ENVIRONMENT=production (set DOCS_ENABLED=true to keep them).
    docs_enabled: bool | None = None

    # None means "no server given": `make run` and the tests start the embedded PostgreSQL.
    database_url: SecretStr | None = None
    # Least privilege (migration 0005, README "Database roles"): `migrate` connects with
    # MIGRATION_DATABASE_URL (the schema's owner; DATABASE_URL when unset, for development) and
    # grants DB_RUNTIME_ROLE, the role DATABASE_URL logs in as, DML only. A name, not a secret: the
    # migrate Job must not need the runtime role's password to grant it.
    migration_database_url: SecretStr | None = None
    # Exploded with a trailing comma, so the formatter keeps it so whatever the package name's length.
    db_runtime_role: str = Field(
        default="{{ cookiecutter.package_name }}_app",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
    )
    embedded_db_dir: Path = Path(".data/postgres")
    migrations_dir: Path = Path("migrations")

    # Migrations (migrations/env.py), as GitLab's with_lock_retries: every query on a table queues
    # behind a DDL statement waiting for its lock, so each attempt's lock_timeout is short. It starts
    # at a fixed 0.1 s (a lock held for an instant is got at once; not worth a knob) and doubles up
    # to MIGRATION_LOCK_TIMEOUT_S, the longest a request waits behind the migration. Attempts, with
    # growing jittered sleeps between them, stop when the next would pass MIGRATION_LOCK_BUDGET_S
    # (time spent waiting and sleeping: well inside the Job's activeDeadlineSeconds).
    migration_lock_timeout_s: float = Field(default=0.5, gt=0, le=5.0)
    migration_lock_budget_s: float = Field(default=120.0, gt=0, le=3600)
    migration_statement_timeout_s: PositiveSeconds = 600.0

    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_max_overflow: int = Field(default=5, ge=0, le=200)
    # The connection budget: the database server's `max_connections` (PostgreSQL's default, 100),
    # which every replica's pool, the worker's and the migrate Job share (deploy/k8s/release/config.env
    # does the arithmetic; RUNBOOK "Connections exhausted"). One process must fit it on its own.
    database_max_connections: int = Field(default=100, ge=4, le=262_143)
    db_pool_timeout_s: PositiveSeconds = 2.0
    db_connect_timeout_s: PositiveSeconds = 3.0
    db_statement_timeout_s: PositiveSeconds = 5.0
    # Longer than the request deadline: an idempotent request holds its transaction (and the key's
    # lock) while it calls upstreams, and must not be cut off for being idle in it.
    db_idle_in_transaction_timeout_s: PositiveSeconds = 15.0
    db_lock_timeout_s: PositiveSeconds = 2.0
    ready_timeout_s: PositiveSeconds = 1.0
    # How old a /ready answer may be: probes arriving together share one check (one connection).
    ready_cache_s: float = Field(default=1.0, ge=0, le=60)

    max_body_bytes: int = Field(default=1024 * 1024, ge=1)

    # Event-loop lag (platform/looplag.py): a single stall this long is logged with what was running.
    loop_lag_warn_s: float = Field(default=0.25, ge=0.01, le=60)

    # Graceful shutdown (platform/shutdown.py): not ready but serving for SHUTDOWN_DELAY_S after
    # SIGTERM, then in-flight requests get GRACEFUL_TIMEOUT_S to finish.
    shutdown_delay_s: float = Field(default=5.0, ge=0, le=300)
    graceful_timeout_s: int = Field(default=20, ge=1, le=3600)  # uvicorn takes whole seconds

    # The deadline of each inbound request: outbound calls and their retries never run past it.
    request_timeout_s: PositiveSeconds = 10.0

    # Outbound HTTP (platform/http.py, platform/resilience/), after .NET's standard resilience
    # pipeline scaled to a 10 s total. Each attempt is bounded whole by HTTP_ATTEMPT_TIMEOUT_S (and
    # what is left of the deadline); inside it the connect and read timeouts bound each socket
    # operation. With the defaults a hanging upstream is answered 504 in about 9 s: three attempts
    # of 3 s, inside the 10 s deadline. Answers are read up to HTTP_MAX_RESPONSE_BYTES: with
    # HTTP_MAX_CONNECTIONS calls in flight, at most 100 MiB of answers in memory.
    http_connect_timeout_s: PositiveSeconds = 1.0
    http_read_timeout_s: PositiveSeconds = 3.0
    http_attempt_timeout_s: PositiveSeconds = 3.0
    http_max_response_bytes: int = Field(default=1024 * 1024, ge=1)
    http_max_connections: int = Field(default=100, ge=1, le=10_000)
    http_retry_attempts: int = Field(default=3, ge=1, le=10)
    http_retry_backoff_s: PositiveSeconds = 0.1
    http_retry_max_wait_s: PositiveSeconds = 2.0
    http_retry_budget_ratio: float = Field(default=0.2, ge=0, le=1)
    # A breaker opens when, over the last BREAKER_SAMPLING_S, at least BREAKER_MIN_THROUGHPUT calls
    # were seen and BREAKER_FAILURE_RATIO of them failed (.NET's 0.1 over 30 s; its minimum of 100
    # calls is scaled down to 20, under one call a second, or a small service's breaker would never
    # open), or BREAKER_SLOW_CALL_RATIO of them took over BREAKER_SLOW_CALL_S (unset: off), or on
    # BREAKER_FAIL_MAX consecutive failures (an upstream that is down, seen by a quiet service).
    # It stays open BREAKER_RESET_TIMEOUT_S (.NET's 5 s break), then admits
    # BREAKER_HALF_OPEN_PROBES probes at once.
    breaker_failure_ratio: float = Field(default=0.1, gt=0, le=1)
    breaker_min_throughput: int = Field(default=20, ge=1, le=100_000)
    breaker_sampling_s: PositiveSeconds = 30.0
    breaker_slow_call_ratio: float | None = Field(default=None, gt=0, le=1)
    breaker_slow_call_s: PositiveSeconds = 2.0
    breaker_fail_max: int = Field(default=5, ge=1, le=1000)
    breaker_reset_timeout_s: PositiveSeconds = 5.0
    breaker_half_open_probes: int = Field(default=1, ge=1, le=100)

    # Inbound load shedding (platform/shedding.py): requests handled at once by one process; the
    # excess is answered 503 at once, never queued. Measured (bench/shedding.py in the template repo).
    max_concurrent_requests: int = Field(default=16, ge=1, le=100_000)

    # How long a claimed Idempotency-Key stays held by a request that never finished (its process
    # died): longer than any request may run. How long an answer is replayed; how often expired
    # records are purged.
    idempotency_lease_s: PositiveSeconds = 12.0
    idempotency_retention_s: PositiveSeconds = Field(default=24 * 3600, le=30 * 24 * 3600)
    idempotency_purge_interval_s: PositiveSeconds = 300.0

    # The audit trail (platform/audit.py): rows are kept AUDIT_RETENTION_S, 400 days by default (PCI
    # DSS 10.5.1 keeps 12 months; a year's SOC 2 period plus the audit after it fits), never less
    # than the 90 days the database itself enforces, and purged every AUDIT_PURGE_INTERVAL_S.
    audit_retention_s: float = Field(default=400 * 24 * 3600, ge=90 * 24 * 3600, le=10 * 366 * 24 * 3600)
    audit_purge_interval_s: PositiveSeconds = 3600.0
    # Rate limits (platform/ratelimit/): RATE_LIMIT_DEFAULT applies to every domain route, per caller
    # (principal, else client address) and route, in limits' syntax (`100/second`, `1000/hour`).
    # `memory` counts in each process; `database` shares the count between replicas (PostgreSQL).
    rate_limit_enabled: bool = True
    rate_limit_default: str = "100/second"
    rate_limit_storage: Literal["memory", "database"] = "memory"
    rate_limit_purge_interval_s: PositiveSeconds = 60.0

    # The example domain's upstream; unset skips the stock check (so `make demo` needs nothing else).
    inventory_url: HttpUrl | None = None
    # The example's stock pre-check (orders/inventory.py): `GET {INVENTORY_URL}/stock/{sku}` cached
    # STOCK_CACHE_TTL_S (0: no pre-check), and served up to STOCK_CACHE_STALE_S past that while the
    # read fails (platform/cache.py).
    stock_cache_ttl_s: float = Field(default=5.0, ge=0, le=3600)
    stock_cache_stale_s: float = Field(default=60.0, ge=0, le=24 * 3600)
    # The example domain's order notifications (orders/jobs.py); unset, no notification is enqueued.
    notify_url: HttpUrl | None = None

    # Background jobs (platform/jobs/). A job runs at most JOB_TIMEOUT_S; a worker that stops
    # answering for JOB_LEASE_S (it died) loses its jobs to another. A failed job runs again after a
    # full-jitter backoff (random up to JOB_BACKOFF_S x 2^(attempt-1), at most JOB_BACKOFF_MAX_S),
    # JOB_MAX_ATTEMPTS runs in all, then it is kept as dead. WORKER_CONCURRENCY jobs run at once.
    job_max_attempts: int = Field(default=10, ge=1, le=100)
    job_backoff_s: PositiveSeconds = 1.0
    job_backoff_max_s: PositiveSeconds = 3600.0
    job_timeout_s: PositiveSeconds = 60.0
    job_lease_s: PositiveSeconds = 120.0
    worker_concurrency: int = Field(default=4, ge=1, le=100)
    worker_poll_interval_s: float = Field(default=1.0, gt=0, le=60)

    # Authentication (platform/auth): bearer JWTs verified against the identity provider's JWKS.
    # AUTH_MODE unset means `jwt` when AUTH_JWKS_URL is set, else the development principal (only
    # with ENVIRONMENT=development); `none` says on purpose that a gateway or mesh authenticates.
    auth_mode: Literal["jwt", "none"] | None = None
    auth_jwks_url: HttpUrl | None = None
    auth_issuer: str | None = None
    auth_audience: str | None = None
    # Comma-separated in the environment: AUTH_ALGORITHMS=RS256,ES256
    auth_algorithms: Annotated[tuple[str, ...], NoDecode] = ("RS256", "ES256", "EdDSA", "PS256")
    # Clock skew tolerated on exp/nbf/iat: small, since an expired token stays usable this long.
    auth_leeway_s: float = Field(default=30.0, ge=0, le=300)
    auth_jwks_cache_s: PositiveSeconds = 300.0
    auth_jwks_min_refresh_s: PositiveSeconds = 10.0
    auth_tenant_claim: str = "tenant"

    # The OpenTelemetry SDK reads the rest of the standard OTEL_* variables itself
    # (OTEL_TRACES_SAMPLER, OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS, ...).
    otel_service_name: str = "{{ cookiecutter.project_slug }}"
    otel_exporter_otlp_endpoint: str | None = None
    otel_sdk_disabled: bool = False
    # An incoming `traceparent` is continued (false: an edge service starts its own trace and links
    # the caller's, so nobody outside decides its trace ids or sampling). `baggage` is read only when
    # the trace is trusted, and is forwarded to upstreams only when asked for: it may carry data.
    trace_trust_incoming: bool = True
    trace_forward_baggage: bool = False

    @field_validator("migrations_dir")
    @classmethod
    def _has_env_py(cls, value: Path) -> Path:
        if not (value / "env.py").is_file():
            raise ValueError(
                f"{value} holds no Alembic environment (env.py): run from the project directory "
                "or set MIGRATIONS_DIR"
            )
        return value

    @field_validator("rate_limit_default")
    @classmethod
    def _one_rate_limit(cls, value: str) -> str:
        try:
            items = limits.parse_many(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a rate limit (expected e.g. 100/second, 1000/hour)") from None
        if len(items) != 1 or items[0].amount < 1:
            raise ValueError("one limit of at least 1 request (e.g. 100/second)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url", "migration_database_url", mode="after")
    @classmethod
    def _postgres_only(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        to_async_url(value.get_secret_value())  # raises ValueError with a client-safe reason
        return value

    @field_validator("auth_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("auth_algorithms")
    @classmethod
    def _asymmetric_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        refused = [name for name in value if name not in ASYMMETRIC_ALGORITHMS]
        if refused or not value:
            raise ValueError(
                f"asymmetric algorithms only (never none, never HS*): {', '.join(sorted(ASYMMETRIC_ALGORITHMS))}"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        checks.check(self)  # the checks between settings (checks.py), once each field is valid
        return self

    def auth_resolved_mode(self) -> Literal["jwt", "none", "development"]:
        """How requests are authenticated: verified tokens, a gateway's word, or the development principal."""
        if self.auth_mode is not None:
            return self.auth_mode
        return "jwt" if self.auth_jwks_url is not None else "development"

    @property
    def serves_docs(self) -> bool:
        """Whether /docs and /openapi.json are served: DOCS_ENABLED, else all but production."""
        return self.docs_enabled if self.docs_enabled is not None else self.environment != "production"

    def database_async_url(self) -> URL | None:
        """The configured URL with the async driver, or None when none is configured."""
        return None if self.database_url is None else to_async_url(self.database_url.get_secret_value())

    def migration_async_url(self) -> URL | None:
        """MIGRATION_DATABASE_URL with the async driver; DATABASE_URL's when it is unset."""
        if self.migration_database_url is None:
            return self.database_async_url()
        return to_async_url(self.migration_database_url.get_secret_value())
