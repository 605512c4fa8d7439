"""The identity provider's signing keys (its JWKS), cached and refreshed, never fetched per request.

Keys are cached by `kid` for AUTH_JWKS_CACHE_S. Once stale, the next request schedules a refresh
in the background and goes on with the keys it has, so rotation costs no request any latency. A
token with a `kid` the cache does not know waits for a refresh (a new key was published), but at
most one fetch starts per AUTH_JWKS_MIN_REFRESH_S: a flood of made-up `kid`s cannot turn into a
flood of fetches. Concurrent requests share the fetch in flight (single-flight). Fetches go through
the resilient client (`platform.resilience`: timeouts inside the request's deadline, retries,
circuit breaker), never PyJWT's own synchronous urllib fetcher, which would block the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from {{ cookiecutter.package_name }}.platform.errors import ServiceError

log = structlog.get_logger(__name__)

# Key types that can carry an asymmetric signature key; `oct` (a shared secret) never can.
ASYMMETRIC_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})


class KeysUnavailable(Exception):
    """The key set could not be fetched or read; the reason is safe to log."""


class JwksCache:
    def __init__(
        self,
        fetch: Callable[[], Awaitable[bytes]],
        *,
        cache_s: float,
        min_refresh_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self.cache_s = cache_s
        self.min_refresh_s = min_refresh_s
        self._clock = clock
        self._jwks: dict[str, dict[str, Any]] = {}  # kid -> the JWK as published
        self._verifiers: dict[tuple[str, str], PyJWK] = {}  # (kid, alg) -> parsed key
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._last_failed = False
        self._refreshing: asyncio.Task[None] | None = None

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._jwks)

    async def key(self, kid: str | None, alg: str) -> PyJWK | None:
        """The verifying key for a token's `kid` and `alg`, or None when no such key is published.
        Raises KeysUnavailable when the key is unknown and the identity provider cannot be asked."""
        now = self._clock()
        stale = self._fetched_at is None or now - self._fetched_at >= self.cache_s
        if stale and self._may_fetch(now):
            refresh = self._refresh()  # in the background, unless nothing is cached yet
            if self._fetched_at is None:
                await refresh
        jwk = self._lookup(kid)
        if jwk is None and self._may_fetch(self._clock()):
            await self._refresh()
            jwk = self._lookup(kid)
        if jwk is None:
            if self._last_failed:
                raise KeysUnavailable("the identity provider's keys could not be fetched")
            return None
        return self._verifier(jwk, alg)

    async def refresh(self) -> None:
        """Fetch the key set now (start-up); failures are logged, the old keys kept."""
        await self._refresh()

    def _may_fetch(self, now: float) -> bool:
        if self._refreshing is not None:
            return True  # joining the fetch in flight costs nothing
        return self._attempted_at is None or now - self._attempted_at >= self.min_refresh_s

    def _lookup(self, kid: str | None) -> dict[str, Any] | None:
        if kid is not None:
            return self._jwks.get(kid)
        # A token without `kid` is accepted only when the set holds a single key: no guessing.
        return next(iter(self._jwks.values())) if len(self._jwks) == 1 else None

    def _verifier(self, jwk: dict[str, Any], alg: str) -> PyJWK | None:
        kid = str(jwk.get("kid", ""))
        verifier = self._verifiers.get((kid, alg))
        if verifier is None:
            if jwk.get("alg", alg) != alg:
                return None  # the key is published for another algorithm
            try:
                verifier = PyJWK(jwk, algorithm=alg)  # binds the algorithm: the key's type must fit it
            except (PyJWTError, NotImplementedError):  # NotImplementedError: an algorithm with no key
                return None
            self._verifiers[(kid, alg)] = verifier
        return verifier

    def _refresh(self) -> asyncio.Future[None]:
        """The fetch in flight, or a new one: concurrent callers share one fetch."""
        if self._refreshing is None:
            self._attempted_at = self._clock()
            self._refreshing = asyncio.ensure_future(self._load())
            self._refreshing.add_done_callback(self._done)
        # Shielded: a caller that is cancelled (its request timed out) does not cancel the fetch.
        return asyncio.shield(self._refreshing)

    def _done(self, _task: asyncio.Task[None]) -> None:
        self._refreshing = None

    async def _load(self) -> None:
        try:
            jwks = _signing_keys(await self._fetch())
        except (KeysUnavailable, ServiceError) as exc:
            self._last_failed = True
            log.warning("jwks_fetch_failed", reason=str(exc), cached_keys=len(self._jwks))
            return
        self._last_failed = False
        if jwks.keys() != self._jwks.keys():
            log.info("jwks_refreshed", kids=sorted(jwks))
        self._jwks = jwks
        self._verifiers = {}
        self._fetched_at = self._clock()

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)


def _signing_keys(body: bytes) -> dict[str, dict[str, Any]]:
    """The usable signature keys of a JWKS document, by `kid`."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise KeysUnavailable("the JWKS is not JSON") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise KeysUnavailable("the JWKS has no `keys` list")
    usable: dict[str, dict[str, Any]] = {}
    for jwk in keys:
        if not isinstance(jwk, dict) or jwk.get("kty") not in ASYMMETRIC_KEY_TYPES:
            continue
        if jwk.get("use", "sig") != "sig":
            continue  # an encryption key
        try:
            PyJWK(jwk)  # parses, or the key is skipped, as PyJWKSet does
        except PyJWTError:
            continue
        usable[str(jwk.get("kid", ""))] = jwk
    if not usable:
        raise KeysUnavailable("the JWKS holds no usable signature key")
    return usable
