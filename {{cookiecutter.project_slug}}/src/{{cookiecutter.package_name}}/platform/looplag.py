"""Event-loop lag: how late the loop runs a timer it scheduled, and what held it up.

Standard: Observability / Metrics (resource usage: the event loop is the one resource every request
in a process shares). Tuned by `LOOP_LAG_WARN_S`.

A periodic task (started and stopped by the app's lifespan) sleeps `PROBE_INTERVAL_S` and measures
how much later than asked it woke up: a callback that ran in between without yielding (a blocking
call, a long computation, a large JSON document) delayed it, and every request in flight with it.
Each measurement is observed in `event_loop_lag_seconds`: ten wake-ups a second, nothing per
request.

A stall of `LOOP_LAG_WARN_S` or more is logged when it ends (`event_loop_stalled`), with `running`:
the innermost frames of the loop's thread while it was stalled. They come from a watchdog thread
that wakes twice per threshold and, when the probe's heartbeat is overdue, reads the loop
thread's stack (`sys._current_frames()`), once per stall. Cheaper than asyncio's debug mode (which
times every callback) and it names the line that blocked, not just the callback that contained it.
A stall shorter than 1.5 thresholds may be logged without its frames (the watchdog looked too early).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
import traceback
from types import FrameType

import structlog
from prometheus_client import Histogram

# Seconds between two probes: a stall longer than this is always seen. Probe and watchdog together
# cost about 3 ms of CPU a second, 0.3% of a core (bench/soak.py; most of it is waking up).
PROBE_INTERVAL_S = 0.1
# The frames a warning carries, innermost last: enough to name the line and who called it.
STACK_DEPTH = 6

log = structlog.get_logger(__name__)


class LoopLagProbe:
    def __init__(self, histogram: Histogram, *, warn_s: float, interval_s: float = PROBE_INTERVAL_S) -> None:
        self.histogram = histogram
        self.warn_s = warn_s
        self.interval_s = interval_s
        self._beat = time.monotonic()
        # Written by the watchdog (frames first, then the beat they belong to), read by the probe.
        self._stalled_frames: list[str] | None = None
        self._stalled_beat = -1.0
        self._stop = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._watchdog: threading.Thread | None = None

    def start(self) -> None:
        """Start probing the running loop (call it from the loop's thread)."""
        loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._probe(), name="event-loop-lag-probe")
        self._watchdog = threading.Thread(
            target=self._watch, args=(loop_thread,), name="event-loop-watchdog", daemon=True
        )
        self._watchdog.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._watchdog is not None:
            await asyncio.to_thread(self._watchdog.join, 5)

    async def _probe(self) -> None:
        while True:
            beat = self._beat = time.monotonic()
            await asyncio.sleep(self.interval_s)
            lag = max(time.monotonic() - beat - self.interval_s, 0.0)
            self.histogram.observe(lag)
            if lag >= self.warn_s:
                frames = self._stalled_frames if self._stalled_beat == beat else None
                log.warning(
                    "event_loop_stalled",
                    lag_s=round(lag, 3),
                    threshold_s=self.warn_s,
                    running=frames,
                )

    def _watch(self, loop_thread: int) -> None:
        # Two looks per threshold: a stall of 1.5 thresholds is always caught while it lasts.
        period = min(max(self.warn_s / 2, 0.01), 1.0)
        while not self._stop.wait(period):
            beat = self._beat
            if beat == self._stalled_beat or time.monotonic() - beat - self.interval_s < self.warn_s:
                continue
            frame = sys._current_frames().get(loop_thread)
            if frame is not None:
                self._stalled_frames = _innermost(frame)
                self._stalled_beat = beat


def _innermost(frame: FrameType) -> list[str]:
    """`package/module.py:42 in function`, outermost first, the line that was running last."""
    summary = traceback.extract_stack(frame)[-STACK_DEPTH:]
    return [
        f"{'/'.join(entry.filename.rsplit('/', 2)[-2:])}:{entry.lineno} in {entry.name}" for entry in summary
    ]
