"""Churn (short version for `make test`): real clients, real gateway, 20% dropped disconnects.

The long version is ``python -m tests.reliability.soak`` (`make soak`).
"""

from __future__ import annotations

from pathlib import Path

from tests.reliability.churn import ChurnConfig, run_churn


def test_churn_keeps_every_promise(tmp_path: Path) -> None:
    cfg = ChurnConfig(clients=40, duration_s=8.0, rooms=4, drop_rate=0.2, push_rate=3.0,
                      seed=7, time_cap_s=90.0, stage="test")
    result = run_churn(cfg, tmp_path)
    figures = result.figures()
    assert not result.violations, "\n".join(result.violations)
    assert figures["lost"] == 0
    # The run exercised what it claims to: deliveries, pushes, dropped disconnects, pruning.
    assert figures["deliveries_expected"] > 50, figures
    assert figures["pushes"] > 5, figures
    assert figures["dropped_disconnects"] > 0, figures
    assert figures["stale_pruned_by_sends"] + figures["stale_pruned_by_sweep"] > 0, figures
