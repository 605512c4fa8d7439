"""Rate limits: each caller gets so many requests per window on each route, then 429.

Standard: Governance / Rate Limiting & Quotas. Tuned by `RATE_LIMIT_DEFAULT` (limits' syntax,
`100/second`), `RATE_LIMIT_STORAGE` (`memory`, one count per process; `database`, one count shared
by every replica, in PostgreSQL), `RATE_LIMIT_ENABLED` and `RATE_LIMIT_PURGE_INTERVAL_S`.

- What is limited: every domain route (`main.py` adds `Limited` to each domain router); a route
  declares its own limit in place of the default with `dependencies=[ratelimit.limit("10/second")]`.
  Probes, `/metrics` and the API documents are never limited.
- Whose count: the principal's (`p:<tenant>|<subject>`) when authentication put one on the request
  (`current_principal_or_none`), else the client address's (`a:<host>`); one count per route
  template and method (`POST /v1/items`), so a hot route never starves the others.
- The answer: every response of a limited route carries `RateLimit-Policy: "default";q=100;w=1`
  and `RateLimit: "default";r=<remaining>;t=<seconds to reset>` (draft-ietf-httpapi-ratelimit-
  headers); over the limit, 429 problem+json `rate-limited` with `Retry-After`, counted in
  `rate_limited_requests_total{route}`.
- Fixed windows (`limits`' `FixedWindowRateLimiter`); in PostgreSQL one upsert per check on an
  UNLOGGED table (`store`), ended windows purged by a periodic job of the worker.
- A shared store that fails (down, slow past the pool's timeouts) admits the request: counted in
  `rate_limit_store_errors_total`, logged at most every 10 s as `rate_limit_store_unavailable`.
"""

from {{ cookiecutter.package_name }}.platform.ratelimit.limiter import RESPONSES
from {{ cookiecutter.package_name }}.platform.ratelimit.limiter import Limited
from {{ cookiecutter.package_name }}.platform.ratelimit.limiter import Limiter
from {{ cookiecutter.package_name }}.platform.ratelimit.limiter import Policy
from {{ cookiecutter.package_name }}.platform.ratelimit.limiter import current_principal_or_none
from {{ cookiecutter.package_name }}.platform.ratelimit.limiter import headers
from {{ cookiecutter.package_name }}.platform.ratelimit.limiter import limit
from {{ cookiecutter.package_name }}.platform.ratelimit.store import DatabaseStorage
from {{ cookiecutter.package_name }}.platform.ratelimit.store import RateLimitWindow
from {{ cookiecutter.package_name }}.platform.ratelimit.store import purge_expired

__all__ = [
    "RESPONSES",
    "DatabaseStorage",
    "Limited",
    "Limiter",
    "Policy",
    "RateLimitWindow",
    "current_principal_or_none",
    "headers",
    "limit",
    "purge_expired",
]
