"""Inbound load shedding: at most `MAX_CONCURRENT_REQUESTS` requests handled at once per process.

Standard: Reliability / Graceful degradation, and Governance (a service defends itself). Past the
limit a request is answered at once with 503 `overloaded` and `Retry-After: 1`, and counted in
`http_server_requests_shed_total`: a counter, not a queue. A queue would only move the wait from
the server to the caller, past the deadline, and make every admitted request slower too (each
one's turn on the event loop shrinks as more run at once); shedding keeps the admitted requests'
latency where it is at capacity and tells the excess to go elsewhere now (another replica, behind
a load balancer that retries 503). The probes (`/health`, `/ready`) are never shed: an overloaded
process is alive and its readiness is its own business; `/metrics` is served on another port.

The default was measured on the reference machine (`bench/shedding.py` in the template's
repository): the concurrency at which throughput stops growing and latency starts climbing, for a
route that writes to the database and waits on a slow upstream.
"""

from __future__ import annotations

# Never shed: a probe that failed under load would get a busy process restarted or drained.
EXEMPT_PATHS = frozenset({"/health", "/ready"})


class Admission:
    """How many requests are in flight, against the limit. Plain integers: one event loop per
    process runs every request, so no lock is needed (and none would be cheaper)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def enter(self) -> bool:
        """Admit one request (then `leave` when it ends), or refuse it."""
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1
