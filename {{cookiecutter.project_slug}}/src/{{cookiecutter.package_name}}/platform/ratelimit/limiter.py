"""The check: which policy a route has, whose count a request adds to, and what the answer says."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Annotated
from typing import Any
from typing import Protocol

import limits
import structlog
from fastapi import Depends
from fastapi import Request
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPAuthorizationCredentials
from limits import RateLimitItem
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import FixedWindowRateLimiter
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Scope

from {{ cookiecutter.package_name }}.platform import auth
from {{ cookiecutter.package_name }}.platform.errors import PROBLEM_RESPONSES
from {{ cookiecutter.package_name }}.platform.errors import ServiceUnavailable
from {{ cookiecutter.package_name }}.platform.errors import TooManyRequests
from {{ cookiecutter.package_name }}.platform.metrics import Metrics
from {{ cookiecutter.package_name }}.platform.ratelimit.store import STORE_ERRORS
from {{ cookiecutter.package_name }}.platform.ratelimit.store import DatabaseStorage
from {{ cookiecutter.package_name }}.settings import Settings

log = structlog.get_logger(__name__)

# Where a limited request keeps its RateLimit headers; the request middleware puts them on the
# answer, whatever it is (a success, a 429, any other error).
HEADERS_STATE = "rate_limit_headers"
# A shared store that is down is logged at most this often (every failure is counted).
STORE_ERROR_LOG_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class Policy:
    """A named limit, and its `RateLimit-Policy` header (draft-ietf-httpapi-ratelimit-headers)."""

    name: str
    item: RateLimitItem
    header: bytes

    @classmethod
    def parse(cls, name: str, value: str) -> Policy:
        item = limits.parse(value)  # ValueError on a bad value: at import or start-up, not per request
        return cls(name, item, f'"{name}";q={item.amount};w={item.get_expiry()}'.encode())


class _Enforce:
    """The dependency: the default policy (`policy` None, on every domain route) or a route's own."""

    def __init__(self, policy: Policy | None) -> None:
        self.policy = policy

    async def __call__(self, request: Request, principal: PrincipalDep) -> None:
        limiter: Limiter = request.app.state.rate_limiter
        await limiter.check(request, principal, self.policy)


async def current_principal_or_none(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(auth.bearer)]
) -> object | None:
    """Who is calling: the authenticated principal (verified once per request: the route's own
    `require` reuses it), or None for a caller without a valid token, limited per client address,
    so a flood of bad tokens is limited too. The route's authentication still answers its 401."""
    try:
        principal = await auth.authenticate(request, credentials)
    except (auth.Unauthorized, ServiceUnavailable):  # the route's own authentication answers
        return None
    # A fixed principal (development, or AUTH_MODE=none behind a gateway) is everyone: count per
    # address, or one noisy caller would spend every caller's limit.
    return None if request.app.state.authenticator.fixed is not None else principal


PrincipalDep = Annotated[object | None, Depends(current_principal_or_none)]

# The default limit (RATE_LIMIT_DEFAULT), applied by `main.py` to every domain router, with the
# answer it adds to each route's document.
Limited = DependsParam(_Enforce(None))
RESPONSES: dict[int | str, dict[str, Any]] = {429: PROBLEM_RESPONSES[429]}


def limit(value: str, *, name: str = "route") -> DependsParam:
    """A route's own limit, in place of the default: `dependencies=[ratelimit.limit("10/second")]`."""
    return DependsParam(_Enforce(Policy.parse(name, value)))


def headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The RateLimit headers of a limited request (none for a route without a limit)."""
    state = scope.get("state")
    return state.get(HEADERS_STATE, []) if state else []


class _Backend(Protocol):
    async def hit(self, item: RateLimitItem, *identifiers: str) -> tuple[bool, int, float]:
        """Count one hit: admitted, remaining, seconds until the window ends."""


class _Memory:
    """One process's count: `limits`' fixed window on its in-memory storage."""

    def __init__(self) -> None:
        self.strategy = FixedWindowRateLimiter(MemoryStorage())

    async def hit(self, item: RateLimitItem, *identifiers: str) -> tuple[bool, int, float]:
        admitted = await self.strategy.hit(item, *identifiers)
        stats = await self.strategy.get_window_stats(item, *identifiers)
        return admitted, stats.remaining, stats.reset_time - time.time()


class _Database:
    """The replicas' shared count, in PostgreSQL: one statement per check."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.storage = DatabaseStorage(engine)

    async def hit(self, item: RateLimitItem, *identifiers: str) -> tuple[bool, int, float]:
        hits, reset_s = await self.storage.hit(item.key_for(*identifiers), item.get_expiry())
        return hits <= item.amount, max(item.amount - hits, 0), reset_s


class Limiter:
    def __init__(self, settings: Settings, *, metrics: Metrics, engine: AsyncEngine) -> None:
        self.enabled = settings.rate_limit_enabled
        self.default = Policy.parse("default", settings.rate_limit_default)
        self.backend: _Backend = _Database(engine) if settings.rate_limit_storage == "database" else _Memory()
        self.metrics = metrics
        # Per route (by identity: routes live as long as the app, and are not hashable): the default
        # policy, or None when the route declares its own.
        self._defaults: dict[int, Policy | None] = {}
        self._last_store_error_log = -math.inf

    async def check(self, request: Request, principal: object | None, policy: Policy | None) -> None:
        if not self.enabled:
            return
        route = request.scope.get("route")
        if policy is None:
            policy = self._default_for(route)
            if policy is None:
                return
        template = getattr(route, "path", "unmatched")
        try:
            admitted, remaining, reset_s = await self.backend.hit(
                policy.item, caller(request, principal), request.method, template
            )
        except STORE_ERRORS as exc:
            self._store_failed(exc)
            return  # fail open: a limit protects against abuse, it is not worth an outage
        reset = max(math.ceil(reset_s), 1)
        request.state.rate_limit_headers = [
            (b"ratelimit-policy", policy.header),
            (b"ratelimit", f'"{policy.name}";r={remaining};t={reset}'.encode()),
        ]
        if not admitted:
            self.metrics.rate_limited.labels(template).inc()
            raise TooManyRequests(
                f"Too many requests; retry in {reset} s.", headers={"Retry-After": str(reset)}
            )

    def _default_for(self, route: object) -> Policy | None:
        try:
            return self._defaults[id(route)]
        except KeyError:
            own = any(
                isinstance(getattr(depends, "dependency", None), _Enforce) and depends.dependency.policy
                for depends in getattr(route, "dependencies", ())
            )
            policy = self._defaults[id(route)] = None if own else self.default
            return policy

    def _store_failed(self, exc: BaseException) -> None:
        self.metrics.rate_limit_store_errors.inc()
        now = time.monotonic()
        if now - self._last_store_error_log >= STORE_ERROR_LOG_INTERVAL_S:
            self._last_store_error_log = now
            log.warning("rate_limit_store_unavailable", error=type(exc).__name__, admitted=True)


def caller(request: Request, principal: object | None) -> str:
    """Whose count: the principal's (within its tenant) when authenticated, else the client address's
    (behind a proxy, the address uvicorn's --proxy-headers takes from X-Forwarded-For)."""
    subject = getattr(principal, "subject", None)
    if isinstance(subject, str):
        return f"p:{getattr(principal, 'tenant', None) or ''}|{subject}"
    client = request.client
    return f"a:{client.host if client is not None else '-'}"
