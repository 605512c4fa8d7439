"""The bench's service (`apps.service`) without this issue's two per-process costs: no exemplar on
the latency histogram and no event-loop lag probe (task and watchdog thread). Only for measuring
what they cost, side by side in one run (bench/soak.py); the service has no switch for either."""

from typing import Any

from apps.service import create_app as create_observed
from fastapi import FastAPI
from orders_service.platform import looplag
from orders_service.platform.metrics import Metrics

_observe = Metrics.observe


def _observe_without_exemplar(
    self: Metrics, method: str, route: str, status: int, seconds: float, *_: Any
) -> None:
    _observe(self, method, route, status, seconds)


async def _no_stop(self: looplag.LoopLagProbe) -> None:
    return None


def create_app() -> FastAPI:
    Metrics.observe = _observe_without_exemplar  # type: ignore[method-assign]
    looplag.LoopLagProbe.start = lambda self: None  # type: ignore[method-assign]
    looplag.LoopLagProbe.stop = _no_stop  # type: ignore[method-assign]
    return create_observed()
