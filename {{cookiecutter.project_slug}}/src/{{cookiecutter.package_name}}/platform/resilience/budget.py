"""The retry budget: retries stay a share of requests (`HTTP_RETRY_BUDGET_RATIO`), per upstream."""

from __future__ import annotations

# Retries a quiet upstream may make before its budget has been earned by requests.
RETRY_BUDGET_RESERVE = 10.0


class RetryBudget:
    """A token bucket that keeps retries to about `ratio` of requests, so that a failing upstream
    sees at most (1 + ratio) times its normal load instead of `attempts` times (a retry storm)."""

    def __init__(self, ratio: float, reserve: float = RETRY_BUDGET_RESERVE) -> None:
        self.ratio = ratio
        self.capacity = reserve
        self.tokens = reserve

    def deposit(self) -> None:
        self.tokens = min(self.capacity, self.tokens + self.ratio)

    def withdraw(self) -> bool:
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True
