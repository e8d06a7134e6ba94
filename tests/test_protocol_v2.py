"""Protocol v2 through the app's handlers: seq, history and replay, presence, idempotent send.

The app runs under chalice.test.Client against SQLite on disk and a real local management API
(tests/conftest.py); each test reads exactly what the clients received.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.conftest import AppHarness


def send(harness: AppHarness, cid: str, room: str, data: Any, **extra: Any) -> Any:
    return harness.send(cid, {"action": "send", "room": room, "data": data, **extra})


def messages(harness: AppHarness, cid: str) -> list[dict[str, Any]]:
    return [f["data"] for f in harness.api.received(cid) if f["type"] == "message"]


def test_welcome_says_protocol_2(harness: AppHarness) -> None:
    cid = harness.connect()
    harness.send(cid, {"action": "ping"})
    assert harness.api.received(cid)[0]["data"] == {"connectionId": cid, "protocol": 2}


def test_every_accepted_message_gets_the_next_seq_a_mid_and_a_ts(harness: AppHarness) -> None:
    a, b = harness.connect(), harness.connect()
    harness.join(a, "r")
    harness.join(b, "r")
    before = int(time.time() * 1000)
    sent = [send(harness, a, "r", n, id=f"s{n}")["data"] for n in range(3)]
    assert [s["seq"] for s in sent] == [1, 2, 3]
    assert len({s["mid"] for s in sent}) == 3
    received = messages(harness, b)
    assert [(m["seq"], m["mid"], m["data"]) for m in received] == [
        (s["seq"], s["mid"], n) for n, s in enumerate(sent)]
    assert all(before <= m["ts"] <= int(time.time() * 1000) for m in received)
    # Rooms count separately; a REST push is numbered like a client's send.
    harness.join(a, "other")
    assert send(harness, a, "other", "x")["data"]["seq"] == 1
    pushed = json.loads(harness.client.http.post(
        "/rooms/r/messages", headers={"Content-Type": "application/json"},
        body=json.dumps({"data": "from the server"})).body)
    assert pushed["seq"] == 4 and messages(harness, b)[-1]["seq"] == 4


def test_a_client_that_reconnects_gets_what_it_missed_in_order_exactly_once(
    harness: AppHarness,
) -> None:
    sender, reader = harness.connect(), harness.connect()
    harness.join(sender, "r")
    harness.join(reader, "r")
    send(harness, sender, "r", "seen")
    last_seen = messages(harness, reader)[-1]["seq"]
    harness.disconnect(reader)
    for n in range(5):
        send(harness, sender, "r", f"missed {n}")
    again = harness.connect()
    harness.send(again, {"action": "join", "room": "r", "since": last_seen})
    frames = harness.api.received(again)
    replies = [f for f in frames if f["type"] == "joined"]
    assert replies[0]["data"] == {"room": "r", "members": 2, "seq": 6,
                                  "replay": {"from": 2, "to": 6, "complete": True}}
    replayed = [f["data"] for f in frames if f["type"] == "message"]
    assert [m["data"] for m in replayed] == [f"missed {n}" for n in range(5)]
    assert [m["seq"] for m in replayed] == [2, 3, 4, 5, 6]
    assert all(m["replay"] is True for m in replayed)
    # The replay follows the reply (the client has its bearings first).
    types = [f["type"] for f in frames]
    assert types.index("joined") < types.index("message")


def test_replay_past_retention_is_incomplete(
    harness: AppHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTORY_MAX_MESSAGES", "3")
    sender, late = harness.connect(), harness.connect()
    harness.join(sender, "r")
    for n in range(6):
        send(harness, sender, "r", n)
    harness.send(late, {"action": "join", "room": "r", "since": 1})
    joined = harness.last(late, "joined")["data"]
    assert joined["replay"] == {"from": 2, "to": 6, "complete": False}
    assert [m["seq"] for m in messages(harness, late)] == [4, 5, 6]


def test_history_requires_membership_and_pages_backwards(
    harness: AppHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTORY_MAX_MESSAGES", "4")
    member, outsider = harness.connect(), harness.connect()
    harness.join(member, "r")
    for n in range(6):
        send(harness, member, "r", {"n": n})
    refused = harness.send(outsider, {"action": "history", "room": "r", "id": "h0"})
    assert (refused["type"], refused["data"]["code"], refused["id"]) == (
        "error", "not_member", "h0")
    page = harness.send(member, {"action": "history", "room": "r", "limit": 2, "id": "h1"})
    assert page["type"] == "history" and page["id"] == "h1"
    assert [m["seq"] for m in page["data"]["messages"]] == [5, 6]
    assert page["data"]["complete"] is False  # more, older ones exist
    older = harness.send(member, {"action": "history", "room": "r", "before": 5})["data"]
    # Only the last 4 are kept: 1 and 2 are past retention, so the range is not complete.
    assert [m["seq"] for m in older["messages"]] == [3, 4]
    assert older["complete"] is False
    entry = older["messages"][0]
    assert set(entry) == {"room", "from", "data", "seq", "mid", "ts"}
    assert entry["data"] == {"n": 2} and entry["from"] == member
    recent = harness.send(member, {"action": "history", "room": "r", "after": 4})["data"]
    assert ([m["seq"] for m in recent["messages"]], recent["complete"]) == ([5, 6], True)


def test_history_off_still_numbers_messages(
    harness: AppHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTORY_MAX_MESSAGES", "0")
    a = harness.connect()
    harness.join(a, "r")
    assert send(harness, a, "r", 1)["data"]["seq"] == 1
    page = harness.send(a, {"action": "history", "room": "r"})["data"]
    assert page == {"room": "r", "messages": [], "complete": False}


def test_a_duplicate_send_is_delivered_once(harness: AppHarness) -> None:
    a, b = harness.connect(), harness.connect()
    harness.join(a, "r")
    harness.join(b, "r")
    first = send(harness, a, "r", "once", id="retry-me")["data"]
    again = send(harness, a, "r", "once", id="retry-me")["data"]
    assert again == {"room": "r", "delivered": 0, "gone": 0, "failed": 0, "queued": 0,
                     "seq": first["seq"], "mid": first["mid"], "duplicate": True}
    assert "duplicate" not in first
    assert [m["data"] for m in messages(harness, b)] == ["once"]
    # The same id from another user, or in another room, is a different message.
    harness.join(b, "r2")
    harness.join(a, "r2")
    assert "duplicate" not in send(harness, b, "r", "mine", id="retry-me")["data"]
    assert "duplicate" not in send(harness, a, "r2", "there", id="retry-me")["data"]
    # Without an id nothing is deduplicated.
    send(harness, a, "r", "no id")
    send(harness, a, "r", "no id")
    assert [m["data"] for m in messages(harness, b)].count("no id") == 2


def test_presence_join_and_leave_and_members(harness: AppHarness) -> None:
    a, b, b2 = harness.connect(), harness.connect(), harness.connect()
    harness.join(a, "r")
    harness.join(b, "r")
    assert harness.last(a, "presence")["data"] == {
        "room": "r", "event": "join", "user": b, "connections": 1}
    members = harness.send(a, {"action": "members", "room": "r", "id": "m"})
    assert members["id"] == "m"
    assert members["data"] == {"room": "r", "count": 2, "truncated": False, "users": sorted(
        [{"user": a, "connections": 1}, {"user": b, "connections": 1}],
        key=lambda u: str(u["user"]))}
    harness.join(b2, "r")
    harness.send(b, {"action": "leave", "room": "r"})
    assert harness.last(a, "presence")["data"] == {
        "room": "r", "event": "leave", "user": b, "connections": 0}
    harness.disconnect(b2)
    assert harness.last(a, "presence")["data"]["user"] == b2
    assert harness.last(a, "presence")["data"]["event"] == "leave"
    outsider = harness.connect()
    refused = harness.send(outsider, {"action": "members", "room": "r"})
    assert refused["data"]["code"] == "not_member"


def test_presence_off(harness: AppHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRESENCE", "off")
    a, b = harness.connect(), harness.connect()
    harness.join(a, "r")
    harness.join(b, "r")
    assert "presence" not in harness.api.types(a)
    reply = harness.send(a, {"action": "members", "room": "r"})
    assert reply["data"]["code"] == "bad_request"


def test_a_swept_connection_is_announced_as_left(
    harness: AppHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWEEP_IDLE_SECONDS", "0")
    watcher, vanished = harness.connect(), harness.connect()
    harness.join(watcher, "r")
    harness.join(vanished, "r")
    harness.api.close(vanished)  # gone, and its $disconnect never ran
    report = harness.invoke("sweep", {"detail-type": "Scheduled Event", "source": "aws.events",
                                      "time": "2024-11-11T13:45:46Z", "detail": {},
                                      "resources": [], "id": "1", "region": "us-east-1",
                                      "account": "123456789012", "version": "0"})
    assert report["pruned"] == 1
    assert harness.last(watcher, "presence")["data"] == {
        "room": "r", "event": "leave", "user": vanished, "connections": 0}
    assert harness.send(watcher, {"action": "members", "room": "r"})["data"]["count"] == 1
