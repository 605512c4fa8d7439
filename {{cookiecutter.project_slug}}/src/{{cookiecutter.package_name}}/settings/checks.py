"""The start-up checks between settings: values each valid on its own that cannot work together.

`check` runs them once every field is valid (`Settings`' model validator), in this order, and the
first that fails stops start-up; the deadline check reports every conflict it finds, one line each
naming its settings (as .NET's options validator). Authentication (platform/auth): a JWKS needs an
issuer and an audience, and only ENVIRONMENT=development may run with neither a JWKS nor AUTH_MODE.
The request deadline (REQUEST_TIMEOUT_S): the waits inside a request fit it, the leases outside it
outlast it. The connection budget (DATABASE_MAX_CONNECTIONS): one process's pool fits it alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from {{ cookiecutter.package_name }}.settings.fields import Settings

# PostgreSQL's default: connections only a superuser may open, out of max_connections.
SUPERUSER_RESERVED_CONNECTIONS = 3


def check(settings: Settings) -> None:
    """Raise ValueError, naming the settings, at the first check that fails."""
    _authentication_configured(settings)
    _waits_fit_the_deadline(settings)
    _job_lease_outlasts_a_run(settings)
    _pool_fits_the_database(settings)
    _lock_budget_holds_an_attempt(settings)
    _metrics_off_the_api_port(settings)


def _authentication_configured(settings: Settings) -> None:
    if settings.auth_jwks_url is not None and settings.auth_mode != "none":
        if not settings.auth_issuer or not settings.auth_audience:
            raise ValueError("AUTH_JWKS_URL needs AUTH_ISSUER and AUTH_AUDIENCE")
    elif settings.auth_mode == "jwt":
        raise ValueError("AUTH_MODE=jwt needs AUTH_JWKS_URL, AUTH_ISSUER and AUTH_AUDIENCE")
    elif settings.auth_mode is None and settings.environment != "development":
        raise ValueError(
            f"ENVIRONMENT={settings.environment} needs AUTH_JWKS_URL, AUTH_ISSUER and AUTH_AUDIENCE "
            "(or AUTH_MODE=none when a gateway or mesh authenticates)"
        )
    if settings.auth_jwks_min_refresh_s > settings.auth_jwks_cache_s:
        raise ValueError("AUTH_JWKS_MIN_REFRESH_S must not be longer than AUTH_JWKS_CACHE_S")


def _waits_fit_the_deadline(settings: Settings) -> None:
    """Every conflict found, one line each naming its settings (as .NET's options validator)."""
    conflicts = []
    if settings.db_pool_timeout_s >= settings.request_timeout_s:
        conflicts.append("DB_POOL_TIMEOUT_S must be shorter than REQUEST_TIMEOUT_S")
    if settings.db_idle_in_transaction_timeout_s <= settings.request_timeout_s:
        conflicts.append("DB_IDLE_IN_TRANSACTION_TIMEOUT_S must be longer than REQUEST_TIMEOUT_S")
    if settings.idempotency_lease_s <= settings.request_timeout_s:
        # A live request's key must not be taken over by its own client's retry.
        conflicts.append("IDEMPOTENCY_LEASE_S must be longer than REQUEST_TIMEOUT_S")
    if settings.http_attempt_timeout_s > settings.request_timeout_s:
        conflicts.append(
            f"HTTP_ATTEMPT_TIMEOUT_S ({settings.http_attempt_timeout_s:g}) must not be longer than "
            f"REQUEST_TIMEOUT_S ({settings.request_timeout_s:g})"
        )
    if settings.breaker_sampling_s < 2 * settings.http_attempt_timeout_s:
        # A window shorter than two attempts sees too few outcomes of slow calls to judge.
        conflicts.append(
            f"BREAKER_SAMPLING_S ({settings.breaker_sampling_s:g}) must be at least twice "
            f"HTTP_ATTEMPT_TIMEOUT_S ({settings.http_attempt_timeout_s:g})"
        )
    # Worst case: every wait at the cap (a Retry-After is honoured up to it), whatever the jitter.
    backoff = (settings.http_retry_attempts - 1) * settings.http_retry_max_wait_s
    if backoff >= settings.request_timeout_s:
        conflicts.append(
            f"HTTP_RETRY_ATTEMPTS - 1 ({settings.http_retry_attempts - 1}) waits of HTTP_RETRY_MAX_WAIT_S "
            f"({settings.http_retry_max_wait_s:g}) must be shorter than REQUEST_TIMEOUT_S "
            f"({settings.request_timeout_s:g})"
        )
    if conflicts:
        raise ValueError("\n".join(conflicts))


def _job_lease_outlasts_a_run(settings: Settings) -> None:
    if settings.job_lease_s <= settings.job_timeout_s:
        # A live worker's job must not be taken over, and run twice, while it still runs.
        raise ValueError("JOB_LEASE_S must be longer than JOB_TIMEOUT_S")


def _pool_fits_the_database(settings: Settings) -> None:
    # The pool, its overflow and /ready's own connection; PostgreSQL keeps
    # superuser_reserved_connections (3 by default) for superusers.
    wanted = settings.db_pool_size + settings.db_max_overflow + 1
    if wanted > settings.database_max_connections - SUPERUSER_RESERVED_CONNECTIONS:
        raise ValueError(
            f"DB_POOL_SIZE + DB_MAX_OVERFLOW + 1 for /ready ({wanted}) must fit DATABASE_MAX_CONNECTIONS "
            f"({settings.database_max_connections}) less superuser_reserved_connections "
            f"({SUPERUSER_RESERVED_CONNECTIONS})"
        )


def _lock_budget_holds_an_attempt(settings: Settings) -> None:
    if settings.migration_lock_budget_s <= settings.migration_lock_timeout_s:
        raise ValueError("MIGRATION_LOCK_BUDGET_S must be longer than MIGRATION_LOCK_TIMEOUT_S")


def _metrics_off_the_api_port(settings: Settings) -> None:
    if settings.metrics_port == settings.port:
        raise ValueError("METRICS_PORT must differ from PORT: metrics are not served with the API")
