"""Faults in the management API: throttling and latency on the real gateway, and a management
API that answers 500 for a while (the fake one in tests/support, so the window is exact).

Promises: every live member still receives every message (the deliverer retries 429/5xx with a
bound); no delivery takes more attempts than ``DELIVERY_MAX_ATTEMPTS``; 410 and 403 are never
retried; deliveries that outlast the bound are reported as ``failed`` to the sender or the REST
caller, never dropped silently; and after the fault window members receive again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import AppHarness
from tests.reliability.churn import ChurnConfig, run_churn
from tests.support.frames import without_ids


def test_throttled_and_slow_management_api_loses_nothing(tmp_path: Path) -> None:
    cfg = ChurnConfig(clients=20, duration_s=6.0, rooms=3, drop_rate=0.2, push_rate=2.0,
                      seed=11, time_cap_s=90.0, stage="test", throttle_rate=0.1,
                      latency_ms=20, max_attempts=4)
    result = run_churn(cfg, tmp_path)
    figures = result.figures()
    assert not result.violations, "\n".join(result.violations)
    assert figures["lost"] == 0
    assert figures["throttled_429"] > 20, figures  # the fault really was injected
    assert figures["deliveries_expected"] > 20, figures
    # Every delivery that exhausted the bound was reported as failed (nothing silent).
    assert figures["deliveries_missing"] <= figures["reported_failed"], figures


def _room(harness: AppHarness, size: int, room: str = "r") -> list[str]:
    members = [harness.connect() for _ in range(size)]
    for cid in members:
        harness.join(cid, room)
    return members


def _posts(harness: AppHarness, cid: str) -> int:
    return len(harness.api.calls_on(cid, "POST"))


def test_gone_and_forbidden_are_never_retried_inside_a_faulty_fan_out(
    harness: AppHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Counting attempts per member: no presence announcement of the pruned member on top.
    monkeypatch.setenv("PRESENCE", "off")
    sender, gone, forbidden, throttled, flaky, fine = _room(harness, 6)
    before = {cid: _posts(harness, cid) for cid in (gone, forbidden, throttled, flaky, fine)}
    harness.api.script(gone, 410, 410, 410)
    harness.api.script(forbidden, 403, 403, 403)
    harness.api.script(throttled, 429, 429)
    harness.api.script(flaky, 500, 500, 500)  # succeeds on the 4th (last) attempt
    sent = harness.send(sender, {"action": "send", "room": "r", "data": "x"})
    assert without_ids(sent["data"]) == {
        "room": "r", "delivered": 3, "gone": 1, "failed": 1, "queued": 0}
    attempts = {cid: _posts(harness, cid) - n for cid, n in before.items()}
    assert attempts == {gone: 1, forbidden: 1, throttled: 3, flaky: 4, fine: 1}
    # 410 pruned exactly that member; 403 pruned nobody.
    members = harness.store.members("r")
    assert gone not in members and forbidden in members


def test_a_500_window_reports_failed_then_members_receive_again(
    harness: AppHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DELIVERY_MAX_ATTEMPTS", "3")
    sender, *members = _room(harness, 4)
    before = {cid: _posts(harness, cid) for cid in members}
    # The management API answers 500 for the next 2 messages' worth of attempts per member.
    for cid in members:
        harness.api.script(cid, *([500] * 6))
    for n in range(2):
        sent = harness.send(sender, {"action": "send", "room": "r", "data": {"n": n}})
        assert without_ids(sent["data"]) == {
            "room": "r", "delivered": 0, "gone": 0, "failed": 3, "queued": 0}
    pushed = harness.client.http.post(
        "/rooms/r/messages", headers={"Content-Type": "application/json"},
        body=json.dumps({"data": {"n": "push"}}),
    )
    # The window is over (each member's script is used up): everything arrives again (a push
    # also reaches the sender, who is a member too).
    assert without_ids(json.loads(pushed.body)) == {
        "delivered": 4, "gone": 0, "failed": 0, "queued": 0}
    sent = harness.send(sender, {"action": "send", "room": "r", "data": {"n": 2}})
    assert without_ids(sent["data"]) == {
        "room": "r", "delivered": 3, "gone": 0, "failed": 0, "queued": 0}
    for cid in members:
        assert _posts(harness, cid) - before[cid] == 2 * 3 + 2  # bound exactly, then one each
        got = [f["data"]["data"] for f in harness.api.received(cid) if f["type"] == "message"]
        assert got == [{"n": "push"}, {"n": 2}]
        assert cid in harness.store.members("r")  # a failure never prunes


def test_replies_and_welcomes_survive_throttling_within_the_bound(harness: AppHarness) -> None:
    cid = harness.connect()
    harness.api.script(cid, 429, 429, 429)  # the welcome needs 4 attempts: the bound
    reply = harness.send(cid, {"action": "ping", "id": "p"})
    assert reply == {"type": "pong", "data": {}, "id": "p"}
    assert harness.api.types(cid) == ["welcome", "pong"]
    assert _posts(harness, cid) == 5
