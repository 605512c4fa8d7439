"""Graceful shutdown: stop receiving traffic before stopping work.

Standard: Deployment & Operations / Zero-Downtime Deployments. Tuned by `SHUTDOWN_DELAY_S`
(default 5 s) and `GRACEFUL_TIMEOUT_S` (default 20 s).

On SIGTERM, in order:
1. `/ready` answers 503 at once, while the server keeps serving every request, for
   `SHUTDOWN_DELAY_S`: load balancers and Kubernetes endpoints notice and stop routing here.
2. The server stops accepting connections; requests in flight get `GRACEFUL_TIMEOUT_S` to finish.
3. The lifespan's shutdown closes the database pool and the HTTP clients; the process exits 0.
While draining, responses carry `Connection: close`, so kept-alive clients reconnect (to a pod
that is routed to) instead of staying on this one. A second SIGTERM, or Ctrl-C, skips the delay. With `WORKERS` above 1 uvicorn's supervisor
signals the workers itself and the delay does not apply: in Kubernetes, scale with replicas.
"""

from __future__ import annotations

import signal
import time
from types import FrameType

import structlog
import uvicorn

log = structlog.get_logger(__name__)

# Process-wide, like the signal that sets it: this process is on its way out.
_draining = False


def is_draining() -> bool:
    return _draining


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with a drain period between SIGTERM and the stop of accepting."""

    def __init__(self, config: uvicorn.Config, *, delay_s: float) -> None:
        super().__init__(config)
        self.delay_s = delay_s
        self._drain_until: float | None = None
        self._announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        global _draining
        # Only SIGTERM drains (what an orchestrator sends); Ctrl-C stops at once.
        if sig == signal.SIGTERM and self._drain_until is None and not self.should_exit and self.delay_s > 0:
            # In a signal handler: set state only (no logging: its lock may be held right now).
            _draining = True
            self._drain_until = time.monotonic() + self.delay_s
            self._captured_signals.append(sig)  # re-raised after shutdown, as uvicorn does
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None:
            if not self._announced:
                self._announced = True
                log.info("shutdown_draining", delay_s=self.delay_s)
            if time.monotonic() >= self._drain_until:
                self.should_exit = True
        return await super().on_tick(counter)
