"""Abuse limits (rate, rooms, data size) and "clients address rooms, never connection ids"."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from chalicelib.events import ConnectionContext
from chalicelib.limits import Limits
from chalicelib.service import Messaging
from chalicelib.store.memory import MemoryStore
from tests.store.fakes import FakeClock
from tests.support.management_api import FakeManagementApi

from .conftest import AuthHarness

# ---------------------------------------------------------------- rate limit, deterministic


def _service(api: FakeManagementApi, clock: FakeClock, limits: Limits) -> Messaging:
    from chalicelib.delivery import Deliverer
    from chalicelib.runtime import management_client
    from chalicelib.settings import Settings

    settings = Settings.from_env({})
    deliverer = Deliverer(management_client(api.endpoint, settings))
    return Messaging(MemoryStore(clock=clock), lambda _endpoint: deliverer, clock=clock,
                     limits=limits)


def _ctx(connection_id: str) -> ConnectionContext:
    return ConnectionContext(connection_id, "d", "api", "a", "r", "127.0.0.1", 0.0)


def test_rate_limit_hit_and_recovered(aws_env: None, management_api: FakeManagementApi) -> None:
    clock = FakeClock()
    service = _service(management_api, clock, Limits(rate_limit=5, rate_window_seconds=10))
    cid = "conn-1"
    management_api.open(cid)
    service.on_connect(_ctx(cid), management_api.endpoint)
    # Align on a window start so the test does not depend on where FakeClock starts.
    clock.advance(10 - clock() % 10)

    def ping(n: int) -> dict[str, Any]:
        service.on_message(_ctx(cid), management_api.endpoint,
                           json.dumps({"action": "ping", "id": str(n)}), False)
        return management_api.received(cid)[-1]

    replies = [ping(n) for n in range(8)]
    assert [r["type"] for r in replies] == ["pong"] * 5 + ["error"] * 3
    assert replies[5]["data"]["code"] == "rate_limited"
    assert replies[5]["id"] == "5"
    # Bad frames count too (a flood of garbage is still a flood), and get rate_limited.
    service.on_message(_ctx(cid), management_api.endpoint, "not json", False)
    assert management_api.received(cid)[-1]["data"]["code"] == "rate_limited"

    clock.advance(9.9)  # still the same window
    assert ping(9)["data"]["code"] == "rate_limited"
    clock.advance(0.1)  # the next window: the connection is usable again
    assert [ping(n)["type"] for n in range(10, 15)] == ["pong"] * 5
    assert ping(15)["data"]["code"] == "rate_limited"


def test_rate_limit_is_per_connection(aws_env: None, management_api: FakeManagementApi) -> None:
    clock = FakeClock()
    service = _service(management_api, clock, Limits(rate_limit=2, rate_window_seconds=60))
    clock.advance(60 - clock() % 60)
    for cid in ("a", "b"):
        management_api.open(cid)
        service.on_connect(_ctx(cid), management_api.endpoint)
    for _ in range(3):
        service.on_message(_ctx("a"), management_api.endpoint, '{"action":"ping"}', False)
    service.on_message(_ctx("b"), management_api.endpoint, '{"action":"ping"}', False)
    assert management_api.types("a") == ["welcome", "pong", "pong", "error"]
    assert management_api.types("b") == ["welcome", "pong"]


# ---------------------------------------------------------------- rate limit, real handlers


def test_rate_limit_through_the_handlers_recovers(
    open_app: AuthHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WS_RATE_LIMIT", "3")
    monkeypatch.setenv("WS_RATE_WINDOW_SECONDS", "1")
    cid = open_app.connect()
    codes = []
    for n in range(20):  # at most 2 windows' worth pass before one is refused
        reply = open_app.send(cid, {"action": "ping", "id": str(n)})
        codes.append(reply["data"].get("code"))
        if reply["type"] == "error":
            break
    assert codes[-1] == "rate_limited", codes
    assert len(codes) <= 7
    # Recovered: the next window admits messages again (bounded wait, no timing assertion).
    deadline = time.monotonic() + 10
    while True:
        reply = open_app.send(cid, {"action": "ping", "id": "again"})
        if reply["type"] == "pong":
            break
        assert reply["data"]["code"] == "rate_limited"
        assert time.monotonic() < deadline, "never recovered"
        time.sleep(0.2)


def test_rate_limit_zero_disables(open_app: AuthHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WS_RATE_LIMIT", "0")
    cid = open_app.connect()
    for _ in range(30):
        assert open_app.send(cid, {"action": "ping"})["type"] == "pong"


# ---------------------------------------------------------------- rooms and data size


def test_too_many_rooms(open_app: AuthHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WS_MAX_ROOMS_PER_CONNECTION", "2")
    cid = open_app.connect()
    assert open_app.join(cid, "a")["type"] == "joined"
    assert open_app.join(cid, "b")["type"] == "joined"
    refused = open_app.send(cid, {"action": "join", "room": "c", "id": "j3"})
    assert refused["type"] == "error" and refused["id"] == "j3"
    assert refused["data"]["code"] == "too_many_rooms"
    assert open_app.store.rooms_of(cid) == ["a", "b"]
    assert open_app.join(cid, "a")["type"] == "joined"  # re-joining is not a new room
    open_app.send(cid, {"action": "leave", "room": "a"})
    assert open_app.join(cid, "c")["type"] == "joined"  # usable again


def test_data_too_large(open_app: AuthHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WS_MAX_DATA_BYTES", "100")
    a, b = open_app.connect(), open_app.connect()
    open_app.join(a, "r")
    open_app.join(b, "r")
    before = len(open_app.api.received(b))
    refused = open_app.send(a, {"action": "send", "room": "r", "data": "x" * 200, "id": "big"})
    assert refused["type"] == "error" and refused["id"] == "big"
    assert refused["data"]["code"] == "too_large"
    assert len(open_app.api.received(b)) == before  # nothing delivered
    # Multi-byte characters count as bytes, not characters.
    assert open_app.send(a, {"action": "send", "room": "r", "data": "é" * 60})["data"][
        "code"] == "too_large"
    ok = open_app.send(a, {"action": "send", "room": "r", "data": "x" * 90})
    assert ok["type"] == "sent" and ok["data"]["delivered"] == 1


# ---------------------------------------------------------------- rooms only, never connection ids


def test_cannot_send_to_a_room_not_joined(open_app: AuthHarness) -> None:
    a, b = open_app.connect(), open_app.connect()
    open_app.join(b, "private")
    reply = open_app.send(a, {"action": "send", "room": "private", "data": "psst", "id": "1"})
    assert reply["data"]["code"] == "not_member" and reply["id"] == "1"
    assert "message" not in open_app.api.types(b)


def test_cannot_address_a_connection_id(open_app: AuthHarness) -> None:
    a, b = open_app.connect(), open_app.connect()
    # As a room: an AWS id ("...Kug=") is not a room name (bad_request); without the padding it
    # is a room a has not joined (not_member).  Either way nothing reaches b.
    bare = b.rstrip("=")
    for room, code in ((bare + "=", "bad_request"), (bare, "not_member")):
        reply = open_app.send(a, {"action": "send", "room": room, "data": "hi"})
        assert reply["data"]["code"] == code
    # As extra fields: ignored; the message goes to the room only.
    open_app.join(a, "lobby")
    sent = open_app.send(a, {"action": "send", "room": "lobby", "data": "hi", "to": b,
                             "connectionId": b, "connection_id": b, "target": b})
    assert sent["type"] == "sent" and sent["data"]["delivered"] == 0
    assert "message" not in open_app.api.types(b)
    # And joining a room named like a connection does not reach that connection either.
    open_app.join(a, bare)
    open_app.send(a, {"action": "send", "room": bare, "data": "hi"})
    assert "message" not in open_app.api.types(b)


# ---------------------------------------------------------------- per-user and per-room caps


def test_a_user_past_the_connection_cap_is_refused_with_429(
    security_env: pytest.MonkeyPatch, management_api: Any
) -> None:
    from .conftest import AUDIENCE, ISSUER, SECRET, _harness, claims, hs256

    security_env.setenv("WS_AUTH_SECRET", SECRET)
    security_env.setenv("WS_AUTH_AUDIENCE", AUDIENCE)
    security_env.setenv("WS_AUTH_ISSUER", ISSUER)
    security_env.setenv("WS_MAX_CONNECTIONS_PER_USER", "2")
    for harness in _harness(management_api):
        token = hs256(claims("alice"))
        first, second = harness.connect_as(token), harness.connect_as(token)
        refused, response = harness.try_connect(token)
        assert response == {"statusCode": 429}
        assert harness.store.get(refused) is None  # nothing registered
        assert harness.connect_as(hs256(claims("bob")))  # another user is not affected
        harness.disconnect(first)
        assert harness.connect_as(token)  # a place came free
        del second


def test_a_full_room_refuses_the_next_join(
    security_env: pytest.MonkeyPatch, management_api: Any
) -> None:
    from .conftest import _harness

    security_env.setenv("WS_MAX_ROOM_MEMBERS", "2")
    for harness in _harness(management_api):
        a, b, c = harness.connect(), harness.connect(), harness.connect()
        harness.join(a, "small")
        harness.join(b, "small")
        refused = harness.join(c, "small")
        assert refused["data"]["code"] == "room_full"
        assert "2" in refused["data"]["message"]
        assert not harness.store.is_member(c, "small")
        assert harness.store.member_count("small") == 2  # the undo kept the count exact
        assert harness.join(a, "small")["type"] == "joined"  # re-joining is not a new member
        harness.send(b, {"action": "leave", "room": "small"})
        assert harness.join(c, "small")["type"] == "joined"
