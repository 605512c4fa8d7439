"""Calls to other services that fail fast, retry carefully and never outlive the request.

Standard: Reliability & Resilience (timeouts, bounded retries with backoff and jitter, circuit
breakers, graceful degradation), to the bar of .NET's standard resilience pipeline and
Resilience4j. Tuned by `REQUEST_TIMEOUT_S` (the total: the request's deadline),
`HTTP_ATTEMPT_TIMEOUT_S` (each attempt, whole), `HTTP_CONNECT_TIMEOUT_S`, `HTTP_READ_TIMEOUT_S`,
`HTTP_MAX_RESPONSE_BYTES`, `HTTP_RETRY_ATTEMPTS`, `HTTP_RETRY_BACKOFF_S`, `HTTP_RETRY_MAX_WAIT_S`,
`HTTP_RETRY_BUDGET_RATIO`, `BREAKER_FAILURE_RATIO`, `BREAKER_MIN_THROUGHPUT`, `BREAKER_SAMPLING_S`,
`BREAKER_SLOW_CALL_RATIO`, `BREAKER_SLOW_CALL_S`, `BREAKER_FAIL_MAX`, `BREAKER_RESET_TIMEOUT_S`,
`BREAKER_HALF_OPEN_PROBES`. Conflicting values stop the process at start-up (`settings/checks.py`).

One idea a module, arrows pointing down: `upstream` (the call and its retry loop) uses `breaker`
(pybreaker's states, opened on a failure ratio over `window`), `budget`, `bounded` (answers read
up to a size) and `retry` (what is retried); `errors` is what callers see.

Breakers are per process. Sharing their state across replicas through pybreaker's Redis storage
(`REDIS_URL`) is deliberately not wired in: that storage is synchronous, so every admission would
block the event loop on Redis round trips; each replica's breaker opens on what it sees.
"""

from {{ cookiecutter.package_name }}.platform.resilience.breaker import Breaker
from {{ cookiecutter.package_name }}.platform.resilience.budget import RetryBudget
from {{ cookiecutter.package_name }}.platform.resilience.errors import CircuitOpen
from {{ cookiecutter.package_name }}.platform.resilience.errors import UpstreamResponseTooLarge
from {{ cookiecutter.package_name }}.platform.resilience.errors import UpstreamTimeout
from {{ cookiecutter.package_name }}.platform.resilience.errors import UpstreamUnavailable
from {{ cookiecutter.package_name }}.platform.resilience.retry import parse_retry_after
from {{ cookiecutter.package_name }}.platform.resilience.upstream import Upstream
from {{ cookiecutter.package_name }}.platform.resilience.upstream import Upstreams

__all__ = [
    "Breaker",
    "CircuitOpen",
    "RetryBudget",
    "Upstream",
    "UpstreamResponseTooLarge",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "Upstreams",
    "parse_retry_after",
]
