"""Test doubles for the store tests (importable, unlike conftest)."""

from __future__ import annotations

T0 = 1_700_000_000.0


class FakeClock:
    """A clock the test moves by hand: ``clock()`` returns ``now``; ``advance`` moves it."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def no_sleep(_seconds: float) -> None:
    """Injected instead of time.sleep so retries cost no time."""
