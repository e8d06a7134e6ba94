"""chalicelib.retry: the backoff both delivery and the stores use."""

from __future__ import annotations

import pytest

from chalicelib.retry import RetryPolicy


def test_backoff_grows_exponentially_then_is_capped() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay=0.5, max_delay=2.0)
    assert [policy.delay(n, lambda: 1.0) for n in (1, 2, 3, 4, 8)] == [0.5, 1.0, 2.0, 2.0, 2.0]


def test_full_jitter_scales_the_wait_down_to_zero() -> None:
    policy = RetryPolicy(base_delay=0.1)
    assert policy.delay(2, lambda: 0.0) == 0.0
    assert policy.delay(2, lambda: 0.5) == pytest.approx(0.1)


def test_at_least_one_attempt() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
