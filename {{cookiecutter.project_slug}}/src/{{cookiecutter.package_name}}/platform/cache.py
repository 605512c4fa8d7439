"""A read-through cache for expensive reads: TTL, one load per key at a time, stale on error.

Standard: Performance / Caching (with intentional invalidation) and Reliability / Graceful
degradation. A team puts it in front of any read: `await cache.get(key, load)`.

- Fresh for `ttl_s` after a load: a hit returns the value without calling `load`.
- Single-flight: however many callers miss one key at once, `load` runs once; the others wait for
  its answer (a waiter that is cancelled does not cancel the load the others wait for).
- Serve stale on error: when `load` raises one of `stale_on` (by default any `ServiceError`: the
  upstream failed, timed out or its circuit is open) and the key's last value is less than
  `ttl_s + stale_s` old, that value is returned instead, counted and logged. Past that window the
  error goes to the caller, as without a cache. Errors are never cached: the next miss loads again.
- Invalidation is the caller's to write down next to its use: what makes an entry wrong, and
  which of `invalidate(key)` or `put(key, value)` removes or corrects it; the TTL bounds the rest.
- In-process, per replica, bounded to `max_entries` keys (the oldest loaded goes first). No shared
  store (Redis) is wired in: none is available to test against here, and a per-replica cache of a
  few seconds costs each replica one load per key per TTL.
- Metrics: `cache_lookups_total{cache,result}`: hit, miss (this caller loaded), coalesced (waited
  for another caller's load), stale (served past its TTL because the load failed).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic
from typing import TypeVar

import structlog

from {{ cookiecutter.package_name }}.platform.errors import ServiceError
from {{ cookiecutter.package_name }}.platform.metrics import Metrics

log = structlog.get_logger(__name__)

V = TypeVar("V")


@dataclass(frozen=True)
class _Entry(Generic[V]):
    value: V
    loaded_at: float


class Cache(Generic[V]):
    def __init__(
        self,
        name: str,
        *,
        ttl_s: float,
        stale_s: float,
        metrics: Metrics,
        max_entries: int = 10_000,
        stale_on: tuple[type[BaseException], ...] = (ServiceError,),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.ttl_s = ttl_s
        self.stale_s = stale_s
        self.max_entries = max_entries
        self.stale_on = stale_on
        self.clock = clock
        self._entries: OrderedDict[str, _Entry[V]] = OrderedDict()
        self._loading: dict[str, asyncio.Future[V]] = {}
        self._results = {
            result: metrics.cache_lookups.labels(name, result)
            for result in ("hit", "miss", "coalesced", "stale")
        }

    async def get(self, key: str, load: Callable[[], Awaitable[V]]) -> V:
        entry = self._entries.get(key)
        if entry is not None and self.clock() - entry.loaded_at < self.ttl_s:
            self._results["hit"].inc()
            return entry.value
        loading = self._loading.get(key)
        if loading is not None:
            self._results["coalesced"].inc()
            # shield: this waiter's cancellation must not cancel the load others wait for.
            return await asyncio.shield(loading)
        self._results["miss"].inc()
        loading = self._loading[key] = asyncio.ensure_future(self._load(key, load))
        loading.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(loading)

    async def _load(self, key: str, load: Callable[[], Awaitable[V]]) -> V:
        try:
            value = await load()
        except self.stale_on as exc:
            entry = self._entries.get(key)
            age = None if entry is None else self.clock() - entry.loaded_at
            if entry is None or age is None or age >= self.ttl_s + self.stale_s:
                raise
            self._results["stale"].inc()
            log.warning("cache_served_stale", cache=self.name, age_s=round(age, 3), error=str(exc))
            return entry.value
        self.put(key, value)
        return value

    def put(self, key: str, value: V) -> None:
        """Store a value known to be current (an answer the upstream gave by another route)."""
        self._entries.pop(key, None)
        self._entries[key] = _Entry(value, self.clock())
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def invalidate(self, key: str) -> None:
        """Forget a key: the next `get` loads it."""
        self._entries.pop(key, None)
