"""Bounded retry timing shared by delivery and the stores: capped exponential backoff, full jitter.

Full jitter (a uniform wait between 0 and the capped exponential) spreads the retries of many
Lambda containers that hit the same throttle at the same moment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``max_attempts`` tries; waits grow from ``base_delay``, capped at ``max_delay``."""

    max_attempts: int = 4
    base_delay: float = 0.05
    max_delay: float = 1.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def delay(self, attempt: int, rng: Callable[[], float]) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based); ``rng`` in [0, 1)."""
        return float(rng() * min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))
