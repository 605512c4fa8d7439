"""The read-through cache (platform/cache.py), on an injected clock."""

from __future__ import annotations

import asyncio

import pytest

from {{ cookiecutter.package_name }}.platform.cache import Cache
from {{ cookiecutter.package_name }}.platform.metrics import Metrics
from {{ cookiecutter.package_name }}.platform.resilience import UpstreamUnavailable

from tests.clock import Clock


class Source:
    """A read that counts its calls, answers `value`, or fails while `failing`."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls = 0
        self.value = 7
        self.failing = False
        self.delay_s = delay_s
        self.entered = asyncio.Event()  # a load is running

    async def __call__(self) -> int:
        self.calls += 1
        self.entered.set()
        await asyncio.sleep(self.delay_s)
        if self.failing:
            raise UpstreamUnavailable("stock is down")
        return self.value


def lookups(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value("cache_lookups_total", {"cache": "stock", "result": result})
    return value or 0.0


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(metrics: Metrics, clock: Clock) -> Cache[int]:
    return Cache[int]("stock", ttl_s=5, stale_s=60, metrics=metrics, clock=clock)


async def test_a_value_is_served_for_its_ttl_then_loaded_again(
    cache: Cache[int], clock: Clock, metrics: Metrics
) -> None:
    source = Source()
    assert await cache.get("sku", source) == 7
    source.value = 3
    clock.now += 4.9
    assert await cache.get("sku", source) == 7
    assert source.calls == 1
    clock.now += 0.2
    assert await cache.get("sku", source) == 3
    assert source.calls == 2
    assert (lookups(metrics, "hit"), lookups(metrics, "miss")) == (1, 2)


async def test_fifty_concurrent_misses_make_one_load(cache: Cache[int], metrics: Metrics) -> None:
    source = Source(delay_s=0.05)
    answers = await asyncio.gather(*(cache.get("sku", source) for _ in range(50)))
    assert answers == [7] * 50
    assert source.calls == 1
    assert (lookups(metrics, "miss"), lookups(metrics, "coalesced")) == (1, 49)


async def test_a_cancelled_waiter_does_not_cancel_the_others_load(cache: Cache[int]) -> None:
    source = Source(delay_s=0.05)
    first = asyncio.ensure_future(cache.get("sku", source))
    second = asyncio.ensure_future(cache.get("sku", source))
    await source.entered.wait()  # the first is loading; the second, scheduled before us, waits on it
    first.cancel()
    assert await second == 7
    assert source.calls == 1


async def test_the_last_value_is_served_stale_within_the_window_then_the_error(
    cache: Cache[int], clock: Clock, metrics: Metrics
) -> None:
    source = Source()
    await cache.get("sku", source)
    source.failing = True
    clock.now += 5 + 59.9  # past the TTL, within the stale window
    assert await cache.get("sku", source) == 7
    assert lookups(metrics, "stale") == 1
    clock.now += 0.2  # past TTL + stale
    with pytest.raises(UpstreamUnavailable):
        await cache.get("sku", source)
    assert lookups(metrics, "stale") == 1


async def test_an_error_is_not_cached_and_a_miss_without_a_value_fails(cache: Cache[int]) -> None:
    source = Source()
    source.failing = True
    with pytest.raises(UpstreamUnavailable):
        await cache.get("sku", source)
    source.failing = False
    assert await cache.get("sku", source) == 7
    assert source.calls == 2


async def test_invalidate_and_put_replace_what_the_ttl_would_keep(cache: Cache[int]) -> None:
    source = Source()
    cache.invalidate("sku")  # a write invalidates whether or not the key was ever read: no error
    await cache.get("sku", source)
    cache.invalidate("sku")
    source.value = 2
    assert await cache.get("sku", source) == 2
    cache.put("sku", 0)
    assert await cache.get("sku", source) == 0
    assert source.calls == 2


async def test_the_oldest_entries_go_past_max_entries(metrics: Metrics, clock: Clock) -> None:
    cache = Cache[int]("stock", ttl_s=5, stale_s=0, metrics=metrics, clock=clock, max_entries=2)
    source = Source()
    for key in ("a", "b", "c"):
        await cache.get(key, source)
    await cache.get("a", source)  # evicted: loaded again
    await cache.get("c", source)  # kept: a hit
    assert source.calls == 4
