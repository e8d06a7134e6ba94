"""Protocol v2 with authentication on: the user (the token's ``sub``), not the connection, is
who presence shows and whose send ids are remembered across reconnects."""

from __future__ import annotations

from typing import Any

from .conftest import AuthHarness, claims, hs256


def frames(harness: AuthHarness, cid: str, type_: str) -> list[dict[str, Any]]:
    return [f["data"] for f in harness.api.received(cid) if f["type"] == type_]


def test_a_resend_after_reconnecting_is_recognised_as_a_duplicate(secured: AuthHarness) -> None:
    token = hs256(claims("alice"))
    reader = secured.connect_as(hs256(claims("bob")))
    first = secured.connect_as(token)
    secured.join(reader, "r")
    secured.join(first, "r")
    sent = secured.send(first, {"action": "send", "room": "r", "data": "hi", "id": "m-1"})
    secured.disconnect(first)  # the client dropped before it saw `sent`
    again = secured.connect_as(token)
    secured.join(again, "r")
    resent = secured.send(again, {"action": "send", "room": "r", "data": "hi", "id": "m-1"})
    assert resent["data"]["duplicate"] is True
    assert (resent["data"]["seq"], resent["data"]["mid"]) == (
        sent["data"]["seq"], sent["data"]["mid"])
    assert [m["data"] for m in frames(secured, reader, "message")] == ["hi"]
    assert frames(secured, reader, "message")[0]["from"] == "alice"


def test_presence_is_per_user_across_connections(secured: AuthHarness) -> None:
    watcher = secured.connect_as(hs256(claims("carol")))
    secured.join(watcher, "r")
    phone = secured.connect_as(hs256(claims("alice")))
    laptop = secured.connect_as(hs256(claims("alice")))
    secured.join(phone, "r")
    secured.join(laptop, "r")
    # One join for the user's first connection; the second connection announces nothing.
    joins = [p for p in frames(secured, watcher, "presence") if p["event"] == "join"]
    assert joins == [{"room": "r", "event": "join", "user": "alice", "connections": 1}]
    members = secured.send(watcher, {"action": "members", "room": "r"})["data"]
    assert members["count"] == 2
    assert {"user": "alice", "connections": 2} in members["users"]
    secured.disconnect(phone)
    assert [p["event"] for p in frames(secured, watcher, "presence")] == ["join"]
    secured.disconnect(laptop)  # the last one: now alice has left
    assert frames(secured, watcher, "presence")[-1] == {
        "room": "r", "event": "leave", "user": "alice", "connections": 0}
