from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from {{ cookiecutter.package_name }}.settings import Settings

PROJECT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("given", "driver_url"),
    [
        (
            "postgresql://app:pw@db.internal:5432/orders",
            "postgresql+asyncpg://app:pw@db.internal:5432/orders",
        ),
        ("postgres://app:pw@db:5432/orders", "postgresql+asyncpg://app:pw@db:5432/orders"),
        ("postgresql+psycopg://app@db/orders", "postgresql+asyncpg://app@db/orders"),
        (
            "postgresql://app@/orders?host=/run/postgresql",
            "postgresql+asyncpg://app@/orders?host=%2Frun%2Fpostgresql",
        ),
    ],
)
def test_database_url_forms_get_the_async_driver(given: str, driver_url: str) -> None:
    url = Settings(database_url=given).database_async_url()  # type: ignore[arg-type]
    assert url is not None
    assert url.render_as_string(hide_password=False) == driver_url


def test_the_database_password_never_shows_in_settings_repr() -> None:
    settings = Settings(database_url="postgresql://app:s3cr3t@db/orders")  # type: ignore[arg-type]
    assert "s3cr3t" not in repr(settings)
    assert "s3cr3t" not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("mysql://app@db/orders", "must be a postgresql:// URL"),
        ("not a url", "not a valid URL"),
        ("postgresql://app@db/orders?sslmode=sometimes", "sslmode must be one of"),
        ("postgresql://app@db/orders?connect_timeout=3", "use DB_CONNECT_TIMEOUT_S"),
        ("postgresql://app@db/orders?options=-c%20x%3Dy", "'options' is not supported"),
    ],
)
def test_a_database_url_that_would_fail_every_connection_is_refused(bad: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        Settings(database_url=bad)  # type: ignore[arg-type]


def test_a_job_lease_no_longer_than_a_job_run_is_refused() -> None:
    # A lease that ends while its job still runs would let a second worker run it at the same time.
    with pytest.raises(ValidationError, match="JOB_LEASE_S must be longer than JOB_TIMEOUT_S"):
        Settings(job_timeout_s=60, job_lease_s=60)
    assert Settings(job_timeout_s=60, job_lease_s=61).job_lease_s == 61


def test_a_migration_lock_budget_that_holds_no_full_lock_wait_is_refused() -> None:
    reason = "MIGRATION_LOCK_BUDGET_S must be longer than MIGRATION_LOCK_TIMEOUT_S"
    with pytest.raises(ValidationError, match=reason):
        Settings(migration_lock_timeout_s=0.5, migration_lock_budget_s=0.5)


def test_a_malformed_database_url_never_echoes_its_password() -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(database_url="postgresql://app:p@ss:w0rd@db/orders")  # type: ignore[arg-type]
    assert "w0rd" not in str(raised.value)
    assert "not a valid URL" in str(raised.value)


def test_a_malformed_migration_database_url_never_echoes_its_password() -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(migration_database_url="postgresql://owner:p@ss:w0rd@db/orders")  # type: ignore[arg-type]
    assert "w0rd" not in str(raised.value)
    assert "not a valid URL" in str(raised.value)


def test_migrate_uses_the_migration_url_and_serving_the_runtime_one() -> None:
    settings = Settings(
        database_url="postgresql://app:a@db/orders",  # type: ignore[arg-type]
        migration_database_url="postgresql://owner:o@db/orders",  # type: ignore[arg-type]
    )
    assert settings.migration_async_url().username == "owner"  # type: ignore[union-attr]
    assert settings.database_async_url().username == "app"  # type: ignore[union-attr]
    # Development: one URL for both.
    single = Settings(database_url="postgresql://dev:d@localhost/orders")  # type: ignore[arg-type]
    assert single.migration_async_url() == single.database_async_url()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("LOG_LEVEL", "LOUD"),
        ("DATABASE_URL", "mysql://x@y/z"),
        ("MIGRATIONS_DIR", "/nowhere"),
        ("MIGRATION_LOCK_TIMEOUT_S", "6"),  # longer would queue every request behind a migration
        ("MIGRATION_DATABASE_URL", "mysql://x@y/z"),
        ("DB_RUNTIME_ROLE", 'app"; DROP TABLE orders; --'),  # it is written into GRANT statements
        ("AUDIT_RETENTION_S", "86400"),  # below the 90 days the database keeps anyway
        ("LOOP_LAG_WARN_S", "0"),  # every tick would log a stall
    ],
)
def test_bad_configuration_stops_startup_with_one_line_naming_the_variable(variable: str, value: str) -> None:
    env = {key: val for key, val in os.environ.items() if key not in {"PORT", "LOG_LEVEL", "DATABASE_URL"}}
    env[variable] = value
    result = subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", "serve"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"configuration error: {variable}: ")
    assert "Traceback" not in result.stderr


# Each combination the resilience options refuse (#14), as .NET's options validator does: the line
# names the settings in conflict.
CONFLICTS = [
    (
        {"HTTP_ATTEMPT_TIMEOUT_S": "6", "REQUEST_TIMEOUT_S": "5"},
        "HTTP_ATTEMPT_TIMEOUT_S (6) must not be longer than REQUEST_TIMEOUT_S (5)",
    ),
    (
        {"BREAKER_SAMPLING_S": "5", "HTTP_ATTEMPT_TIMEOUT_S": "3"},
        "BREAKER_SAMPLING_S (5) must be at least twice HTTP_ATTEMPT_TIMEOUT_S (3)",
    ),
    (
        {"HTTP_RETRY_ATTEMPTS": "6", "HTTP_RETRY_MAX_WAIT_S": "2"},
        "HTTP_RETRY_ATTEMPTS - 1 (5) waits of HTTP_RETRY_MAX_WAIT_S (2) must be shorter than REQUEST_TIMEOUT_S (10)",
    ),
    ({"DB_POOL_TIMEOUT_S": "10"}, "DB_POOL_TIMEOUT_S must be shorter than REQUEST_TIMEOUT_S"),
    (
        {"DB_POOL_SIZE": "40", "DB_MAX_OVERFLOW": "10", "DATABASE_MAX_CONNECTIONS": "53"},
        "DB_POOL_SIZE + DB_MAX_OVERFLOW + 1 for /ready (51) must fit DATABASE_MAX_CONNECTIONS (53) "
        "less superuser_reserved_connections (3)",
    ),
]


def _start(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {key: val for key, val in os.environ.items() if key not in {"PORT", "LOG_LEVEL", "DATABASE_URL"}}
    return subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", "serve"],
        cwd=PROJECT,
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(("env", "line"), CONFLICTS, ids=[next(iter(env)) for env, _ in CONFLICTS])
def test_each_conflict_between_options_refuses_startup_with_its_line(env: dict[str, str], line: str) -> None:
    result = _start(env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"configuration error: {line}"]


def test_several_conflicts_are_one_line_each() -> None:
    env = {"HTTP_ATTEMPT_TIMEOUT_S": "6", "REQUEST_TIMEOUT_S": "5", "BREAKER_SAMPLING_S": "11"}
    result = _start(env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "configuration error: HTTP_ATTEMPT_TIMEOUT_S (6) must not be longer than REQUEST_TIMEOUT_S (5)",
        "configuration error: BREAKER_SAMPLING_S (11) must be at least twice HTTP_ATTEMPT_TIMEOUT_S (6)",
    ]
